"""Choose the attention backend by probing: xformers where it really works, SDPA otherwise.

xformers wheels target one torch release; with another torch its kernels do not load and
diffusers' ``enable_xformers_memory_efficient_attention()`` raises. So diffkit never trusts
the import alone: it runs a real tiny attention op on the model's device and dtype.

Warnings (exactly these, at most once per process and reason):
* xformers absent and not requested: silent, SDPA.
* xformers installed but its import fails, or its op fails on this device/dtype, or it was
  requested but is absent: one ``UserWarning`` "xformers unusable (...); using PyTorch SDPA".
Never raises because xformers is missing or broken.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass

import torch

__all__ = ["AttentionChoice", "probe_xformers", "enable_best"]

_warned: set[str] = set()


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # "xformers" | "sdpa"
    reason: str


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"xformers unusable ({reason}); using PyTorch SDPA", UserWarning, stacklevel=3)


def probe_xformers(device="cpu", dtype=torch.float32) -> tuple[bool, str]:
    """(usable, reason): import xformers and run memory_efficient_attention on a tiny input."""
    if importlib.util.find_spec("xformers") is None:
        return False, "not installed"
    try:
        xops = importlib.import_module("xformers.ops")
    except Exception as e:  # a wheel built for another torch fails here in many ways
        return False, f"import failed: {type(e).__name__}: {e}"
    try:
        q = torch.randn(1, 4, 1, 8, device=device, dtype=dtype)
        out = xops.memory_efficient_attention(q, q, q)
        if out.shape != q.shape or not torch.isfinite(out).all():
            return False, "probe op returned a wrong result"
    except Exception as e:
        return False, f"probe op failed on {device}/{dtype}: {type(e).__name__}: {e}"
    return True, f"probe op ran on {device}/{dtype}"


def _param_device_dtype(obj):
    for mod in _modules(obj):
        for p in mod.parameters():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _modules(obj):
    if isinstance(obj, torch.nn.Module):
        return [obj]
    comps = getattr(obj, "components", None) or {}
    return [m for m in comps.values() if isinstance(m, torch.nn.Module)]


def attention_modules(obj):
    """Every diffusers ``Attention`` layer inside a model or a pipeline's components."""
    from diffusers.models.attention_processor import Attention

    return [m for mod in _modules(obj) for m in mod.modules() if isinstance(m, Attention)]


def _set_sdpa(obj) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

    for attn in attention_modules(obj):
        # only plain processors are swapped: IP-adapter/added-KV/joint processors keep their own
        if type(attn.processor) in (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor):
            attn.set_processor(AttnProcessor2_0())


def enable_best(pipe_or_model, prefer: str = "auto") -> AttentionChoice:
    """Enable xformers if it works on the model's device/dtype, else PyTorch SDPA.

    prefer: "auto" (xformers if usable), "xformers" (requested: warn if unusable) or "sdpa".
    """
    if prefer not in ("auto", "xformers", "sdpa"):
        raise ValueError(f"prefer must be 'auto', 'xformers' or 'sdpa', got {prefer!r}")
    if prefer == "sdpa":
        _set_sdpa(pipe_or_model)
        return AttentionChoice("sdpa", "requested")
    device, dtype = _param_device_dtype(pipe_or_model)
    usable, reason = probe_xformers(device, dtype)
    if usable:
        try:
            target = pipe_or_model
            if hasattr(target, "enable_xformers_memory_efficient_attention"):
                target.enable_xformers_memory_efficient_attention()
            else:
                for mod in _modules(target):
                    mod.set_use_memory_efficient_attention_xformers(True)
            return AttentionChoice("xformers", reason)
        except Exception as e:
            usable, reason = False, f"diffusers could not enable it: {type(e).__name__}: {e}"
    if reason != "not installed" or prefer == "xformers":
        _warn_once(reason)
    _set_sdpa(pipe_or_model)
    return AttentionChoice("sdpa", reason)
