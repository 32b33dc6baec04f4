"""BDIA-DDIM: the bi-directional update and its exact inverse, as pure functions.

Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via Bi-directional Integration
Approximation", ECCV 2024 (arXiv:2307.10829), §3 (BDIA-DDIM) and the official code
(``guoqiang-zhang-x/BDIA``; ``BDIAddim.py`` for sampling, ``bdia_edict_functions.py`` for the
inverse). Equation numbers of the paper body could not be checked; the formulas below are
written out in full instead.

Notation (grid indices grow with noise): a latent z_i lives at level ᾱ_i; sampling goes
z_{i+1} → z_i → z_{i-1}. With ε_i = ε̂(z_i, t_i) and x̂0_i its data prediction, the DDIM map
from level i to any level j, reusing that one evaluation, is

    D_{i→j}(z_i) = √ᾱ_j · x̂0_i + √(1-ᾱ_j) · ε_i                      (DDIM, η = 0)

BDIA replaces DDIM's one-sided step by an average of two estimates of the integral over the
time slot [t_{i+1}, t_i] (the step already taken, and a fresh backward DDIM step from z_i)
plus the usual forward step; the z_i terms cancel and the update is the explicit 3-term
recurrence

    z_{i-1} = γ·z_{i+1} − γ·D_{i→i+1}(z_i) + D_{i→i-1}(z_i)                    (BDIA-DDIM)

which is linear in (z_{i+1}, z_i, ε_i) and so solvable exactly for z_{i+1}:

    z_{i+1} = (z_{i-1} − D_{i→i-1}(z_i)) / γ + D_{i→i+1}(z_i)            (exact inverse)

The inverse needs ε evaluated at (z_i, t_i) -- the very call the forward pass makes -- so no
fixed-point iteration is involved; it divides by γ, which is why inversion wants γ near 1.
γ = 0 is DDIM. ``x0`` may be passed explicitly (e.g. after DDIM's ``clip_sample``): the maps
stay functions of z_i alone, so exactness is kept as long as both directions post-process
x̂0 identically.

Levels (ᾱ) are Python floats or float64 tensors (scalar or one per sample). All arithmetic
runs in the dtype of the latents; callers that want exact round trips pass float64 latents.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from diffkit.denoisers import to_eps_x0

__all__ = ["ddim_map", "bdia_step", "bdia_inverse_step", "bdia_coefficients", "check_gamma"]

Level = Union[float, torch.Tensor]


def check_gamma(gamma: float, *, for_inversion: bool = False) -> float:
    """γ must be a number in [0, 1] (in (0, 1] where the inverse divides by it)."""
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}") from None
    if not 0.0 <= g <= 1.0 or math.isnan(g):
        raise ValueError(f"gamma must be in [0, 1] (0 = DDIM, 1 = fully bi-directional), got {gamma!r}")
    if for_inversion and g == 0.0:
        raise ValueError("gamma must be > 0 for inversion: the exact inverse divides by gamma "
                         "(gamma = 0 is plain DDIM, which is not invertible); use gamma in [0.92, 1.0]")
    return g


def _sqrt(level: Level, like: torch.Tensor, complement: bool = False) -> Union[float, torch.Tensor]:
    """√ᾱ (or √(1-ᾱ)) computed in float64, broadcast against a batch of latents."""
    if isinstance(level, torch.Tensor):
        v = level.to(torch.float64)
        v = (1 - v if complement else v).sqrt()
        v = v.to(device=like.device, dtype=like.dtype)
        return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v
    level = float(level)
    return math.sqrt(1.0 - level if complement else level)


def ddim_map(x0: torch.Tensor, eps: torch.Tensor, alpha_cumprod_to: Level) -> torch.Tensor:
    """D_{i→j}: the deterministic DDIM step (Song et al. 2021, eq. 12, σ = 0) to level ᾱ_j,
    from the predictions (x̂0_i, ε_i) made at z_i."""
    a, s = _sqrt(alpha_cumprod_to, x0), _sqrt(alpha_cumprod_to, eps, complement=True)
    if isinstance(a, float):  # scalars as kernel arguments: no device copies, two kernels
        return torch.add(x0 * a, eps, alpha=s)
    return a * x0 + s * eps


def _x0(z: torch.Tensor, eps: torch.Tensor, alpha_cumprod: Level, x0: Optional[torch.Tensor]) -> torch.Tensor:
    if x0 is not None:
        return x0
    return to_eps_x0(eps, z, _sqrt(alpha_cumprod, z), _sqrt(alpha_cumprod, z, complement=True), "epsilon")[1]


def _scalar_levels(*levels) -> bool:
    return not any(isinstance(v, torch.Tensor) for v in levels)


def bdia_step(z_next: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alpha_cumprod_next: Level,
              alpha_cumprod: Level, alpha_cumprod_prev: Level, gamma: float,
              x0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One BDIA-DDIM sampling step: z_{i-1} = γ·(z_{i+1} − D_{i→i+1}(z_i)) + D_{i→i-1}(z_i).

    Args:
        z_next: z_{i+1}, the state one level noisier than ``z`` (ᾱ = ``alpha_cumprod_next``).
        z: z_i, where the model was evaluated (ᾱ = ``alpha_cumprod``).
        eps: ε̂(z_i, t_i).
        alpha_cumprod_prev: ᾱ of the target level i-1 (less noisy).
        gamma: γ in [0, 1]; 0 is DDIM.
        x0: x̂0_i if already known (post-processed or from a non-ε model); else (z_i − √(1-ᾱ_i)ε_i)/√ᾱ_i.

    With scalar levels the two D-maps are folded into one combination,
    γ·z_{i+1} + (√ᾱ_{i-1} − γ√ᾱ_{i+1})·x̂0_i + (√(1-ᾱ_{i-1}) − γ√(1-ᾱ_{i+1}))·ε_i (three kernels).
    """
    x0 = _x0(z, eps, alpha_cumprod, x0)
    if gamma == 0:
        return ddim_map(x0, eps, alpha_cumprod_prev)
    if _scalar_levels(alpha_cumprod_next, alpha_cumprod_prev):
        a_n, s_n = math.sqrt(alpha_cumprod_next), math.sqrt(1 - alpha_cumprod_next)
        a_p, s_p = math.sqrt(alpha_cumprod_prev), math.sqrt(1 - alpha_cumprod_prev)
        out = z_next * gamma
        out.add_(x0, alpha=a_p - gamma * a_n)
        return out.add_(eps, alpha=s_p - gamma * s_n)
    backward = ddim_map(x0, eps, alpha_cumprod_next)
    return gamma * (z_next - backward) + ddim_map(x0, eps, alpha_cumprod_prev)


def bdia_inverse_step(z_prev: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alpha_cumprod_next: Level,
                      alpha_cumprod: Level, alpha_cumprod_prev: Level, gamma: float,
                      x0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The exact inverse of :func:`bdia_step`: z_{i+1} = (z_{i-1} − D_{i→i-1}(z_i))/γ + D_{i→i+1}(z_i).

    ``eps`` must be ε̂(z_i, t_i) -- the same evaluation :func:`bdia_step` makes at z_i -- and the
    levels and ``x0`` post-processing must be those of the forward step. Requires γ > 0.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 for the inverse step (it divides by gamma), got {gamma!r}")
    x0 = _x0(z, eps, alpha_cumprod, x0)
    if _scalar_levels(alpha_cumprod_next, alpha_cumprod_prev):
        a_n, s_n = math.sqrt(alpha_cumprod_next), math.sqrt(1 - alpha_cumprod_next)
        a_p, s_p = math.sqrt(alpha_cumprod_prev), math.sqrt(1 - alpha_cumprod_prev)
        out = z_prev / gamma
        out.add_(x0, alpha=a_n - a_p / gamma)
        return out.add_(eps, alpha=s_n - s_p / gamma)
    return (z_prev - ddim_map(x0, eps, alpha_cumprod_prev)) / gamma + ddim_map(x0, eps, alpha_cumprod_next)


def bdia_coefficients(alpha_cumprod_next: float, alpha_cumprod: float, alpha_cumprod_prev: float,
                      gamma: float) -> tuple[float, float, float]:
    """(c_next, c_z, c_eps) with z_{i-1} = c_next·z_{i+1} + c_z·z_i + c_eps·ε_i (ε-form, no x̂0 post-processing).

    The update written as the explicit linear combination the paper's abstract describes;
    a second derivation of :func:`bdia_step`, used to check it.
    """
    a_n, a, a_p = (math.sqrt(v) for v in (alpha_cumprod_next, alpha_cumprod, alpha_cumprod_prev))
    s_n, s, s_p = (math.sqrt(1 - v) for v in (alpha_cumprod_next, alpha_cumprod, alpha_cumprod_prev))
    c_z = (a_p - gamma * a_n) / a
    return gamma, c_z, (s_p - gamma * s_n) - s * c_z
