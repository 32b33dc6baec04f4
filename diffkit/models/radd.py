"""The RADD denoiser c_θ(x): a bidirectional transformer with no time input (Ou et al. 2024, "Your
Absorbing Discrete Diffusion Secretly Models the Conditional Distributions of Clean Data",
arXiv:2406.03736: §3.1, App. J.1).

Output contract (the one every absorbing sampler in diffkit relies on): ``forward(ids)`` returns
[B, L, V+1] float32 whose columns 0..V-1 are log p₀(v | unmasked part of ids) over the V real
tokens, and whose last column (the mask token, id V) is a meaningless raw logit. Outputs at
unmasked positions are unused. Because there is no time input, ``time_conditioned`` is False and
the output of an unchanged sequence can be cached (RADD §3.2).

Two on-disk formats load into the same module (parameter names are the official ones, those of
the released ``model/transformer.py``):

* the **official RADD checkpoint** (hub repos ``JingyangOu/radd-*``): ``config.json`` holding the
  nested hydra config (``tokens``, ``model.{hidden_size,n_heads,n_blocks,dropout,dtype,length}``,
  ``noise``) and ``model.safetensors``. Loaded with strict key and shape checking; the only
  tolerated extra key is the RoPE buffer ``rotary_emb.inv_freq``, used as stored (as the official
  module does), with a warning naming the largest difference if it is not the standard
  base-10000 frequencies.
* diffkit's own diffusers-style format (``save_pretrained`` / ``from_pretrained``; flat
  config with ``_class_name``), written atomically; loaded with the same strict key and shape
  check (``diffkit.weights.load_model_strict``).

``RADDTransformer.from_pretrained`` accepts either.

The config's ``total_noise_min`` / ``total_noise_max`` bound the geometric schedule's total noise σ̄
(the official ``noise.sigma_min`` / ``noise.sigma_max``; diffkit configs saved with those old
names still load).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors import SafetensorError

from diffkit.assets import rebuild_hint
from diffkit.atomic import (replace_dir, save_safetensors, staging_dir, umask_permissions,
                            write_text_atomically)
from diffkit.models.config_aliases import ConfigAliasMixin, resolve_aliases
from diffkit.weights import WeightsError, load_model_strict, state_dict_mismatch, state_shapes

__all__ = ["RADDTransformer", "load_official_checkpoint", "save_official_checkpoint", "is_official_checkpoint",
           "tiny_radd_transformer", "CheckpointError", "OFFICIAL_TOLERATED_KEYS"]

OFFICIAL_TOLERATED_KEYS = ("rotary_emb.inv_freq",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(WeightsError):
    """A checkpoint that does not match the architecture (keys, shapes, vocabulary)."""


class Embedding(nn.Module):
    """Raw [V+1, H] parameter indexed directly (the official ``vocab_embed.embedding``)."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(num, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, ids):
        return self.embedding[ids]


class LayerNormWithBias(nn.Module):
    """float32 layer norm without inner affine, then ·weight + bias (official ``LayerNormWot``;
    SEDD's and MDLM's have no bias). The official code initialises the bias to ones."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [self.dim], eps=1e-5)
        return x * self.weight + self.bias


class Rotary(nn.Module):
    """NeoX rotate-half RoPE over the full head dim, base 10000. ``inv_freq`` is not part of the
    state dict (diffkit's format recomputes it); an official checkpoint that carries it has it
    loaded as stored (:func:`load_official_checkpoint`)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self._cache = None

    def cos_sin(self, length: int, device):
        c = self._cache
        if c is None or c[0] != length or c[1].device != device:
            t = torch.arange(length, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            emb = torch.cat([freqs, freqs], dim=-1)
            c = self._cache = (length, emb.cos(), emb.sin())
        return c[1], c[2]


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Block(nn.Module):
    """Pre-LN transformer block, bidirectional SDPA attention, tanh-GELU MLP (DDiT without adaLN)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNormWithBias(hidden)
        self.attn_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = LayerNormWithBias(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, cos, sin):
        B, L, H = x.shape
        qkv = self.attn_qkv(self.norm1(x)).view(B, L, 3, self.heads, H // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, d]
        with torch.autocast(x.device.type, enabled=False):  # RoPE in float32
            q32, k32 = q.float(), k.float()
            q = (q32 * cos + _rotate_half(q32) * sin).to(v.dtype)
            k = (k32 * cos + _rotate_half(k32) * sin).to(v.dtype)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.dropout(self.attn_out(att.transpose(1, 2).reshape(B, L, H)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class OutputLayer(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.norm_final = LayerNormWithBias(hidden)
        self.linear = nn.Linear(hidden, out)
        nn.init.zeros_(self.linear.weight)  # official init: outputs start uniform
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(self.norm_final(x))


class RADDTransformer(ConfigAliasMixin, ModelMixin, ConfigMixin):
    """RADD c_θ: ``forward(input_ids [B, L]) -> [B, L, V+1]`` (log-probs over the V real tokens,
    mask column meaningless). ``vocab_size`` is V (real tokens); the mask id is V. The noise
    schedule entries (``noise_schedule``, ``total_noise_min`` / ``total_noise_max``; old names
    ``sigma_min`` / ``sigma_max``) only tell a sampler which schedule the model was trained with."""

    time_conditioned = False
    _supports_gradient_checkpointing = False
    _config_aliases = {"sigma_min": "total_noise_min", "sigma_max": "total_noise_max"}
    ignore_for_config = ["sigma_min", "sigma_max"]

    @register_to_config
    def __init__(self, vocab_size: int = 50257, hidden_size: int = 768, n_heads: int = 12, n_blocks: int = 12,
                 dropout: float = 0.02, autocast_dtype: str = "float32", length: int = 1024,
                 noise_schedule: str = "loglinear", total_noise_min: float = 1e-4, total_noise_max: float = 20.0,
                 sigma_min: float | None = None, sigma_max: float | None = None):
        super().__init__()
        resolve_aliases(self, dict(sigma_min=sigma_min, sigma_max=sigma_max),
                        dict(total_noise_min=total_noise_min, total_noise_max=total_noise_max))
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if hidden_size % n_heads or (hidden_size // n_heads) % 2:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads}) "
                             "into even head dims")
        if autocast_dtype not in _DTYPES:
            raise ValueError(f"autocast_dtype (config model.dtype) must be one of {sorted(_DTYPES)}, "
                             f"got {autocast_dtype!r}")
        self.vocab_embed = Embedding(vocab_size + 1, hidden_size)
        self.rotary_emb = Rotary(hidden_size // n_heads)
        self.blocks = nn.ModuleList([Block(hidden_size, n_heads, dropout) for _ in range(n_blocks)])
        self.output_layer = OutputLayer(hidden_size, vocab_size + 1)

    @property
    def mask_token_id(self) -> int:
        return self.config.vocab_size

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Raw [B, L, V+1] logits. Blocks and the output layer run under autocast in
        ``config.autocast_dtype`` on CUDA (as the official ``torch.cuda.amp.autocast``: on CPU
        everything is float32)."""
        x = self.vocab_embed(input_ids)
        cos, sin = self.rotary_emb.cos_sin(input_ids.shape[1], x.device)
        dt = _DTYPES[self.config.autocast_dtype]
        with torch.autocast("cuda", dtype=dt, enabled=x.is_cuda and dt != torch.float32):
            for block in self.blocks:
                x = block(x, cos, sin)
            out = self.output_layer(x)
        return out.float()

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        raw = self.logits(input_ids)
        return torch.cat([torch.log_softmax(raw[..., :-1], dim=-1), raw[..., -1:]], dim=-1)

    # ------------------------------------------------------------------ formats
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load diffkit's format, or the official RADD checkpoint format (detected from config.json)."""
        if is_official_checkpoint(pretrained_model_name_or_path):
            return load_official_checkpoint(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        load = super().from_pretrained
        if not folder.is_dir():  # a hub id is left to diffusers
            return load(pretrained_model_name_or_path, *args, **kwargs)
        try:
            return load_model_strict(cls, folder, lambda: load(pretrained_model_name_or_path, *args, **kwargs),
                                     kwargs.get("variant"))
        except (OSError, SafetensorError) as e:  # diffusers reports a damaged weights file as a bare OSError
            files = ", ".join(str(f) for f in sorted(folder.glob("*.safetensors"))) or f"{folder} (no weights file)"
            raise CheckpointError(f"the RADDTransformer in {folder} could not be loaded: {files} is damaged or "
                                  f"missing ({type(e).__name__}: {e}){rebuild_hint(folder)}") from e

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' ``save_pretrained``, written to a temporary folder and moved into place."""
        target = Path(save_directory)
        tmp = staging_dir(target)
        with umask_permissions(tmp):  # diffusers' safetensors file would be 0600
            super().save_pretrained(str(tmp), *args, **kwargs)
        replace_dir(tmp, target, produced=os.listdir(tmp))  # other files already in the folder are kept


def tiny_radd_transformer(vocab_size: int = 64, hidden_size: int = 32, n_heads: int = 2, n_blocks: int = 2,
                          length: int = 64, seed: int = 0, logit_scale: float = 2.0) -> RADDTransformer:
    """A tiny random RADD (tests, examples, benchmarks). The output layer, zero at the official
    init, is randomised (logits of standard deviation ≈ ``logit_scale``) so that the
    conditionals are neither uniform nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RADDTransformer(vocab_size=vocab_size, hidden_size=hidden_size, n_heads=n_heads, n_blocks=n_blocks,
                                dropout=0.0, length=length)
    with torch.no_grad():
        w = model.output_layer.linear.weight
        w.copy_(torch.randn(w.shape, generator=g) * (logit_scale / math.sqrt(2 * hidden_size)))
    return model.eval()


# ---------------------------------------------------------------------- the official format

def _config_path(path) -> Path:
    return Path(path) / "config.json"


def is_official_checkpoint(path) -> bool:
    """A folder whose config.json is the nested RADD hydra config (``tokens`` + ``model`` dict)."""
    cfg = _config_path(path)
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "tokens" in data and isinstance(data.get("model"), dict)


def _read_safetensors(file: Path) -> dict:
    """``safetensors.torch.load_file`` with a damaged file reported as a CheckpointError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is damaged or not a safetensors file (truncated download? a git-lfs "
                              f"pointer?): {type(e).__name__}: {e}{rebuild_hint(file.parent)}") from e


def _use_stored_inv_freq(model: "RADDTransformer", stored: torch.Tensor, file: Path) -> None:
    """Load a checkpoint's ``rotary_emb.inv_freq`` as the official module does (a buffer of its
    state dict), warning when it is not the standard frequencies diffkit computes."""
    rot = model.rotary_emb
    if tuple(stored.shape) != tuple(rot.inv_freq.shape):
        raise CheckpointError(f"{file}: rotary_emb.inv_freq has shape {tuple(stored.shape)}, the architecture "
                              f"needs {tuple(rot.inv_freq.shape)} (head dim / 2)")
    stored = stored.to(rot.inv_freq.dtype)
    diff = (stored - rot.inv_freq).abs()
    rel = diff / rot.inv_freq.abs()
    if float(rel.max()) > 1e-6:  # more than float32 rounding
        i = int(diff.argmax())
        warnings.warn(f"{file}: the stored rotary_emb.inv_freq is not the standard RoPE frequencies (base 10000): "
                      f"largest difference {float(diff[i]):.3g} at index {i} (stored {float(stored[i]):.6g}, "
                      f"standard {float(rot.inv_freq[i]):.6g}; largest relative difference {float(rel.max()):.3g}); "
                      "using the stored value, as the official model does (diffkit's own format recomputes "
                      "it: keep the official format, save_official_checkpoint, to keep it)", UserWarning,
                      stacklevel=3)
    with torch.no_grad():
        rot.inv_freq.copy_(stored)
    rot._cache = None


def _official_kwargs(cfg: dict) -> dict:
    m = cfg["model"]
    missing = [k for k in ("hidden_size", "n_heads", "n_blocks") if k not in m]
    if missing:
        raise CheckpointError(f"official RADD config.json lacks model.{', model.'.join(missing)}")
    noise = cfg.get("noise") or {}
    return dict(vocab_size=int(cfg["tokens"]), hidden_size=int(m["hidden_size"]), n_heads=int(m["n_heads"]),
                n_blocks=int(m["n_blocks"]), dropout=float(m.get("dropout", 0.0)),
                autocast_dtype=str(m.get("dtype", "float32")), length=int(m.get("length", 1024)),
                noise_schedule=str(noise.get("type", "loglinear")),
                total_noise_min=float(noise.get("sigma_min", 1e-4)),
                total_noise_max=float(noise.get("sigma_max", 20.0)))


def check_state_dict(model: nn.Module, state: dict, tolerated=OFFICIAL_TOLERATED_KEYS) -> None:
    """Strict key and shape check; raises one CheckpointError listing every problem."""
    missing, unexpected, bad = state_dict_mismatch(state_shapes(model.state_dict()), state_shapes(state), tolerated)
    shapes = [f"{k}: checkpoint {f} vs model {m}" for k, f, m in bad]
    if not (missing or unexpected or shapes):
        return
    lines = ["checkpoint does not match the RADD architecture built from its config.json:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if any("adaLN" in k or k.startswith("sigma_map") for k in unexpected):
            lines.append("  (adaLN / sigma_map weights: a time-conditioned SEDD/MDLM checkpoint, not RADD)")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
        if any(s.startswith(("vocab_embed.", "output_layer.linear.")) for s in shapes):
            lines.append(f"  (vocabulary: config tokens = {model.config.vocab_size} real tokens, so "
                         f"{model.config.vocab_size + 1} rows with the mask token)")
    raise CheckpointError("\n".join(lines))


def load_official_checkpoint(path, *, vocab_size: int | None = None, device=None, torch_dtype=None,
                             **unused) -> RADDTransformer:
    """Load ``config.json`` (nested) + ``model.safetensors`` in the official RADD format.

    ``vocab_size``: if given (e.g. the tokenizer's), must equal the checkpoint's ``tokens``.
    Unlike the official ``load_model`` no exception is swallowed."""
    path = Path(path)
    if not is_official_checkpoint(path):
        raise CheckpointError(f"{path} is not an official RADD checkpoint "
                              "(config.json with 'tokens' and a 'model' dict)")
    cfg = json.loads(_config_path(path).read_text())
    kwargs = _official_kwargs(cfg)
    if vocab_size is not None and int(vocab_size) != kwargs["vocab_size"]:
        raise CheckpointError(f"vocab_size {vocab_size} does not match the checkpoint's "
                              f"tokens = {kwargs['vocab_size']}")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (the official format stores the weights in model.safetensors)")
    model = RADDTransformer(**kwargs)
    state = _read_safetensors(weights)
    check_state_dict(model, state)
    inv_freq = state.pop("rotary_emb.inv_freq", None)
    for k in OFFICIAL_TOLERATED_KEYS:
        state.pop(k, None)
    model.load_state_dict(state, strict=True)
    if inv_freq is not None:
        _use_stored_inv_freq(model, inv_freq, weights)
    model = model.eval()
    if device is not None or torch_dtype is not None:
        model = model.to(device=device, dtype=torch_dtype)
    return model


def save_official_checkpoint(model: RADDTransformer, path, extra_config: dict | None = None) -> Path:
    """Write ``model`` in the official format (nested config.json + model.safetensors, with the
    ``rotary_emb.inv_freq`` buffer as the official module stores it), atomically."""
    c = model.config
    cfg = {"tokens": c.vocab_size,
           "model": {"hidden_size": c.hidden_size, "n_heads": c.n_heads, "n_blocks": c.n_blocks,
                     "dropout": c.dropout, "use_checkpoint": False, "dtype": c.autocast_dtype, "length": c.length,
                     "type": "ddit_wot", "cond_dim": 128},
           "noise": {"type": c.noise_schedule, "sigma_min": c.total_noise_min, "sigma_max": c.total_noise_max}}
    cfg.update(extra_config or {})
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    state["rotary_emb.inv_freq"] = model.rotary_emb.inv_freq.detach().cpu().float().contiguous()
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, target / "model.safetensors")
    write_text_atomically(target / "config.json", json.dumps(cfg, indent=2))
    return target
