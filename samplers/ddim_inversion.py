"""DDIM inversion (the inexact baseline): diffusers' ``DDIMInverseScheduler`` as is, then DDIM.

Inversion runs ``DDIMInverseScheduler.from_config(model's scheduler config)`` over its
ascending grid; each ``step(ε, t, z)`` moves z from level t − T//N to level t and, following
the convention of diffusers' inversion pipelines (prompt-to-prompt, PR #5145), the model is
evaluated at the *less noisy* latent with the *target* label t. This approximates ε(z_t, t)
by ε(z_{t−Δ}, t), which is why the round trip is not exact (spec §5.2). ``strength`` keeps
the first n = int(steps·strength) inverse steps, the mirror of img2img's window.

Regeneration runs ``DDIMScheduler`` (same config) over the last n of its ``steps`` timesteps
from the inverted latent. NFE: n each way. The scheduler arithmetic runs in the state's dtype
(diffusers' float32 ᾱ table); the model sees the state cast to its own dtype
(:class:`diffkit.denoisers.EpsModel`), as in BDIA's loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from diffkit.denoisers import EpsModel

from .inversion import _guidance, inversion_window

__all__ = ["DDIMInversionResult", "ddim_invert", "ddim_regenerate"]


@dataclass
class DDIMInversionResult:
    latent: torch.Tensor      # z at timesteps[0]
    timesteps: list           # descending sampling window (the grid regeneration walks)
    settings: dict = field(default_factory=dict)
    clean: Optional[torch.Tensor] = None


def _config(model: EpsModel, scheduler_config):
    if scheduler_config is None:
        raise ValueError("scheduler_config is required: the model's diffusers scheduler config (pipe.scheduler.config), "
                         "from which DDIMInverseScheduler / DDIMScheduler are built")
    return dict(scheduler_config)


@torch.no_grad()
def ddim_invert(model: EpsModel, clean_latent: torch.Tensor, condition=None, steps: int = 50,
                strength: float = 1.0, guidance_scale: Optional[float] = None, scheduler_config=None,
                state_dtype: torch.dtype = torch.float64) -> DDIMInversionResult:
    """DDIM-invert ``clean_latent`` with diffusers' ``DDIMInverseScheduler`` (used unmodified)."""
    from diffusers import DDIMInverseScheduler

    if not isinstance(model, EpsModel):
        raise TypeError(f"model: expected a diffkit EpsModel, got {type(model).__name__}")
    guidance = _guidance(condition, guidance_scale)
    window = inversion_window(model.schedule, steps, strength)  # validates steps / strength
    n = len(window)
    inv = DDIMInverseScheduler.from_config(_config(model, scheduler_config))
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
                "guidance_scale": float(guidance.scale), "nfe": n, "state_dtype": str(state_dtype).replace("torch.", "")}
    return DDIMInversionResult(z, window, settings, clean_latent.detach().to(torch.float64).clone())


@torch.no_grad()
def ddim_regenerate(model: EpsModel, result: DDIMInversionResult, condition=None,
                    guidance_scale: Optional[float] = None, scheduler_config=None) -> torch.Tensor:
    """Plain DDIM (η = 0) from the inverted latent over the same window. The guidance scale is
    ``guidance_scale``, else the condition's own, else (a condition carrying none) the inversion's."""
    from diffusers import DDIMScheduler

    if not isinstance(result, DDIMInversionResult):
        raise TypeError(f"result: expected a DDIMInversionResult (from ddim_invert), got {type(result).__name__}")
    s = result.settings
    guidance = _guidance(condition, guidance_scale, default_scale=s["guidance_scale"])
    sch = DDIMScheduler.from_config(_config(model, scheduler_config))
    sch.set_timesteps(s["steps"])
    ts = [int(t) for t in sch.timesteps[s["steps"] - len(result.timesteps):]]
    if ts != list(result.timesteps):
        raise ValueError(f"DDIMScheduler's window {ts[:4]}… differs from the inversion's {result.timesteps[:4]}…")
    z = result.latent
    for t in ts:
        out = model.raw(z, torch.tensor(t), guidance)
        z = sch.step(out, t, z, eta=0.0, return_dict=False)[0]
    return z
