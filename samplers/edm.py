"""EDM-family samplers in k-diffusion style, and BDIA on top of them.

Every sampler is a stateless function ``sample_X(model, x, sigmas, ...)`` (k-diffusion's
contract):

* ``model(x, sigma, **extra_args)`` is a denoiser D(x̃, σ) -> x̂0, e.g.
  ``diffkit.denoisers.Denoiser(EpsModel(unet, scheduler_config))`` with
  ``extra_args={"guidance": g}``; ``sigma`` is passed as a per-sample tensor;
* ``x`` is the state at ``sigmas[0]`` (noise already scaled: ``noise * sigmas[0]``, or
  ``noise * sqrt(sigmas[0]**2 + 1)`` for the VP prior z_T ~ N(0, I));
* ``sigmas`` is strictly decreasing and ≥ 0 (``model_sigmas``: the EDM/Karras grid on the
  model's own trained range, final 0). The model is never evaluated at σ = 0.

Common options: ``dtype`` (the state's dtype, e.g. ``torch.float64`` as in EDM's own
sampler; the model still runs in its own dtype), ``callback(dict)`` before each update
(keys x, i, sigma, sigma_hat, denoised, nfe), ``disable`` (tqdm progress bar) and
``return_nfe`` (also return the number of model evaluations). A NaN/inf model output raises
``diffkit.numerics.NonFiniteOutputError`` naming the step and σ (on accelerators checked once,
at the end of the loop, instead of synchronising every step).

BDIA (Zhang, Lewis & Kleijn, ECCV 2024; the generic form of their README, spec §1.1) in
EDM coordinates. With grid index i growing with noise (x_{i+1} is the previous state),

    x_{i-1} = γ_i x_{i+1} + (1 - γ_i) x_i - γ_i Δ_back(x_i) + Δ_fwd(x_i)            (B)

* Δ_back = (σ_{i+1} - σ_i) d_i, d_i = (x_i - D(x_i, σ_i)) / σ_i: an Euler step back to
  the previous level with the derivative the forward step needs anyway (no extra NFE);
* Δ_fwd: an Euler step to σ_{i-1} (1 NFE) or EDM's Heun step (2 NFE; Euler onto σ = 0).

Both increments are functions of x_i alone, so (B) solves exactly for x_{i+1} given
(x_i, x_{i-1}) -- the exact inverse. γ_i is ``gamma`` (``gamma_mode="constant"``) or
γ·a_{i+1}/a_{i-1} with a = 1/√(σ²+1) (``"vp"``): BDIA-DDIM of a VP model rewritten in
x̃ = z/√ᾱ is exactly (B) with Euler increments and this γ_i (spec §10). The first step has
no previous state and is a plain Euler/Heun step (as BDIA-DDIM's first DDIM step).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import trange

from diffkit.numerics import FiniteWatch
from diffkit.schedules import karras_sigmas

__all__ = [
    "GAMMA_MODES",
    "FORWARD_INCREMENTS",
    "model_sigmas",
    "check_sigmas",
    "to_d",
    "sigma_for_model",
    "bdia_gamma_i",
    "bdia_update",
    "bdia_solve_previous",
    "sample_euler",
    "sample_heun",
    "sample_bdia_euler",
    "sample_bdia_heun",
    "invert_bdia_euler",
    "invert_bdia_heun",
    "bdia_start_pair",
]

GAMMA_MODES = ("vp", "constant")
FORWARD_INCREMENTS = ("euler", "heun")
# Relative slack when checking σ against the trained range (Karras endpoints are recomputed
# through x**(1/ρ) and back).
_RANGE_RTOL = 1e-6


# ----------------------------------------------------------------------------- σ grids
def model_sigmas(model, n: int, rho: float = 7.0, sigma_min: float | None = None,
                 sigma_max: float | None = None) -> torch.Tensor:
    """EDM/Karras grid (ρ = 7, final 0, float64) on the model's trained σ range.

    For a VP ``Denoiser`` the range is sigma_ve of the first and last training timesteps.
    ``n`` is the number of steps (= non-zero levels).
    """
    lo = sigma_min if sigma_min is not None else getattr(model, "sigma_min", None)
    hi = sigma_max if sigma_max is not None else getattr(model, "sigma_max", None)
    if lo is None or hi is None:
        raise ValueError("model has no sigma_min/sigma_max attributes: pass sigma_min= and sigma_max= explicitly")
    return karras_sigmas(n, float(lo), float(hi), rho)


def check_sigmas(sigmas, model=None) -> list[float]:
    """Validate a σ grid (1-D, ≥ 2 entries, strictly decreasing, ≥ 0, only the last may be 0,
    inside the model's trained range when it declares one) and return it as Python floats
    (indexing host floats avoids a device sync per step)."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 noise levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("sigmas must be finite")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing (noisiest first), got {s.tolist()[:8]}...")
    if s[-1] < 0 or (s[:-1] <= 0).any():
        raise ValueError(f"sigmas must be > 0 except possibly the final level (0), got {s.tolist()[-4:]} at the end")
    lo, hi = getattr(model, "sigma_min", None), getattr(model, "sigma_max", None)
    if lo is not None and hi is not None:
        pos = s[s > 0]
        bad = pos[(pos < lo * (1 - _RANGE_RTOL)) | (pos > hi * (1 + _RANGE_RTOL))]
        if bad.numel():
            raise ValueError(
                f"sigmas {bad.tolist()[:4]} lie outside the model's trained range [{lo:.6g}, {hi:.6g}] "
                "(only a final 0 may lie below it); build the grid with model_sigmas(model, n)"
            )
    return s.tolist()


def _check_gamma(gamma: float, gamma_mode: str) -> float:
    if not isinstance(gamma, (int, float)) or not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if gamma_mode not in GAMMA_MODES:
        raise ValueError(f"gamma_mode must be one of {GAMMA_MODES}, got {gamma_mode!r}")
    return float(gamma)


# ----------------------------------------------------------------------------- the math
def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE, (x - D(x, σ)) / σ (Karras et al. 2022, eq. 3, σ(t) = t)."""
    return (x - denoised) / sigma


def bdia_gamma_i(gamma: float, gamma_mode: str, sigma_prev: float, sigma_next: float) -> float:
    """γ_i used between the previous level σ_{i+1} (= ``sigma_prev``) and the target σ_{i-1}.

    ``"vp"``: γ·a_{i+1}/a_{i-1} (≤ γ), which makes (B) with Euler increments BDIA-DDIM in
    x̃ = z/a (spec §10); ``"constant"``: γ.
    """
    if gamma_mode == "constant":
        return gamma
    return gamma * math.sqrt((sigma_next * sigma_next + 1.0) / (sigma_prev * sigma_prev + 1.0))


def bdia_update(x_prev, x, d, delta_fwd, sigma_prev: float, sigma: float, gamma_i: float):
    """(B): x_{i-1} = γ_i x_{i+1} + (1-γ_i) x_i - γ_i (σ_{i+1} - σ_i) d_i + Δ_fwd.

    With γ_i = 0 this is bit-for-bit ``x + delta_fwd`` (the plain step).
    """
    return gamma_i * x_prev + (1.0 - gamma_i) * x - gamma_i * ((sigma_prev - sigma) * d) + delta_fwd


def bdia_solve_previous(x_next, x, d, delta_fwd, sigma_prev: float, sigma: float, gamma_i: float):
    """(B) solved for x_{i+1} (the exact inverse): needs γ_i > 0; it divides by γ_i, so
    round-off grows like Π 1/γ_i over the steps."""
    return (x_next - delta_fwd + gamma_i * ((sigma_prev - sigma) * d) - (1.0 - gamma_i) * x) / gamma_i


def sigma_for_model(sigma: float, dtype: torch.dtype, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """σ as the model receives it: a 0-d tensor in the state's dtype, moved by at most a few
    ulps so that it stays inside the trained range [sigma_min, sigma_max] after rounding
    (float32(σ_max) can round above σ_max, where a VP denoiser is undefined). A no-op in
    float64 for grids from ``model_sigmas``; ``BDIAEDMScheduler`` uses it too, so both feed
    the UNet identical noise levels and timesteps."""
    if sigma > 0 and sigma_max is not None and sigma > sigma_max:
        sigma = float(sigma_max)  # within check_sigmas' tolerance above the range
    if sigma > 0 and sigma_min is not None and sigma < sigma_min:
        sigma = float(sigma_min)
    s = torch.tensor(sigma, dtype=dtype)
    if sigma > 0 and sigma_max is not None and float(s) > sigma_max:
        s = torch.nextafter(s, torch.tensor(0.0, dtype=dtype))
    if sigma > 0 and sigma_min is not None and float(s) < sigma_min:
        s = torch.nextafter(s, torch.tensor(math.inf, dtype=dtype))
    return s


class _Counter:
    """Calls the denoiser with a per-sample σ tensor, counts evaluations (NFE) and watches the
    outputs: a NaN/inf output raises :class:`~diffkit.numerics.NonFiniteOutputError` naming the
    loop's ``step`` and the σ evaluated (at once on CPU; on accelerators at ``_finish``)."""

    def __init__(self, model, extra_args):
        self.model, self.extra_args, self.nfe = model, extra_args or {}, 0
        self.lo, self.hi = getattr(model, "sigma_min", None), getattr(model, "sigma_max", None)
        self.step = 0  # set by the sampling loops: the grid index of the current step
        self.watch = FiniteWatch("model output", at="sigma")

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.nfe += 1
        s = sigma_for_model(sigma, x.dtype, self.lo, self.hi).to(x.device).expand(x.shape[0])
        out = self.model(x, s, **self.extra_args).to(x.dtype)
        self.watch.update(out, self.step, sigma)
        return out


def _increment(D: _Counter, forward: str, x, d, sigma: float, sigma_next: float):
    """Δ_fwd from (x, d = dx/dσ at σ) to σ_next: Euler, or EDM's Heun (Karras Alg. 1/2) whose
    2nd-order correction is skipped onto σ = 0 (the model is not defined there)."""
    h = sigma_next - sigma
    if forward == "euler" or sigma_next == 0:
        return d * h
    x_2 = x + d * h
    d_2 = to_d(x_2, sigma_next, D(x_2, sigma_next))
    return ((d + d_2) / 2) * h


def _prepare(x: torch.Tensor, dtype):
    return x.to(dtype) if dtype is not None else x


def _finish(out, D: _Counter, return_nfe: bool):
    D.watch.flush()  # the one device sync of a deferred check (nothing to do on CPU)
    return (out, D.nfe) if return_nfe else out


# ----------------------------------------------------------------------------- plain EDM
def _churn(x, sigma: float, n_steps: int, s_churn, s_tmin, s_tmax, s_noise, generator, sigma_cap):
    """EDM's stochastic churn (Karras Alg. 2 lines 4-6): raise σ to σ̂ = σ(1+γ) by adding noise.
    σ̂ is capped at the model's trained σ_max (a VP model is undefined above it)."""
    g = min(s_churn / n_steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    if g <= 0:
        return x, sigma
    sigma_hat = sigma * (g + 1.0)
    if sigma_cap is not None:
        sigma_hat = min(sigma_hat, float(sigma_cap))
    if sigma_hat <= sigma:
        return x, sigma
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return x + eps * (s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2)), sigma_hat


def _sample_plain(forward, model, x, sigmas, extra_args, callback, disable, dtype, return_nfe,
                  s_churn, s_tmin, s_tmax, s_noise, generator):
    sig = check_sigmas(sigmas, model)
    if s_churn < 0:
        raise ValueError(f"s_churn must be >= 0, got {s_churn}")
    if s_churn > 0 and generator is None:
        raise ValueError("generator is required when s_churn > 0 (every random draw is seeded)")
    x = _prepare(x, dtype)
    D = _Counter(model, extra_args)
    n = len(sig) - 1
    for i in trange(n, disable=disable):
        D.step = i
        sigma, sigma_next = sig[i], sig[i + 1]
        x, sigma_hat = (_churn(x, sigma, n, s_churn, s_tmin, s_tmax, s_noise, generator,
                               getattr(model, "sigma_max", None)) if s_churn > 0 else (x, sigma))
        denoised = D(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised, "nfe": D.nfe})
        x = x + _increment(D, forward, x, d, sigma_hat, sigma_next)
    return _finish(x, D, return_nfe)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, dtype=None,
                 return_nfe=False, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                 generator: Optional[torch.Generator] = None):
    """EDM Euler (Karras et al. 2022, Alg. 2 with first-order steps): N steps, N NFE.
    ``s_churn > 0`` adds EDM's stochastic churn (needs ``generator``)."""
    return _sample_plain("euler", model, x, sigmas, extra_args, callback, disable, dtype, return_nfe,
                         s_churn, s_tmin, s_tmax, s_noise, generator)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, *, dtype=None,
                return_nfe=False, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                generator: Optional[torch.Generator] = None):
    """EDM Heun (Karras et al. 2022, Alg. 2): the 2nd-order correction is skipped on a step onto
    σ = 0, so N steps on a grid ending in 0 cost 2N - 1 NFE (35 for EDM's 18 steps)."""
    return _sample_plain("heun", model, x, sigmas, extra_args, callback, disable, dtype, return_nfe,
                         s_churn, s_tmin, s_tmax, s_noise, generator)


# ----------------------------------------------------------------------------- BDIA
def _sample_bdia(forward, model, x, sigmas, gamma, gamma_mode, x_prev, extra_args, callback, disable,
                 dtype, return_pair, return_nfe):
    sig = check_sigmas(sigmas, model)
    gamma = _check_gamma(gamma, gamma_mode)
    x = _prepare(x, dtype)
    start = 0
    if x_prev is not None:  # restart from a pair: x_prev at sigmas[0], x at sigmas[1]
        if x_prev.shape != x.shape:
            raise ValueError(f"x_prev has shape {tuple(x_prev.shape)}, x has {tuple(x.shape)}")
        if len(sig) < 3:
            raise ValueError("sampling from a pair (x_prev at sigmas[0], x at sigmas[1]) needs >= 3 levels")
        x_prev, start = x_prev.to(x.dtype), 1
    D = _Counter(model, extra_args)
    for i in trange(start, len(sig) - 1, disable=disable):
        D.step = i
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = D(x, sigma)
        d = to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised, "nfe": D.nfe})
        delta = _increment(D, forward, x, d, sigma, sigma_next)
        if x_prev is None:  # first step: no previous state yet -> plain step
            x_new = x + delta
        else:
            g = bdia_gamma_i(gamma, gamma_mode, sig[i - 1], sigma_next)
            x_new = bdia_update(x_prev, x, d, delta, sig[i - 1], sigma, g)
        x_prev, x = x, x_new
    return _finish((x_prev, x) if return_pair else x, D, return_nfe)


_BDIA_DOC = """
    ``gamma`` ∈ [0, 1] (0: the plain sampler, bit for bit), ``gamma_mode`` "vp" | "constant"
    (see the module docstring). The defaults (0.5, "vp") are the setting that was good at
    every NFE on the digits teacher (benchmarks/bdia_edm.py); a constant γ ≥ 0.5 can be
    unstable at few steps on a VP model's wide σ range (its leapfrog-like parasitic mode is
    not damped). For inversion use γ near 1 and the same γ to regenerate. ``x_prev``: restart the recurrence from a pair -- then
    ``x_prev`` is the state at ``sigmas[0]`` and ``x`` the state at ``sigmas[1]`` (what
    ``invert_*`` returns), and no plain first step is taken. ``return_pair``: return
    (state at sigmas[-2], state at sigmas[-1]) instead of the last state, as the inverse needs.
"""


@torch.no_grad()
def sample_bdia_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, gamma: float = 0.5,
                      gamma_mode: str = "vp", x_prev=None, dtype=None, return_pair=False, return_nfe=False):
    return _sample_bdia("euler", model, x, sigmas, gamma, gamma_mode, x_prev, extra_args, callback, disable,
                        dtype, return_pair, return_nfe)


@torch.no_grad()
def sample_bdia_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, *, gamma: float = 0.5,
                     gamma_mode: str = "vp", x_prev=None, dtype=None, return_pair=False, return_nfe=False):
    return _sample_bdia("heun", model, x, sigmas, gamma, gamma_mode, x_prev, extra_args, callback, disable,
                        dtype, return_pair, return_nfe)


sample_bdia_euler.__doc__ = "BDIA with Euler forward and backward increments: 1 NFE per step." + _BDIA_DOC
sample_bdia_heun.__doc__ = ("BDIA with EDM's Heun forward increment and an Euler backward one: the NFE of "
                            "EDM Heun (2N - 1 on a grid ending in 0)." + _BDIA_DOC)


# ----------------------------------------------------------------------------- exact inverse
@torch.no_grad()
def bdia_start_pair(model, x, sigmas, extra_args=None, *, dtype=None, return_nfe=False):
    """The pair (state at sigmas[-2], state at sigmas[-1]) for a clean sample ``x`` at sigmas[-1].

    One plain Euler *inversion* step off the end of the grid (as BDIA-DDIM's first step is one
    DDIM-inversion step off the clean latent): x_{-2} = x + (σ_{-2} - σ_{-1})·d with
    d = (x - D(x, σ_e))/σ_e evaluated at the clean sample at σ_e = σ_{-1}, or at σ_e = σ_{-2}
    when the grid ends in 0 (D is undefined at σ = 0; then d is ε̂(x, σ_{-2}), the usual
    DDIM-inversion estimate). This step is approximate; every later one is exact.
    """
    sig = check_sigmas(sigmas, model)
    x = _prepare(x, dtype)
    D = _Counter(model, extra_args)
    D.step = len(sig) - 2
    s_end, s_before = sig[-1], sig[-2]
    s_eval = s_end if s_end > 0 else s_before
    d = to_d(x, s_eval, D(x, s_eval))
    return _finish((x + d * (s_before - s_end), x), D, return_nfe)


def _invert_bdia(forward, model, pair, sigmas, gamma, gamma_mode, extra_args, disable, dtype, return_nfe):
    sig = check_sigmas(sigmas, model)
    gamma = _check_gamma(gamma, gamma_mode)
    if gamma == 0:
        raise ValueError("gamma must be > 0 for the inverse (it divides by gamma)")
    if gamma < 0.9:
        warnings.warn(f"inverting with gamma={gamma} < 0.9: the inverse amplifies round-off by 1/gamma_i per "
                      "step and the inverted states can blow up (spec §1.6); prefer gamma in [0.9, 1]",
                      stacklevel=3)
    if len(sig) < 3:
        raise ValueError("inversion needs a grid of at least 3 levels")
    x, x_next = (_prepare(t, dtype) for t in pair)  # states at sigmas[-2], sigmas[-1]
    if x.shape != x_next.shape:
        raise ValueError(f"pair: the two states differ in shape ({tuple(x.shape)} vs {tuple(x_next.shape)})")
    x_next = x_next.to(x.dtype)
    D = _Counter(model, extra_args)
    for i in trange(len(sig) - 2, 0, -1, disable=disable):
        D.step = i
        sigma_prev, sigma, sigma_next = sig[i - 1], sig[i], sig[i + 1]
        d = to_d(x, sigma, D(x, sigma))
        delta = _increment(D, forward, x, d, sigma, sigma_next)
        g = bdia_gamma_i(gamma, gamma_mode, sigma_prev, sigma_next)
        x, x_next = bdia_solve_previous(x_next, x, d, delta, sigma_prev, sigma, g), x
    return _finish((x, x_next), D, return_nfe)


_INV_DOC = """
    ``pair`` = (state at sigmas[-2], state at sigmas[-1]), from ``sample_*(..., return_pair=True)``
    or ``bdia_start_pair`` for a clean sample; ``sigmas`` is the sampling grid itself and
    ``gamma``/``gamma_mode`` must be those used (or to be used) for sampling. Returns
    (state at sigmas[0], state at sigmas[1]); ``sample_*(model, x1, sigmas, x_prev=x0, ...)``
    with the same γ regenerates the pair's last state up to round-off. γ must be > 0 (warns
    below 0.9). Same NFE per step as sampling.
"""


@torch.no_grad()
def invert_bdia_euler(model, pair: Sequence[torch.Tensor], sigmas, extra_args=None, disable=None, *,
                      gamma: float, gamma_mode: str = "vp", dtype=None, return_nfe=False):
    return _invert_bdia("euler", model, pair, sigmas, gamma, gamma_mode, extra_args, disable, dtype, return_nfe)


@torch.no_grad()
def invert_bdia_heun(model, pair: Sequence[torch.Tensor], sigmas, extra_args=None, disable=None, *,
                     gamma: float, gamma_mode: str = "vp", dtype=None, return_nfe=False):
    return _invert_bdia("heun", model, pair, sigmas, gamma, gamma_mode, extra_args, disable, dtype, return_nfe)


invert_bdia_euler.__doc__ = "Exact inverse of ``sample_bdia_euler`` (solves (B) for the previous state)." + _INV_DOC
invert_bdia_heun.__doc__ = "Exact inverse of ``sample_bdia_heun`` (solves (B) for the previous state)." + _INV_DOC

SAMPLERS: dict[str, Callable] = {
    "edm-euler": sample_euler,
    "edm-heun": sample_heun,
    "bdia-euler": sample_bdia_euler,
    "bdia-heun": sample_bdia_heun,
}
