"""BDIA (bi-directional integration approximation): both coordinate forms, as pure functions.

Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via Bi-directional Integration
Approximation", ECCV 2024 (arXiv:2307.10829), §3, and the official code
(``guoqiang-zhang-x/BDIA``: ``BDIAddim.py`` for sampling, ``bdia_edict_functions.py`` for the
inverse). Equation numbers of the paper body could not be checked; the formulas are written
out in full instead. Grid indices grow with noise: sampling goes i+1 → i → i-1, so "next"
(z_{i+1}, σ_{i+1}) is the noisier neighbour and "prev" (z_{i-1}, σ_{i-1}) the target.

**The generic update** (§3; the official README). With Δ(t_i→t_j | z_i) an integration
increment from z_i alone,

    z_{i-1} = z_{i+1} − (1−γ)(z_{i+1} − z_i) − γ·Δ(t_i→t_{i+1} | z_i) + Δ(t_i→t_{i-1} | z_i)

-- a γ-weighted average of two estimates of the integral over [t_{i+1}, t_i] (the step already
taken, and a fresh backward step from z_i), plus the forward step. The right-hand side is
linear in z_{i+1} and everything else depends on z_i alone, so the update solves exactly for
z_{i+1}: the inverse needs the model only at (z_i, t_i), the very call the forward step makes,
and divides by γ (why inversion wants γ near 1). γ = 0 is the plain one-sided sampler.

**DDIM form** (``ddim_map``, ``bdia_step``, ``bdia_inverse_step``). Latents z_i at level ᾱ_i;
ε_i = ε̂(z_i, t_i) and x̂0_i its data prediction. The DDIM map to any level j, reusing that one
evaluation, is D_{i→j}(z_i) = √ᾱ_j·x̂0_i + √(1−ᾱ_j)·ε_i (Song et al. 2021, eq. 12, η = 0), and
Δ = D − z_i makes the z_i terms cancel:

    z_{i-1} = γ·z_{i+1} − γ·D_{i→i+1}(z_i) + D_{i→i-1}(z_i)                    (BDIA-DDIM)
    z_{i+1} = (z_{i-1} − D_{i→i-1}(z_i)) / γ + D_{i→i+1}(z_i)            (exact inverse)

``x0`` may be passed explicitly (e.g. after DDIM's ``clip_sample``): the maps stay functions of
z_i alone, so exactness holds as long as both directions post-process x̂0 identically. Levels
(ᾱ) are Python floats or float64 tensors (scalar or one per sample); the arithmetic runs in the
latents' dtype (callers that want exact round trips pass float64 latents).

**EDM form** (``bdia_edm_gamma_i``, ``bdia_edm_step``, ``bdia_edm_inverse_step``). The state
is x̃ at the EDM noise level σ (Karras et al. 2022, arXiv:2206.00364: σ(t) = t, no scaling;
for a VP model x̃ = z/√ᾱ and σ = sigma_ve = √((1−ᾱ)/ᾱ)). d_i = (x_i − D(x_i, σ_i))/σ_i is the
ODE derivative; the backward increment is the Euler step Δ_back = (σ_{i+1} − σ_i)·d_i (no extra
model call) and the forward increment Δ_fwd is an Euler or Heun step (``diffkit.samplers.edm``):

    x_{i-1} = γ_i x_{i+1} + (1 − γ_i) x_i − γ_i Δ_back(x_i) + Δ_fwd(x_i)                (B)

γ_i is γ (``gamma_mode="constant"``) or γ·a_{i+1}/a_{i-1} with a = 1/√(σ²+1) (``"vp"``): BDIA-DDIM
of a VP model, rewritten in x̃, is exactly (B) with Euler increments and this γ_i. The paper
only claims a BDIA-EDM variant; this construction is a reconstruction (docs/methods/bdia.md).

**γ** (both forms, every entrance): :func:`check_gamma` is the one validator, and
:func:`warn_inversion_gamma` the one warning (:class:`InversionWarning`, below
``GAMMA_WARN_BELOW``) for inverting with a γ whose 1/γ per step makes the inverted states grow.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Union

import numpy as np
import torch

from diffkit.denoisers import to_eps_x0

__all__ = [
    "GAMMA_MODES",
    "GAMMA_WARN_BELOW",
    "InversionWarning",
    "check_gamma",
    "check_gamma_mode",
    "warn_inversion_gamma",
    "ddim_map",
    "x0_from_eps_",
    "bdia_step",
    "bdia_weights",
    "bdia_combine",
    "bdia_inverse_step",
    "bdia_coefficients",
    "bdia_edm_gamma_i",
    "bdia_edm_step",
    "bdia_edm_inverse_step",
]

Level = Union[float, torch.Tensor]

#: how γ_i of the EDM form follows γ (see the module docstring)
GAMMA_MODES = ("vp", "constant")
#: below this γ inverting warns: the inverse divides by γ per step, and the inverted latents grow
#: like (1/γ)^n (the official editing code recommends γ ∈ [0.92, 1])
GAMMA_WARN_BELOW = 0.9


class InversionWarning(UserWarning):
    """Exact inversion is numerically at risk (γ below ``GAMMA_WARN_BELOW``, a changed model dtype)."""


# ----------------------------------------------------------------------------- γ
def _real_scalar(value) -> Optional[float]:
    """``value`` as a float if it is one real number (Python/numpy int or float, 0-d tensor or
    array of a real dtype); None for anything else (bool, str, None, complex, several values)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        if value.dtype == torch.bool or value.is_complex():
            return None
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return float(value)
    return None


def check_gamma(gamma, *, for_inversion: bool = False) -> float:
    """The one γ validator (DDIM and EDM forms, functions and schedulers): γ as a Python float.

    Accepts one real number -- a Python or numpy int/float, or a 0-d tensor/array -- in [0, 1]
    (0 = the plain sampler, 1 = fully bi-directional); with ``for_inversion`` in (0, 1], since
    the inverse divides by γ. Anything else (bool, str, None, NaN, several values) raises a
    ``ValueError`` naming ``gamma`` and the accepted range.
    """
    g = _real_scalar(gamma)
    if g is None or math.isnan(g) or not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma must be a number in [0, 1] (0 = the plain DDIM/Euler/Heun step, 1 = fully "
                         f"bi-directional; a Python or numpy number or a 0-d tensor), got {gamma!r}")
    if for_inversion and g == 0.0:
        raise ValueError("gamma must be > 0 for inversion: the exact inverse divides by gamma (gamma = 0 is the "
                         "plain sampler, which is not invertible); use gamma in [0.92, 1.0]")
    return g


def check_gamma_mode(gamma_mode: str) -> str:
    """``gamma_mode`` of the EDM form: one of ``GAMMA_MODES``."""
    if gamma_mode not in GAMMA_MODES:
        raise ValueError(f"gamma_mode must be one of {GAMMA_MODES}, got {gamma_mode!r}")
    return gamma_mode


def warn_inversion_gamma(gamma: float, steps: Optional[int] = None, *, stacklevel: int = 2) -> None:
    """Warn (:class:`InversionWarning`) when inverting with γ < ``GAMMA_WARN_BELOW``.

    Each exact inverse step divides by γ (by γ_i ≤ γ in the EDM form's "vp" mode), so the
    inverted states and their round-off can grow like (1/γ)^steps. ``steps``: the number of
    inverse steps, when known. ``stacklevel`` counts from the caller of this function.
    """
    if gamma >= GAMMA_WARN_BELOW:
        return
    if steps is None:
        growth = "grow like (1/gamma)^n over n steps"
    else:
        growth = f"grow by up to (1/gamma)^{steps} ≈ {(1 / gamma) ** steps:.3g}x"
    warnings.warn(
        f"gamma={gamma} < {GAMMA_WARN_BELOW} for inversion: each exact inverse step divides by gamma, so the "
        f"inverted latents and their round-off can {growth} (measured on a toy model at 50 steps: |z_T| ~ 1e5 at "
        "gamma=0.7, 1e12 at 0.5); use gamma in [0.92, 1.0] for inversion", InversionWarning, stacklevel=stacklevel + 1)


# ----------------------------------------------------------------------------- DDIM form
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


def x0_from_eps_(out: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alpha: Level, std: Level) -> torch.Tensor:
    """In-place form of x̂0 = (z − √(1-ᾱ)·ε)/√ᾱ (the ε-prediction branch of
    :func:`diffkit.denoisers.to_eps_x0`, Song et al. 2021 eq. 12): the same three kernels in the same
    order, so the same roundings bit for bit, written into ``out`` instead of two new temporaries.

    ``alpha``, ``std``: √ᾱ and √(1-ᾱ) (Python floats or 0-d tensors). ``out`` must not alias
    ``z`` or ``eps``; returns ``out``.
    """
    torch.mul(eps, std, out=out)
    torch.sub(z, out, out=out)
    return out.div_(alpha)


def _scalar_levels(level_a: Level, level_b: Level) -> bool:
    return not (isinstance(level_a, torch.Tensor) or isinstance(level_b, torch.Tensor))


def bdia_step(z_next: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, alpha_cumprod_next: Level,
              alpha_cumprod: Level, alpha_cumprod_prev: Level, gamma: float,
              x0: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    ``out`` (scalar levels, γ > 0): a float64 tensor to write that combination into, instead of a
    new one; it may be ``z_next`` itself, which is then overwritten.
    """
    x0 = _x0(z, eps, alpha_cumprod, x0)
    if gamma == 0:
        return ddim_map(x0, eps, alpha_cumprod_prev)
    if _scalar_levels(alpha_cumprod_next, alpha_cumprod_prev):
        return bdia_combine(z_next, x0, eps, bdia_weights(alpha_cumprod_next, alpha_cumprod_prev, gamma), out=out)
    backward = ddim_map(x0, eps, alpha_cumprod_next)
    return gamma * (z_next - backward) + ddim_map(x0, eps, alpha_cumprod_prev)


def bdia_weights(alpha_cumprod_next: float, alpha_cumprod_prev: float, gamma: float) -> tuple[float, float, float]:
    """The weights (w_next, w_x0, w_eps) of z_{i+1}, x̂0_i and ε_i in the folded BDIA-DDIM update
    z_{i-1} = γ·z_{i+1} − γ·D_{i→i+1}(z_i) + D_{i→i-1}(z_i), with D_{i→j} = √ᾱ_j·x̂0_i + √(1-ᾱ_j)·ε_i:
    (γ, √ᾱ_{i-1} − γ√ᾱ_{i+1}, √(1-ᾱ_{i-1}) − γ√(1-ᾱ_{i+1})). Python floats (kernel arguments); they
    depend on the levels and γ only, so a caller may compute them once per pair of levels."""
    a_n, s_n = math.sqrt(alpha_cumprod_next), math.sqrt(1 - alpha_cumprod_next)
    a_p, s_p = math.sqrt(alpha_cumprod_prev), math.sqrt(1 - alpha_cumprod_prev)
    return gamma, a_p - gamma * a_n, s_p - gamma * s_n


def bdia_combine(z_next: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, weights: tuple[float, float, float],
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w_next·z_{i+1} + w_x0·x̂0_i + w_eps·ε_i (``weights`` from :func:`bdia_weights`) in three
    kernels: a product, then two scaled adds (each a fused multiply-add in PyTorch's vectorised
    kernels). The kernels of :func:`bdia_step` with scalar levels, which calls this. ``out``: a
    tensor to write into instead of a new one; it may be ``z_next`` itself, which is then overwritten."""
    w_next, w_x0, w_eps = weights
    out = torch.mul(z_next, w_next, out=out) if out is not None else z_next * w_next
    out.add_(x0, alpha=w_x0)
    return out.add_(eps, alpha=w_eps)


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


# ----------------------------------------------------------------------------- EDM form
def bdia_edm_gamma_i(gamma: float, gamma_mode: str, sigma_next: float, sigma_prev: float) -> float:
    """γ_i of (B) for the step from σ_i to σ_{i-1} (= ``sigma_prev``), whose previous state
    x_{i+1} lives at σ_{i+1} (= ``sigma_next``).

    ``"vp"``: γ·a_{i+1}/a_{i-1} = γ·√((σ_{i-1}² + 1)/(σ_{i+1}² + 1)) ≤ γ, which makes (B) with
    Euler increments BDIA-DDIM in x̃ = z/a; ``"constant"``: γ.
    """
    if gamma_mode == "constant":
        return gamma
    return gamma * math.sqrt((sigma_prev * sigma_prev + 1.0) / (sigma_next * sigma_next + 1.0))


def bdia_edm_step(x_next, x, d, delta_fwd, sigma_next: float, sigma: float, gamma_i: float):
    """(B): x_{i-1} = γ_i x_{i+1} + (1 − γ_i) x_i − γ_i (σ_{i+1} − σ_i) d_i + Δ_fwd.

    ``x_next``: x_{i+1} at σ_{i+1} (= ``sigma_next``); ``x``, ``d``: x_i and its derivative at
    σ_i (= ``sigma``); ``delta_fwd``: the forward increment from x_i. With γ_i = 0 this is bit
    for bit ``x + delta_fwd`` (the plain step).
    """
    return gamma_i * x_next + (1.0 - gamma_i) * x - gamma_i * ((sigma_next - sigma) * d) + delta_fwd


def bdia_edm_inverse_step(x_prev, x, d, delta_fwd, sigma_next: float, sigma: float, gamma_i: float):
    """(B) solved for x_{i+1} (the exact inverse of :func:`bdia_edm_step`), given x_{i-1}
    (``x_prev``) and x_i. Needs γ_i > 0; it divides by γ_i, so round-off grows like Π 1/γ_i."""
    return (x_prev - delta_fwd + gamma_i * ((sigma_next - sigma) * d) - (1.0 - gamma_i) * x) / gamma_i
