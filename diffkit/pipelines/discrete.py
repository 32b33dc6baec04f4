"""DiscreteDiffusionPipeline: masked (absorbing) text diffusion with RADD's per-row cache.

Model interface: ``transformer(ids [B, L]) -> [B, L, N]`` log-probs (or logits) whose column
``v`` is token ``v``; the mask column, if any, is ignored, and so are outputs at unmasked
positions. A network with ``time_conditioned = True`` (SEDD, MDLM with time conditioning) is
called as ``transformer(ids, total_noise [B])`` and never cached.

The cache (RADD §3.2, §J.4 "efficient batching"): a time-free network's output for a sequence
is exact as long as no token of that sequence changed, so before a step the network runs only
on the rows that changed since their last evaluation, as a dynamic sub-batch, and their rows of
the [B, L, N] output buffer are replaced. MDLM's ``ddpm_cache`` instead keeps one cache for the
whole batch, which any change in any row invalidates. Because the unmask-or-stay choices of the
two-stage draw do not depend on the model, they are drawn for the whole run up front
(``RADDScheduler.reveal_steps``), and steps that reveal nothing are not visited at all -- so the
sampler's own per-step cost is paid only about E-NFE times, not n times.

The bookkeeping of that cache -- the buffer of outputs, the rows needing a refresh, the NFE
counters per sequence -- is :class:`RowCache`. NFE is counted two ways: ``nfe_per_sample`` =
network evaluations of each row (the cost), and ``changes_per_sample`` = steps in which the row
revealed >= 1 token (the paper's eq. D.17, whose mean follows n (1 - (1 - 1/n)^l) for any model,
eqs. 3.4 / D.31). docs/methods/radd.md gives the reasoning.

Paper: Ou et al. 2024, "Your Absorbing Discrete Diffusion Secretly Models the Conditional
Distributions of Clean Data", arXiv:2406.03736.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from diffkit.assets import REBUILD, asset_path, rebuild_hint, verify_asset
from diffkit.atomic import UmaskSaveMixin
from diffkit.models.radd import RADDTransformer, tiny_radd_transformer
from diffkit.models.tokenizers import (TOKENIZER_FILE, ByteTokenizer, gpt2_tokenizer, load_tokenizer,
                                       save_tokenizer)
from diffkit.numerics import FiniteWatch
from diffkit.pipelines._local import LocalFolderPipelineMixin, local_folder
from diffkit.samplers.radd import RADDScheduler
from diffkit.seeding import sample_generator

__all__ = ["DiscreteDiffusionPipeline", "TextDiffusionOutput", "RowCache", "load_text_pipeline"]

ORDERS = ("forward", "backward", "random")


@dataclass
class TextDiffusionOutput(BaseOutput):
    """
    sequences:          [B, L] token ids (no mask token).
    texts:              decoded strings (``output_type="text"`` with a tokenizer), else None.
    nfe:                mean network evaluations per sample (forward rows / B).
    nfe_per_sample:     [B] network evaluations of each row.
    nfe_changes:        mean number of steps with >= 1 reveal (RADD eq. D.17).
    changes_per_sample: [B] steps with >= 1 reveal, per row.
    num_generated:      [B] positions generated (l; prompt/fixed tokens excluded).
    forward_calls:      number of (batched) network calls.
    num_steps:          steps run.
    """

    sequences: torch.LongTensor
    texts: Optional[list] = None
    nfe: float = 0.0
    nfe_per_sample: Optional[torch.Tensor] = None
    nfe_changes: float = 0.0
    changes_per_sample: Optional[torch.Tensor] = None
    num_generated: Optional[torch.Tensor] = None
    forward_calls: int = 0
    num_steps: int = 0


class RowCache:
    """RADD's per-row cache of network outputs (arXiv:2406.03736 §3.2 and App. J.4, "efficient
    batching"), with the NFE counters of each sequence.

    A time-free network's output for a row stays exact while no token of that row changes, so
    :meth:`refresh` re-runs only the rows marked stale -- as one dynamic sub-batch -- and writes
    their rows of ``outputs``; :meth:`record_step` marks the rows a step changed. With
    ``reuse=False`` (the uncached baseline, and any time-conditioned network) every refresh
    re-runs the whole batch.

    outputs:         [B, L, N] the latest network output of every row (None before the first refresh).
    stale:           [B] bool, rows whose tokens changed since their last evaluation (all at first).
    nfe_per_row:     [B] network evaluations of each row.
    changes_per_row: [B] steps in which the row revealed >= 1 token (eq. D.17).
    forward_calls:   batched network calls made.
    """

    def __init__(self, batch_size: int, device, *, reuse: bool = True):
        self.reuse = bool(reuse)
        self.outputs: Optional[torch.Tensor] = None
        self.stale = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.nfe_per_row = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.changes_per_row = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.forward_calls = 0

    def refresh(self, x: torch.LongTensor,
                forward: Callable[[torch.LongTensor], torch.Tensor]) -> Optional[torch.Tensor]:
        """Bring ``outputs`` up to date for the current ids ``x`` [B, L] with ``forward(ids) -> [b, L, N]``.
        Returns the outputs computed now (None when no row was stale)."""
        if not self.reuse:
            self.outputs = new = forward(x)
            self.nfe_per_row += 1
            self.forward_calls += 1
            return new
        rows = self.stale.nonzero().squeeze(1)
        k = rows.numel()
        if k == 0:
            return None
        if k == x.shape[0]:
            self.outputs = new = forward(x)
        else:
            if 0 in self.outputs.stride():  # an expanded output (e.g. a constant model) cannot be written
                self.outputs = self.outputs.contiguous()
            new = forward(x[rows])
            self.outputs[rows] = new
        self.nfe_per_row[rows] += 1
        self.forward_calls += 1
        return new

    def record_step(self, changed_rows: torch.BoolTensor) -> None:
        """After a step: the rows that revealed a token are stale and count one more change."""
        self.changes_per_row += changed_rows
        self.stale = changed_rows


def _as_id_lists(x, batch: Optional[int], name: str, tokenizer) -> Optional[list[list[int]]]:
    """str | list[str] | list[int] | list[list[int]] | LongTensor -> one id list per row."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], str)):
        if tokenizer is None:
            raise ValueError(f"{name} given as text but the pipeline has no tokenizer; pass token ids instead")
        texts = [x] if isinstance(x, str) else list(x)
        rows = [list(tokenizer.encode(t)) for t in texts]
    elif isinstance(x, (list, tuple)) and (not x or isinstance(x[0], int)):
        rows = [list(x)]
    elif isinstance(x, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in x):
        rows = [list(r) for r in x]
    else:
        raise ValueError(f"{name} must be a string, a list of strings, a list of ids or a list of id lists")
    if len(rows) == 1 and batch and batch > 1:
        rows = rows * batch
    return rows


def _is_index(v, low: int) -> bool:
    """An integer (Python, NumPy or 0-d tensor; not a bool) >= ``low``."""
    if isinstance(v, bool):
        return False
    try:
        return operator.index(v) >= low
    except TypeError:
        return False


def _row_generators(seed: int, row_indices, batch: int) -> list[torch.Generator]:
    """One generator per row, keyed by (seed, the row's global index): row k's draws do not depend
    on the batch (as the image pipelines' per-index noise)."""
    if row_indices is None:
        idx = list(range(batch))
    else:
        raw = row_indices.reshape(-1).tolist() if isinstance(row_indices, torch.Tensor) else list(row_indices)
        if len(raw) != batch:
            raise ValueError(f"row_indices must hold one index per row ({batch}), got {len(raw)}")
        if not all(_is_index(i, 0) for i in raw):
            raise ValueError(f"row_indices must be integers >= 0, got {raw[:10]}")
        idx = [operator.index(i) for i in raw]
    return [sample_generator(seed, k, "radd") for k in idx]


class DiscreteDiffusionPipeline(UmaskSaveMixin, LocalFolderPipelineMixin, DiffusionPipeline):
    """Sample text from a masked-diffusion denoiser (RADD, or any model with the interface above).

    ``pipe(batch_size=4, num_inference_steps=1024)`` draws unconditionally; ``prompt=`` / ``suffix=``
    (text or ids, one per row, different lengths allowed) and ``input_ids=`` (a [B, L] template with
    the mask id where to generate) fix tokens anywhere -- they are placed once and never resampled.
    ``order=`` ("forward", "backward", "random", or a permutation of positions) samples one position
    per step in that order (any-order autoregressive sampling).
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler, tokenizer=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        _check_tokenizer(tokenizer, self.vocab_size)
        self.tokenizer = tokenizer

    @classmethod
    def from_model(cls, transformer, tokenizer=None, **scheduler_kwargs):
        """A pipeline whose RADDScheduler matches the model (mask id, noise schedule)."""
        cfg = getattr(transformer, "config", None)
        kw = dict(mask_token_id=int(transformer.mask_token_id))
        if cfg is not None and "noise_schedule" in cfg:
            kw.update(noise_schedule=cfg.noise_schedule, total_noise_min=cfg.total_noise_min,
                      total_noise_max=cfg.total_noise_max)
        kw.update(scheduler_kwargs)
        return cls(transformer, RADDScheduler(**kw), tokenizer)

    # ------------------------------------------------------------------ saving with the tokenizer
    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None and hasattr(self.tokenizer, "to_dict"):
            save_tokenizer(self.tokenizer, Path(save_directory) / "tokenizer")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, tokenizer=None, **kwargs):
        # diffusers resolves the saved class names (RADDTransformer, RADDScheduler) only from modules
        # already imported: this module imports both at its top.
        pretrained_model_name_or_path = local_folder(pretrained_model_name_or_path)  # an asset name or a folder
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        tok_dir = Path(pretrained_model_name_or_path) / "tokenizer"
        if tokenizer is None and tok_dir.is_dir():
            try:
                tokenizer = load_tokenizer(tok_dir, pipe.vocab_size)
            except (ValueError, KeyError, OSError) as e:  # a damaged or edited tokenizer file
                raise ValueError(f"{tok_dir / TOKENIZER_FILE} does not belong to the model in "
                                 f"{pretrained_model_name_or_path} ({type(e).__name__}: {e})"
                                 f"{rebuild_hint(pretrained_model_name_or_path)}") from e
        _check_tokenizer(tokenizer, pipe.vocab_size)
        pipe.tokenizer = tokenizer
        return pipe

    # ------------------------------------------------------------------ helpers
    @property
    def mask_token_id(self) -> int:
        return int(getattr(self.transformer, "mask_token_id", self.scheduler.config.mask_token_id))

    @property
    def vocab_size(self) -> int:
        """Real tokens V (ids 0..V-1); the mask id is outside them."""
        cfg = getattr(self.transformer, "config", None)
        if cfg is not None and "vocab_size" in cfg:
            return int(cfg.vocab_size)
        return self.mask_token_id

    def _device(self):
        try:
            return next(self.transformer.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    def _initial_state(self, batch_size, seq_len, prompt, suffix, input_ids) -> torch.LongTensor:
        mask_id, V = self.mask_token_id, self.vocab_size
        if input_ids is not None:
            x = torch.as_tensor(input_ids, dtype=torch.long)
            if x.dim() == 1:
                x = x[None]
            if x.dim() != 2:
                raise ValueError(f"input_ids must be [B, L] (mask id {mask_id} where to generate), "
                                 f"got {tuple(x.shape)}")
            bad = (x < 0) | ((x >= V) & (x != mask_id))
            if bad.any():
                raise ValueError(f"input_ids holds ids outside 0..{V - 1} that are not the mask id {mask_id}: "
                                 f"{sorted(set(x[bad].tolist()))[:10]}")
            if prompt is not None or suffix is not None:
                raise ValueError("pass either input_ids or prompt/suffix, not both")
            return x.clone()
        pre = _as_id_lists(prompt, batch_size, "prompt", self.tokenizer)
        suf = _as_id_lists(suffix, batch_size, "suffix", self.tokenizer)
        n_rows = {len(r) for r in (pre, suf) if r is not None}
        B = max(n_rows) if n_rows else (batch_size or 1)
        if n_rows - {1, B}:
            raise ValueError(f"prompt and suffix have different numbers of rows: {sorted(n_rows)}")
        if batch_size is not None and B != batch_size:
            raise ValueError(f"batch_size={batch_size} but {B} prompts were given")
        pre, suf = [r * B if r is not None and len(r) == 1 else r for r in (pre, suf)]
        x = torch.full((B, seq_len), mask_id, dtype=torch.long)
        for b in range(B):
            p = pre[b] if pre else []
            s = suf[b] if suf else []
            for name, ids in (("prompt", p), ("suffix", s)):
                if mask_id in ids:
                    raise ValueError(f"{name} (row {b}) contains the mask token id {mask_id}")
                out = [i for i in ids if not 0 <= i < V]
                if out:
                    raise ValueError(f"{name} (row {b}) holds ids outside the vocabulary 0..{V - 1}: {out[:10]}")
            if len(p) + len(s) > seq_len:
                raise ValueError(f"prompt ({len(p)} tokens) + suffix ({len(s)} tokens) of row {b} is longer than "
                                 f"seq_len={seq_len}")
            if p:
                x[b, :len(p)] = torch.tensor(p)
            if s:
                x[b, seq_len - len(s):] = torch.tensor(s)
        return x

    def _order_ranks(self, x, order, gens) -> torch.LongTensor:
        """rank[b, j] = the step at which position j of row b is generated (-1: fixed token)."""
        B, L = x.shape
        if isinstance(order, str):
            if order not in ORDERS:
                raise ValueError(f"order must be one of {ORDERS} or a permutation of 0..{L - 1}, got {order!r}")
            if order == "forward":
                perms = torch.arange(L).expand(B, L)
            elif order == "backward":
                perms = torch.arange(L - 1, -1, -1).expand(B, L)
            else:
                per_row = gens if isinstance(gens, (list, tuple)) else [gens] * B
                perms = torch.stack([torch.randperm(L, generator=g) for g in per_row])
        else:
            perms = torch.as_tensor(order, dtype=torch.long)
            perms = perms.expand(B, L) if perms.dim() == 1 else perms
            if perms.shape != (B, L) or not (perms.sort(-1).values == torch.arange(L)).all():
                raise ValueError(f"order must be a permutation of 0..{L - 1} (shape [L] or [B, L])")
        masked = (x == self.mask_token_id).gather(1, perms)  # masked flags in generation order
        step_of = torch.cumsum(masked.long(), dim=1) - 1
        ranks = torch.full((B, L), -1, dtype=torch.long)
        ranks.scatter_(1, perms, torch.where(masked, step_of, torch.full_like(step_of, -1)))
        return ranks

    def _forward(self, ids, chunk: Optional[int], total_noise=None):
        def run(part, tn):
            return self.transformer(part) if tn is None else self.transformer(part, tn)

        if chunk is None or ids.shape[0] <= chunk:
            return run(ids, total_noise)
        return torch.cat([run(ids[i:i + chunk], None if total_noise is None else total_noise[i:i + chunk])
                          for i in range(0, ids.shape[0], chunk)])

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, batch_size: Optional[int] = None, seq_len: Optional[int] = None, num_inference_steps: int = 128,
                 prompt=None, suffix=None, input_ids=None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 order: Union[None, str, Sequence[int], torch.Tensor] = None, use_cache: bool = True,
                 generator: Union[None, torch.Generator, list] = None, seed: int = 0,
                 row_indices: Optional[Sequence[int]] = None, forward_batch_size: Optional[int] = None,
                 output_type: str = "text", return_dict: bool = True, progress: bool = False):
        """Draw ``batch_size`` sequences of ``seq_len`` tokens (default: the model's length).

        Randomness. By default every row has its own generator, seeded from (``seed``, the row's
        global index): ``row_indices`` (one int >= 0 per row; default 0..B-1). Row k then depends
        only on (seed, k) -- not on the batch size, its place in the batch or the cache -- so rows
        0..N-1 drawn in chunks (``row_indices=range(start, start + b)``) equal one batch of N (and
        ``batch_size=1`` is row 0). ``generator`` (diffusers semantics) overrides
        this: a list of B generators gives row b its own stream (row b draws only from
        generator b); a single generator is shared by the whole batch, so a row then depends on the
        batch it is drawn in. ``use_cache=False`` re-runs the whole batch every step (the baseline;
        same samples). ``forward_batch_size`` splits network calls into chunks of at most that many
        rows."""
        if output_type not in ("text", "ids"):
            raise ValueError(f"output_type must be 'text' or 'ids', got {output_type!r}")
        if forward_batch_size is not None and forward_batch_size < 1:
            raise ValueError(f"forward_batch_size must be >= 1 or None, got {forward_batch_size}")
        if batch_size is not None and not _is_index(batch_size, 1):
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        batch_size = None if batch_size is None else operator.index(batch_size)
        if generator is not None and row_indices is not None:
            raise ValueError("pass either generator or row_indices (with seed), not both: row_indices only "
                             "keys the per-row generators built from seed")
        sched = self.scheduler
        mask_id = self.mask_token_id
        if sched.config.mask_token_id != mask_id:
            raise ValueError(f"scheduler mask_token_id {sched.config.mask_token_id} != model mask id {mask_id}; "
                             "build the pipeline with DiscreteDiffusionPipeline.from_model(model)")
        cfg = getattr(self.transformer, "config", None)
        trained = int(cfg.length) if cfg is not None and "length" in cfg else None  # the model's length
        if seq_len is None:
            seq_len = trained
            if seq_len is None and input_ids is None:
                raise ValueError("seq_len is required for a model without config.length")
        if seq_len is not None and seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")

        device = self._device()
        x = self._initial_state(batch_size, seq_len, prompt, suffix, input_ids)
        B, L = x.shape
        if trained is not None and L > trained:
            warnings.warn(f"sequence length {L} exceeds the model's trained length {trained} (config.length): "
                          f"{L - trained} position(s) per row lie beyond it, where the samples are out of "
                          "distribution", UserWarning, stacklevel=2)
        gens = generator if generator is not None else _row_generators(seed, row_indices, B)
        if isinstance(gens, (list, tuple)) and len(gens) != B:
            raise ValueError(f"generator list must have one generator per row ({B}), got {len(gens)}")
        num_generated = (x == mask_id).sum(1)

        x = x.to(device)
        if order is not None:  # any-order AR: position by position, one per step
            reveal = self._order_ranks(x.cpu(), order, gens).to(device)
            num_inference_steps = max(int(num_generated.max()), 1)
            sched.set_timesteps(num_inference_steps, device=device)
        else:  # stage 1 of the two-stage draw, for all steps at once
            sched.set_timesteps(num_inference_steps, device=device)
            reveal = sched.reveal_steps(x, gens)
        n = sched.num_inference_steps
        time_cond = bool(getattr(self.transformer, "time_conditioned", False))
        cache = RowCache(B, device, reuse=use_cache and not time_cond)
        counts = torch.bincount(reveal[reveal >= 0].cpu(), minlength=n).tolist()
        # With the cache only steps that reveal something are visited: the others change nothing
        # and need no call. Without it every step runs the network (the baseline's cost).
        loop = [i for i, c in enumerate(counts) if c] if cache.reuse else range(n)

        # NaN weights: an error naming the step (log-probabilities may be -inf, not NaN or +inf)
        watch, V = FiniteWatch("transformer output", allow_neg_inf=True), self.vocab_size
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, final_step=None if order is None else False)
        for i in (self.progress_bar(loop) if progress else loop):
            tn = None
            if time_cond:  # SEDD-style networks take the total noise σ̄(t_i); never cached
                tn = torch.full((B,), sched.total_noise(i), device=device, dtype=torch.float32)
            new = cache.refresh(x, partial(self._forward, chunk=forward_batch_size, total_noise=tn))
            if new is not None:
                watch.update(new[..., :V], i)
            if not counts[i]:  # uncached baseline: the step reveals nothing
                continue
            out = sched.step(cache.outputs, i, x, generator=gens, unmask=reveal == i, **kw)
            x = out.prev_sample
            cache.record_step(out.changed_rows)
        watch.flush()
        if (x == mask_id).any():  # the final step reveals every mask; this guards the contract
            raise RuntimeError("internal error: a mask token survived the final step")

        texts = None
        if output_type == "text" and self.tokenizer is not None:
            texts = [self.tokenizer.decode(row) for row in x.tolist()]
        fwd, changes = cache.nfe_per_row, cache.changes_per_row
        out = TextDiffusionOutput(sequences=x, texts=texts, nfe=float(fwd.float().mean()), nfe_per_sample=fwd,
                                  nfe_changes=float(changes.float().mean()), changes_per_sample=changes,
                                  num_generated=num_generated, forward_calls=cache.forward_calls,
                                  num_steps=sched.num_inference_steps)
        return out if return_dict else (x, texts)


def _check_tokenizer(tokenizer, vocab_size: int) -> None:
    """A tokenizer must have exactly the model's V real tokens: with fewer, sampled ids >= its size
    decode to U+FFFD; with more, encoded text holds ids the model does not know."""
    n = getattr(tokenizer, "vocab_size", None)
    if tokenizer is not None and n is not None and int(n) != int(vocab_size):
        raise ValueError(f"tokenizer has {n} tokens but the model has vocab_size {vocab_size} (real tokens, mask id "
                         f"{vocab_size}); pass the model's own tokenizer")


def _default_tokenizer(folder: Optional[Path], vocab_size: int):
    for cand in ([folder, folder / "tokenizer"] if folder is not None else []):
        if (cand / TOKENIZER_FILE).is_file():
            return load_tokenizer(cand, vocab_size)
    if vocab_size == 50257:
        return gpt2_tokenizer()  # RADD / SEDD / MDLM checkpoints use GPT-2's tokens
    if vocab_size == 256:
        return ByteTokenizer()
    return None


def load_text_pipeline(model, tokenizer=None, **scheduler_kwargs) -> DiscreteDiffusionPipeline:
    """A text pipeline from: a diffkit pipeline folder (model_index.json), an official RADD
    checkpoint folder (nested config.json + model.safetensors), a RADDTransformer folder, or
    ``"tiny"`` (a random 256-token byte model, for smoke tests). ``tokenizer``: a tokenizer object
    or spec (``"byte"``, ``"gpt2"``, ``"char:<alphabet>"``, folder); by default the folder's own,
    else GPT-2's for 50,257 tokens (local cache only), bytes for 256, none otherwise (ids only)."""
    folder = None
    if str(model) == "tiny":
        transformer, tok = tiny_radd_transformer(vocab_size=256, hidden_size=64, n_heads=4, length=64), ByteTokenizer()
    else:
        folder = Path(model)
        if not folder.exists() and folder.name in REBUILD:  # `assets/text-radd` from any directory
            folder = asset_path(model)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} not found (expected a diffkit pipeline folder, an official "
                                    "RADD checkpoint folder, a RADDTransformer folder, or 'tiny')")
        verify_asset(folder)  # its SHA256SUMS manifest, if it has one
        if (folder / "model_index.json").is_file():
            pipe = DiscreteDiffusionPipeline.from_pretrained(str(folder))
            if scheduler_kwargs:
                pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **scheduler_kwargs)
            if tokenizer is not None:
                pipe.tokenizer = load_tokenizer(tokenizer, pipe.vocab_size)
            return pipe
        transformer = RADDTransformer.from_pretrained(str(folder))
        tok = None
    V = int(transformer.config.vocab_size)
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer, V)
    elif tok is None:
        try:
            tok = _default_tokenizer(folder, V)
        except FileNotFoundError:
            tok = None  # e.g. GPT-2 not cached locally: sample ids only
    return DiscreteDiffusionPipeline.from_model(transformer.eval(), tok, **scheduler_kwargs)
