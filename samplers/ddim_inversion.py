"""DDIM inversion (the inexact baseline): diffusers' ``DDIMInverseScheduler`` as is, then DDIM.

Inversion runs ``DDIMInverseScheduler.from_config(model's scheduler config)`` over its
ascending grid; each ``step(ε, t, z)`` moves z from level t − T//N to level t and, following
the convention of diffusers' inversion pipelines (prompt-to-prompt, PR #5145), the model is
evaluated at the *less noisy* latent with the *target* label t. This approximates ε(z_t, t)
by ε(z_{t−Δ}, t), which is why the round trip is not exact: the approximation that EDICT
(Wallace et al., arXiv:2211.12446) and BDIA (Zhang et al., arXiv:2307.10829) remove; see
docs/methods/bdia.md, "Inversion". ``strength`` keeps the first n = int(steps·strength)
inverse steps, the mirror of img2img's window.

Regeneration runs ``DDIMScheduler`` (same config) over the last n of its ``steps`` timesteps
from the inverted latent. NFE: n each way. The scheduler arithmetic runs in the state's dtype
(diffusers' float32 ᾱ table); the model sees the state cast to its own dtype
(:class:`diffkit.denoisers.EpsModel`), as in BDIA's loops. The record keeps the scheduler config,
so regeneration (from memory or from a saved record) needs only the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from diffkit.denoisers import EpsModel
from diffkit.samplers.inversion_base import (InversionRecord, check_eps_model, dtype_name, inversion_window,
                                             resolve_guidance)

__all__ = ["DDIMInversionResult", "invert", "regenerate", "OPTIONS"]

#: the options :func:`invert` takes beyond the protocol's (the method table declares them)
OPTIONS = ("state_dtype",)


@dataclass
class DDIMInversionResult(InversionRecord):
    """DDIM inversion's record: one latent at ``timesteps[0]``; ``settings["scheduler_config"]``
    is the diffusers config both schedulers are built from."""

    METHOD = "ddim-inversion"
    LATENTS = ("latent",)

    latent: torch.Tensor      # z at timesteps[0]
    timesteps: list           # descending sampling window (the grid regeneration walks)
    settings: dict = field(default_factory=dict)
    clean: Optional[torch.Tensor] = None

    @property
    def regeneration_nfe(self) -> int:
        return len(self.timesteps)


def _config(scheduler_config) -> dict:
    """The scheduler config as a plain JSON-serialisable dict (stored in the record)."""
    if scheduler_config is None:
        raise ValueError("scheduler_config is required: the model's diffusers scheduler config "
                         "(pipe.scheduler.config), "
                         "from which DDIMInverseScheduler / DDIMScheduler are built")
    return json.loads(json.dumps(dict(scheduler_config), default=lambda v: v.tolist()))


@torch.no_grad()
def invert(model: EpsModel, clean_latent: torch.Tensor, condition=None, *, steps: int = 50, strength: float = 1.0,
           guidance_scale: Optional[float] = None, extra: Optional[dict] = None, scheduler_config=None,
           state_dtype: torch.dtype = torch.float64) -> DDIMInversionResult:
    """DDIM-invert ``clean_latent`` with diffusers' ``DDIMInverseScheduler`` (used unmodified).
    ``scheduler_config``: the model's diffusers scheduler config (required; stored in the record).
    ``extra``: JSON-serialisable data stored in ``settings["extra"]``."""
    model = check_eps_model(model)
    guidance = resolve_guidance(condition, guidance_scale)
    window = inversion_window(model.schedule, steps, strength)  # validates steps / strength
    n = len(window)
    config = _config(scheduler_config)
    inv = DDIMInverseScheduler.from_config(config)
    inv.set_timesteps(steps)
    ts = [int(t) for t in inv.timesteps[:n]]
    if ts[::-1] != window:
        raise ValueError(f"DDIMInverseScheduler's grid {ts[:4]}… is not the mirror of the sampling grid "
                         f"{window[::-1][:4]}… (timestep_spacing {inv.config.timestep_spacing!r})")
    z = clean_latent.detach().to(device=model.device, dtype=state_dtype)
    for t in ts:
        out = model.raw(z, torch.tensor(t), guidance)
        z = inv.step(out, t, z, return_dict=False)[0]
    settings = {"method": "ddim-inversion", "steps": steps, "strength": float(strength),
                "guidance_scale": float(guidance.scale), "nfe": n, "state_dtype": dtype_name(state_dtype),
                "model_dtype": dtype_name(model.dtype), "scheduler_config": config, "extra": dict(extra or {})}
    return DDIMInversionResult(z, window, settings, clean_latent.detach().to(torch.float64).clone())


@torch.no_grad()
def regenerate(model: EpsModel, result: DDIMInversionResult, condition=None, *,
               guidance_scale: Optional[float] = None, scheduler_config=None) -> torch.Tensor:
    """Plain DDIM (η = 0) from the inverted latent over the same window. The guidance scale is
    ``guidance_scale``, else the condition's own, else (a condition carrying none) the inversion's.
    The scheduler is built from ``scheduler_config`` when given, else from the record's."""
    model = check_eps_model(model)
    if not isinstance(result, DDIMInversionResult):
        raise TypeError(f"result: expected a DDIMInversionResult (from ddim_inversion.invert), "
                        f"got {type(result).__name__}")
    s = result.settings
    guidance = resolve_guidance(condition, guidance_scale, default_scale=s["guidance_scale"])
    config = s.get("scheduler_config") if scheduler_config is None else scheduler_config
    sch = DDIMScheduler.from_config(_config(config))
    sch.set_timesteps(s["steps"])
    ts = [int(t) for t in sch.timesteps[s["steps"] - len(result.timesteps):]]
    if ts != list(result.timesteps):
        raise ValueError(f"DDIMScheduler's window {ts[:4]}… differs from the inversion's {result.timesteps[:4]}…")
    z = result.latent
    for t in ts:
        out = model.raw(z, torch.tensor(t), guidance)
        z = sch.step(out, t, z, eta=0.0, return_dict=False)[0]
    return z
