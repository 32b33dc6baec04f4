"""EDICT: exact inversion with two coupled latent sequences (the baseline BDIA is compared to).

Wallace, Gokul & Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations",
CVPR 2023 (arXiv:2211.12446), eqs. (10)-(14). Written from the equations; the official code
is ``salesforce/EDICT`` (``edict_functions.py``).

State: two latents (x, y), both initialised to the same latent. One denoising step from
level t (ᾱ_t) to the next less noisy level s (ᾱ_s), with a = √(ᾱ_s/ᾱ_t) and
b = √(1-ᾱ_s) − a·√(1-ᾱ_t) (the DDIM step written as z_s = a·z_t + b·ε):

    x' = a·x + b·ε(y, t)                     (eq. 10: x moves with y's noise estimate)
    y' = a·y + b·ε(x', t)                    (eq. 11: y moves with the new x's)
    x'' = p·x' + (1-p)·y'                    (eq. 12: mixing, keeps the two close)
    y'' = p·y' + (1-p)·x''                   (eq. 13)

Each line is affine in the latent it updates, with a coefficient that depends only on the
*other* (already known) latent, so the step is solved backwards exactly, in reverse order
(eq. 14): undo the mixing (divide by p), then y = (y' − b·ε(x', t))/a, then
x = (x' − b·ε(y, t))/a. No fixed-point iteration; 2 model evaluations per step in both
directions (DDIM and BDIA need 1). ``leapfrog`` (the official default) swaps the roles of x
and y on every other step.

The mixing weight p = 0.93 is the paper's; inversion divides by p twice per step, so (like
BDIA's 1/γ) it amplifies round-off: the state is kept in float64 by default. ε may come
from an ε-, v- or x̂0-predicting model: it is converted to ε at the latent it was evaluated
on, which keeps each update affine in the latent being updated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from diffkit.conditioning import Guidance
from diffkit.denoisers import EpsModel, to_eps_x0
from diffkit.samplers.inversion_base import (InversionRecord, check_eps_model, dtype_name, inversion_window,
                                             model_input_quantum, resolve_guidance, window_levels)

__all__ = ["EDICT_MIX", "edict_coefficients", "edict_step", "edict_inverse_step", "EDICTResult", "invert",
           "regenerate", "OPTIONS"]

#: the options :func:`invert` takes beyond the protocol's (the method table declares them)
OPTIONS = ("mix", "leapfrog", "state_dtype")

#: the paper's mixing weight p
EDICT_MIX = 0.93


def edict_coefficients(alpha_cumprod_from: float, alpha_cumprod_to: float) -> tuple[float, float]:
    """(a, b) of the DDIM step z_to = a·z_from + b·ε from level ᾱ_from to ᾱ_to (EDICT eq. 10)."""
    a = math.sqrt(alpha_cumprod_to / alpha_cumprod_from)
    return a, math.sqrt(1.0 - alpha_cumprod_to) - a * math.sqrt(1.0 - alpha_cumprod_from)


def _check_mix(p: float) -> float:
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"mix (EDICT's p) must be in (0, 1], got {p!r}; the paper uses {EDICT_MIX}")
    return p


def edict_step(x, y, eps_fn, a: float, b: float, p: float = EDICT_MIX):
    """One EDICT denoising step (eqs. 10-13). ``eps_fn(z)`` is ε(z, t) at this step's level."""
    x1 = a * x + b * eps_fn(y)
    y1 = a * y + b * eps_fn(x1)
    x2 = p * x1 + (1 - p) * y1
    y2 = p * y1 + (1 - p) * x2
    return x2, y2


def edict_inverse_step(x2, y2, eps_fn, a: float, b: float, p: float = EDICT_MIX):
    """The exact inverse of :func:`edict_step` (eq. 14): (x'', y'') -> (x, y)."""
    y1 = (y2 - (1 - p) * x2) / p
    x1 = (x2 - (1 - p) * y1) / p
    y = (y1 - b * eps_fn(x1)) / a
    x = (x1 - b * eps_fn(y)) / a
    return x, y


# ---------------------------------------------------------------------- loops over a model
@dataclass
class EDICTResult(InversionRecord):
    """EDICT's record: the inverted pair (x, y) at ``timesteps[0]`` and the settings that made it."""

    METHOD = "edict"
    LATENTS = ("x", "y")

    x: torch.Tensor
    y: torch.Tensor
    timesteps: list
    settings: dict = field(default_factory=dict)
    clean: Optional[torch.Tensor] = None

    @property
    def regeneration_nfe(self) -> int:
        return 2 * len(self.timesteps)


#: the snapping grid is shifted by this fraction of a quantum. Why: EDICT (unlike BDIA) evaluates
#: the model at latents of the clean level that inversion recovers with round-off, and float32
#: images sit exactly on the midpoints of an unshifted 2^-16 grid with probability ~1/256 per
#: pixel, where round-off decides the rounding (measured: 3.5e-8 instead of 1e-15 on random data).
_GRID_SHIFT = 0.3183098861837907


def _eps_fn(model: EpsModel, t: int, guidance: Guidance, quantum: Optional[float], counter: list):
    """ε(z, t) in the state's dtype; the model sees z snapped to a grid of step ``quantum`` (see
    :func:`diffkit.samplers.inversion.model_input_quantum`: it makes ε a function of z that
    inversion and regeneration evaluate identically despite float64 round-off)."""
    tt = torch.tensor(t, dtype=torch.long)

    def fn(z):
        counter[0] += 1
        zin = z if quantum is None else (torch.round(z / quantum - _GRID_SHIFT) + _GRID_SHIFT) * quantum
        alpha, std = model.levels(tt, z)
        return to_eps_x0(model.raw(zin, tt, guidance), z, alpha, std, model.prediction_type)[0]

    return fn


def _plan(model: EpsModel, steps: int, strength: float):
    """The window (descending, as BDIA's) and the level of each point plus the clean level."""
    window = inversion_window(model.schedule, steps, strength)
    return window, window_levels(model.schedule, window)


@torch.no_grad()
def invert(model: EpsModel, clean_latent: torch.Tensor, condition=None, *, steps: int = 50, strength: float = 1.0,
           guidance_scale: Optional[float] = None, extra: Optional[dict] = None, mix: float = EDICT_MIX,
           leapfrog: bool = True, state_dtype: torch.dtype = torch.float64) -> EDICTResult:
    """Invert ``clean_latent`` with EDICT onto the top of the strength window (same grid as BDIA's
    :func:`diffkit.samplers.inversion.invert`: n = int(steps·strength) points; EDICT steps from
    each point to the next less noisy one, and from the last to the clean level, so n steps and
    2n model evaluations). ``extra``: JSON-serialisable data stored in ``settings["extra"]``."""
    model = check_eps_model(model)
    p = _check_mix(mix)
    guidance = resolve_guidance(condition, guidance_scale)
    window, ac = _plan(model, steps, strength)
    n = len(window)
    quantum = model_input_quantum(model)
    count = [0]
    z = clean_latent.detach().to(device=model.device, dtype=state_dtype)
    x, y = z.clone(), z.clone()
    for k in range(n - 1, -1, -1):  # undo the denoising step window[k] -> next level, lowest first
        a, b = edict_coefficients(ac[k], ac[k + 1])
        fn = _eps_fn(model, window[k], guidance, quantum, count)
        if leapfrog and k % 2 == 1:
            y, x = edict_inverse_step(y, x, fn, a, b, p)
        else:
            x, y = edict_inverse_step(x, y, fn, a, b, p)
    settings = {"method": "edict", "steps": steps, "strength": float(strength), "mix": p, "leapfrog": bool(leapfrog),
                "guidance_scale": float(guidance.scale), "nfe": count[0],
                "state_dtype": dtype_name(state_dtype), "model_dtype": dtype_name(model.dtype),
                "extra": dict(extra or {})}
    return EDICTResult(x, y, window, settings, clean_latent.detach().to(torch.float64).clone())


@torch.no_grad()
def regenerate(model: EpsModel, result: EDICTResult, condition=None, *,
               guidance_scale: Optional[float] = None) -> torch.Tensor:
    """Run EDICT's denoising steps from the inverted pair to the clean level; returns x (in the
    state's dtype; y agrees with it to the mixing's tolerance). The guidance scale is that of
    :func:`diffkit.samplers.inversion.regenerate`: ``guidance_scale``, else the condition's own,
    else (a condition carrying none) the inversion's."""
    model = check_eps_model(model)
    if not isinstance(result, EDICTResult):
        raise TypeError(f"result: expected an EDICTResult (from edict.invert), got {type(result).__name__}")
    s = result.settings
    guidance = resolve_guidance(condition, guidance_scale, default_scale=s["guidance_scale"])
    window, ac = _plan(model, s["steps"], s["strength"])
    if window != list(result.timesteps):
        raise ValueError(f"this model's grid {window[:4]}… differs from the inversion's {result.timesteps[:4]}…")
    quantum = model_input_quantum(model)
    count = [0]
    x, y = result.x, result.y
    for k in range(len(window)):
        a, b = edict_coefficients(ac[k], ac[k + 1])
        fn = _eps_fn(model, window[k], guidance, quantum, count)
        if s["leapfrog"] and k % 2 == 1:
            y, x = edict_step(y, x, fn, a, b, s["mix"])
        else:
            x, y = edict_step(x, y, fn, a, b, s["mix"])
    return x
