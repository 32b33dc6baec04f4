"""λ-DCE training of a character-level RADD model on the pydoc corpus (the shipped ``assets/text-radd``).

The loss is RADD's ``lambda_DCE`` (Ou et al. 2024, arXiv 2406.03736, §3.3 and App. C): per
sequence, draw λ ∈ (0, 1), mask each token independently with probability λ, and score
(1/λ) Σ_{masked i} -log c_θ(x₀ⁱ | unmasked). Its expectation over λ ~ U(0, 1) is the any-order
autoregressive NLL, an upper bound on -log p(x₀) (the same estimator
:func:`diffkit.likelihood.lambda_dce_nll` evaluates). λ is stratified over the global batch as in
the official code (λ = (u + g mod B)/B for global sample g), which lowers the variance without
changing the mean. All draws are functions of (seed, stream, global sample index),
so the run resumes exactly through :class:`diffkit.train.Trainer`.

The batch source cuts windows of ``length`` characters at uniformly random offsets of the train
split (stateless: the window of sample g depends only on (seed, g)).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from diffkit.assets import shipped_asset_target
from diffkit.atomic import replace_dir, staging_dir, write_text_atomically
from diffkit.likelihood import blocked_nll, split_blocks
from diffkit.models.radd import RADDTransformer
from diffkit.models.tokenizers import CharTokenizer
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline, load_text_pipeline
from diffkit.samplers.absorbing import expected_nfe
from diffkit.seeding import rand_for_indices, randint_for_indices
from diffkit.text_corpus import (CORPUS_PYTHON, CORPUS_SHA256, BigramModel, corpus_alphabet, corpus_split,
                                 unigram_entropy_bits)
from diffkit.train import Trainer, TrainConfig, resolve_run_dir
from diffkit.weights import MANIFEST, write_manifest

__all__ = ["LambdaDCELoss", "TextWindowSource", "PRESETS", "build_text_model", "train_text_model", "export_text_model",
           "heldout_nll_bound", "write_model_card"]

#: RADDTransformer sizes: "text" is the shipped model, "tiny" is for tests.
PRESETS = {
    "text": dict(hidden_size=128, n_heads=4, n_blocks=4, length=128),
    "tiny": dict(hidden_size=32, n_heads=2, n_blocks=1, length=32),
}


class LambdaDCELoss:
    """λ-DCE loss in nats per token: mean over the batch of (1/λ)·Σ_masked CE / L."""

    def __init__(self, mask_token_id: int, batch_size: int, seed: int = 0, min_lambda: float = 1e-4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mask_id, self.batch_size = int(mask_token_id), int(batch_size)
        self.seed, self.min_lambda = int(seed), float(min_lambda)

    def masks(self, x0: torch.Tensor, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ [B] float64, mask [B, L] bool) for the given global sample indices."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        u = rand_for_indices((), idx, self.seed, stream="dce-lambda", dtype=torch.float64)
        lam = ((idx % self.batch_size).to(torch.float64) + u) / self.batch_size
        lam = lam.clamp_min(self.min_lambda)
        coins = rand_for_indices(x0.shape[1:], idx, self.seed, stream="dce-mask", dtype=torch.float64)
        return lam, coins < lam[:, None]

    def __call__(self, model, batch, indices, step):
        x0 = batch
        lam, mask = self.masks(x0, indices)
        lam, mask = lam.to(x0.device), mask.to(x0.device)
        noisy = torch.where(mask, torch.full_like(x0, self.mask_id), x0)
        out = model(noisy).float()
        logp = torch.log_softmax(out[..., :self.mask_id], dim=-1)  # real tokens only (mask column ignored)
        ce = -logp.gather(-1, x0[..., None]).squeeze(-1)
        per_seq = (ce * mask).sum(-1).double() / lam
        return (per_seq / x0.shape[1]).mean().float()


class TextWindowSource:
    """``source(indices, step) -> [B, length]`` token windows at (seed, index)-determined offsets."""

    def __init__(self, ids: torch.Tensor, length: int, seed: int = 0):
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if ids.numel() < length:
            raise ValueError(f"the training text has {ids.numel()} tokens, fewer than length={length}")
        self.ids, self.length, self.seed = ids, int(length), int(seed)

    def __call__(self, indices, step):
        starts = randint_for_indices(0, self.ids.numel() - self.length + 1, indices, self.seed, stream="text-window")
        return self.ids[starts[:, None] + torch.arange(self.length)[None, :]]


def build_text_model(vocab_size: int, preset: str = "text", seed: int = 0, dropout: float = 0.0):
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RADDTransformer(vocab_size=vocab_size, dropout=dropout, **PRESETS[preset])


def export_text_model(model, tokenizer, output, facts: Optional[dict] = None) -> Path:
    """Write a DiscreteDiffusionPipeline folder (transformer/, scheduler/, tokenizer/) atomically,
    keeping files of an existing folder that the export does not produce (corpus/, README.md, ...)."""
    tmp = staging_dir(output)
    DiscreteDiffusionPipeline.from_model(model.eval(), tokenizer).save_pretrained(str(tmp), safe_serialization=True)
    if facts is not None:
        (tmp / "training.json").write_text(json.dumps(facts, indent=1) + "\n")
    write_manifest(tmp)
    return replace_dir(tmp, output, produced=("transformer", "scheduler", "tokenizer", "model_index.json",
                                              "training.json", MANIFEST))


def train_text_model(output, max_steps: int = 20000, max_minutes: Optional[float] = None, seed: int = 0, resume=None,
                     run_dir=None, batch_size: int = 32, lr: float = 1.5e-3, warmup_steps: int = 100,
                     preset: str = "text", checkpoint_every: int = 250, keep_checkpoints: int = 2,
                     progress: bool = True, corpus_path=None, accelerator=None, command: Optional[str] = None):
    """Train (or resume) with λ-DCE and export the EMA model to ``output``. ``max_minutes`` stops
    at the first checkpoint boundary after that much wall time of this session (the step reached is
    recorded; the learning rate is constant after warm-up, so ``--max-steps N`` reproduces it)."""
    output = Path(output)
    run_dir = resolve_run_dir(output, run_dir)
    tok = CharTokenizer(corpus_alphabet(corpus_path), unk=" ")
    train_ids = torch.tensor(tok.encode(corpus_split("train", corpus_path)), dtype=torch.long)
    model = build_text_model(tok.vocab_size, preset, seed)
    L = int(model.config.length)
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, grad_clip=1.0,
                      ema_decay=0.999, seed=seed, checkpoint_every=checkpoint_every,
                      keep_checkpoints=keep_checkpoints, progress=progress)
    trainer = Trainer(model, LambdaDCELoss(tok.mask_token_id, batch_size, seed),
                      TextWindowSource(train_ids, L, seed), cfg, run_dir, accelerator=accelerator,
                      meta={"preset": preset, "what": "character-level RADD text model (lambda-DCE)"})
    t0 = time.perf_counter()
    if max_minutes is None:
        result = trainer.fit(resume=resume)
    else:  # chunks of checkpoint_every steps until the wall-time cap
        ck = trainer.resolve_resume(resume)
        if ck is not None:
            trainer.load_checkpoint(ck)
        chunk = max(checkpoint_every, 1)
        while True:
            result = trainer.fit(stop_at=min(trainer.step + chunk, max_steps))
            if trainer.step >= max_steps or time.perf_counter() - t0 >= 60 * max_minutes:
                break
    if trainer.accelerator.is_main_process:
        facts = {
            "command": command, "steps": result.step, "batch_size": batch_size, "sequence_length": L,
            "learning_rate": lr, "warmup_steps": warmup_steps, "ema_decay": cfg.ema_decay, "grad_clip": cfg.grad_clip,
            "loss": "lambda-DCE (stratified lambda, nats/token)", "seed": seed, "preset": preset,
            "architecture": {k: v for k, v in PRESETS[preset].items()},
            "parameters": sum(p.numel() for p in trainer.unwrapped.parameters()),
            "final_loss_nats_per_token": result.final_loss, "final_loss_window_steps": min(100, len(result.log)),
            "wall_time_s": round(result.wall_time_s, 1), "processes": trainer.accelerator.num_processes,
            "machine": f"{platform.machine()} {os.cpu_count()}-core CPU ({torch.get_num_threads()} torch threads), "
                       f"torch {torch.__version__}" if trainer.accelerator.device.type == "cpu"
                       else str(trainer.accelerator.device),
            "corpus": f"CPython {CORPUS_PYTHON} pydoc_data.topics snapshot, sha256 {CORPUS_SHA256}",
            "train_characters": int(train_ids.numel()),
            "reproduce": (f"diffkit text train --output {output} --max-steps {result.step} --seed {seed} "
                          f"--batch-size {batch_size} --lr {lr} --warmup-steps {warmup_steps} --preset {preset}"
                          + (" --replace-asset" if shipped_asset_target(output) is not None else "")),
        }
        export_text_model(trainer.ema_model(), tok, output, facts)
    trainer.accelerator.wait_for_everyone()
    return result


# ------------------------------------------------------------------ model card
def heldout_nll_bound(model, tokenizer, draws: int = 16, max_blocks: Optional[int] = None, seed: int = 0,
                      corpus_path=None, estimator: str = "k-dce") -> dict:
    """NLL bound on the held-out split, in bits/char: the non-overlapping full blocks of the
    model's length, ``draws`` Monte Carlo draws per block, scored by
    :func:`diffkit.likelihood.blocked_nll` (block k with seed ``seed + k``, the rule of
    ``diffkit text nll``). ``estimator``: ``"k-dce"`` (default; finite variance) or ``"lambda-dce"``
    (the training loss; the shipped card's figure)."""
    L = int(model.config.length)
    blocks = split_blocks(tokenizer.encode(corpus_split("heldout", corpus_path)), L, drop_last=True)[:max_blocks]
    r = blocked_nll(model, blocks, estimator, draws, seed=seed, batch_size=64)
    se = r.stderr if draws > 1 else float("nan")
    return dict(estimator=estimator, bits_per_char=r.nll / r.num_tokens / math.log(2),
                stderr_bits=se / r.num_tokens / math.log(2), draws=draws, blocks=len(blocks), chars=r.num_tokens)


def write_model_card(folder, draws: int = 16, steps=(16, 64, 256, 1024), prompt: str = "A list ",
                     seed: int = 0) -> Path:
    """Evaluate the pipeline folder and write its README.md (atomically); returns its path."""
    folder = Path(folder)
    facts = json.loads((folder / "training.json").read_text())
    pipe = load_text_pipeline(str(folder))
    pipe.set_progress_bar_config(disable=True)
    model, tok = pipe.transformer, pipe.tokenizer
    L = int(model.config.length)
    with torch.no_grad():
        bound = heldout_nll_bound(model, tok, draws, seed=seed, estimator="lambda-dce")
        bg = BigramModel(corpus_split("train"), corpus_alphabet())
        samples = []
        for n in steps:
            t0 = time.perf_counter()
            out = pipe(batch_size=1, num_inference_steps=n, prompt=prompt, seed=seed)
            dt = time.perf_counter() - t0
            unc = pipe(batch_size=8, num_inference_steps=n, seed=seed)
            samples.append(dict(steps=n, seconds=dt, nfe=out.nfe, law=expected_nfe(n, int(out.num_generated[0])),
                                text=out.texts[0], bigram_ppl=sum(bg.perplexity(t) for t in unc.texts) / 8,
                                entropy=unigram_entropy_bits("".join(unc.texts))))
    held = corpus_split("heldout")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "README.md")
    params = sum(p.numel() for p in model.parameters())
    arch = facts.get("architecture", {})
    lines = [
        "# text-radd: a character-level RADD model shipped with diffkit", "",
        "A small masked (absorbing) discrete diffusion model in the RADD parameterisation (Ou et al., "
        "arXiv 2406.03736): a bidirectional transformer with no time input giving p₀(character | unmasked "
        "characters). Sample with `diffkit text sample --steps 256 --prompt \"A list \"` (offline).", "",
        "| | |", "|---|---|",
        f"| architecture | RADDTransformer, {arch.get('n_blocks')} blocks, hidden {arch.get('hidden_size')}, "
        f"{arch.get('n_heads')} heads, RoPE, no time input |",
        f"| parameters | {params:,} ({size / 2 ** 20:.2f} MiB on disk with tokenizer and corpus snapshot) |",
        f"| sequence length L | {L} characters |",
        f"| vocabulary | {tok.vocab_size} characters (every character of the corpus) + the mask token "
        f"(id {tok.vocab_size}) |",
        f"| training | λ-DCE (stratified λ), {facts['steps']} steps × batch {facts['batch_size']} × {L} characters, "
        f"AdamW lr {facts['learning_rate']} (warm-up {facts['warmup_steps']}, then constant), grad clip "
        f"{facts['grad_clip']}, EMA {facts['ema_decay']} (weights shipped: EMA) |",
        f"| wall time | {facts['wall_time_s'] / 60:.1f} min on {facts['machine']} (shared with other jobs) |",
        f"| final training loss | {facts['final_loss_nats_per_token'] / math.log(2):.3f} bits/char "
        f"(λ-DCE, mean of the last {facts['final_loss_window_steps']} steps) |",
        f"| **held-out NLL bound** | **{bound['bits_per_char']:.3f} ± {bound['stderr_bits']:.3f} bits/char** "
        f"(λ-DCE, {bound['draws']} draws × {bound['blocks']} blocks of {L} = {bound['chars']:,} held-out characters) |",
        f"| references on the held-out text | unigram entropy {unigram_entropy_bits(held):.3f} bits/char; character "
        f"bigram model (fitted on train) {math.log2(bg.perplexity(held)):.3f} bits/char |",
        f"| corpus | {facts['corpus']}; {facts['train_characters']:,} train characters (see corpus/SOURCE.md) |",
        f"| reproduce | `{facts.get('reproduce', facts.get('command'))}` |", "",
        "The bound is an upper bound on the negative log-likelihood (the any-order autoregressive NLL "
        "averaged over random orders); lower is better.", "",
        f"## Samples (prompt {prompt!r}, seed {seed}, per-row cache, float64 draw)", "",
        "Bigram perplexity (mean over 8 unprompted samples, under the train-split bigram model) and "
        f"unigram entropy of those samples; held-out text: {bg.perplexity(held):.2f} and "
        f"{unigram_entropy_bits(held):.3f}.", "",
    ]
    for s in samples:
        lines += [f"### {s['steps']} steps — NFE {s['nfe']:.0f} (law {s['law']:.1f}), {s['seconds']:.2f} s, "
                  f"bigram ppl {s['bigram_ppl']:.2f}, entropy {s['entropy']:.2f} bits/char", "", "```",
                  s["text"], "```", ""]
    lines += ["Machine for the timings: " + facts["machine"].split(" (")[0] + ", 1 torch thread.", ""]
    card = folder / "README.md"
    write_text_atomically(card, "\n".join(lines))
    eval_facts = dict(heldout=bound, samples=samples)
    write_text_atomically(folder / "evaluation.json", json.dumps(eval_facts, indent=1) + "\n")
    return card
