"""EDM samplers (Karras et al. 2022, arXiv:2206.00364, Algorithms 1 and 2) in k-diffusion style,
and BDIA on top of them.

**Noise level.** σ here is EDM's noise level (σ(t) = t, scaling s(t) = 1): the state is
x̃ = x0 + σ·n. For a VP model (``diffkit.denoisers.Denoiser``) the state is x̃ = z/√ᾱ and σ is
sigma_ve = √((1−ᾱ)/ᾱ); ``sigmas`` grids, the ``sigma`` passed to the model and the callback's
``sigma``/``sigma_hat`` are all this σ.

**Contract.** Every sampler is a stateless function ``sample_X(model, x, sigmas, ...)``:

* ``model(x, sigma, **extra_args)`` is a denoiser D(x̃, σ) → x̂0, e.g.
  ``Denoiser(EpsModel(unet, scheduler_config))`` with ``extra_args={"guidance": g}``; ``sigma``
  is passed as a per-sample tensor;
* ``x`` is the state at ``sigmas[0]`` (noise already scaled: ``noise * sigmas[0]``, or
  ``noise * sqrt(sigmas[0]**2 + 1)`` for the VP prior z_T ~ N(0, I));
* ``sigmas`` is strictly decreasing and ≥ 0 (``model_sigmas``: the grid of Karras eq. 5 on the
  model's own trained range, final 0). The model is never evaluated at σ = 0.

Common options: ``dtype`` (the state's dtype, e.g. ``torch.float64`` as in EDM's own sampler;
the model still runs in its own dtype), ``callback(dict)`` before each update (keys x, i, sigma,
sigma_hat, denoised, nfe), ``disable`` (tqdm progress bar) and ``return_nfe`` (also return the
number of model evaluations). A NaN/inf model output raises
``diffkit.numerics.NonFiniteOutputError`` naming the step and σ (on accelerators checked once, at
the end of the loop, instead of synchronising every step).

**The algorithm.** For i = 0 … N−1 (the grid index here grows along the loop):
d_i = (x_i − D(x_i, σ_i))/σ_i (:func:`to_d`); the Euler increment (σ_{i+1} − σ_i)·d_i
(:func:`euler_increment`); Heun adds a corrector with d at the Euler predictor
(:func:`heun_increment`), skipped on a step onto σ = 0 (Alg. 1 lines 5–8). ``s_churn`` > 0 first
raises σ_i to σ̂_i by adding noise (Alg. 2 lines 4–6).

**BDIA** (Zhang, Lewis & Kleijn, ECCV 2024, arXiv:2307.10829) replaces ``x + increment`` by the
update (B) of :mod:`diffkit.samplers.bdia` -- its EDM form, where the math, the γ validator and
the inversion warning live. The first step has no previous state and is a plain Euler/Heun step
(as BDIA-DDIM's first step is a DDIM step); ``invert_bdia_*`` solve (B) for the previous state.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import trange

from diffkit.numerics import FiniteWatch
from diffkit.samplers.bdia import (bdia_edm_gamma_i, bdia_edm_inverse_step, bdia_edm_step, check_gamma,
                                   check_gamma_mode, warn_inversion_gamma)
from diffkit.schedules import alpha_cumprod_to_sigma_ve, karras_sigmas

__all__ = [
    "FORWARD_INCREMENTS",
    "SIGMA_SCHEDULES",
    "model_sigmas",
    "sigma_grid",
    "check_sigmas",
    "to_d",
    "euler_increment",
    "heun_increment",
    "heun_corrects",
    "edm_denoised",
    "sigma_for_model",
    "sample_euler",
    "sample_heun",
    "sample_bdia_euler",
    "sample_bdia_heun",
    "invert_bdia_euler",
    "invert_bdia_heun",
    "bdia_start_pair",
    "SAMPLERS",
]

FORWARD_INCREMENTS = ("euler", "heun")
SIGMA_SCHEDULES = ("karras", "exponential", "discrete")
# Relative slack when checking σ against the trained range (Karras endpoints are recomputed
# through x**(1/ρ) and back).
_RANGE_RTOL = 1e-6


# ----------------------------------------------------------------------------- σ grids
def sigma_grid(n: int, sigma_min: float, sigma_max: float, *, kind: str = "karras", rho: float = 7.0,
               schedule=None) -> torch.Tensor:
    """A descending float64 grid of ``n`` noise levels σ plus its final level.

    ``"karras"``: Karras et al. 2022 eq. 5 (ρ = ``rho``) on [sigma_min, sigma_max], final 0;
    ``"exponential"``: log-uniform on the same range, final 0; ``"discrete"``: sigma_ve at the DDIM
    timesteps of the VP ``schedule`` (its spacing/offset), final level its ``final_alpha_cumprod``
    (sigma_min/sigma_max unused) -- with Euler and ``gamma_mode="vp"``, BDIA on it is BDIA-DDIM.
    """
    if kind == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    if kind == "exponential":
        s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
        return torch.cat([s, s.new_zeros(1)])
    if kind == "discrete":
        if schedule is None:
            raise ValueError("sigma_grid(kind='discrete') needs the model's VPSchedule (schedule=)")
        ts = torch.from_numpy(schedule.timesteps(n).copy())
        levels = torch.cat([schedule.sigma_ve(ts),
                            alpha_cumprod_to_sigma_ve(torch.tensor([schedule.final_alpha_cumprod]))])
        return levels.to(torch.float64)
    raise ValueError(f"kind must be one of {SIGMA_SCHEDULES}, got {kind!r}")


def model_sigmas(model, n: int, rho: float = 7.0, sigma_min: float | None = None,
                 sigma_max: float | None = None) -> torch.Tensor:
    """The Karras grid (Karras et al. 2022 eq. 5; ρ = 7, final 0, float64) on the model's trained
    σ range: ``n`` steps (= non-zero levels). For a VP ``Denoiser`` the range is sigma_ve of the
    first and last training timesteps."""
    lo = sigma_min if sigma_min is not None else getattr(model, "sigma_min", None)
    hi = sigma_max if sigma_max is not None else getattr(model, "sigma_max", None)
    if lo is None or hi is None:
        raise ValueError("model has no sigma_min/sigma_max attributes: pass sigma_min= and sigma_max= explicitly")
    return sigma_grid(n, float(lo), float(hi), rho=rho)


def check_sigmas(sigmas, model=None, *, sigma_min: float | None = None, sigma_max: float | None = None) -> list[float]:
    """Validate a σ grid (1-D, ≥ 2 entries, strictly decreasing, ≥ 0, only the last may be 0,
    inside the trained range [sigma_min, sigma_max] -- by default the model's, when it declares
    one) and return it as Python floats (indexing host floats avoids a device sync per step)."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid with at least 2 noise levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("sigmas must be finite")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing (noisiest first), got {s.tolist()[:8]}...")
    if s[-1] < 0 or (s[:-1] <= 0).any():
        raise ValueError(f"sigmas must be > 0 except possibly the final level (0), got {s.tolist()[-4:]} at the end")
    lo = sigma_min if sigma_min is not None else getattr(model, "sigma_min", None)
    hi = sigma_max if sigma_max is not None else getattr(model, "sigma_max", None)
    if lo is not None and hi is not None:
        pos = s[s > 0]
        bad = pos[(pos < lo * (1 - _RANGE_RTOL)) | (pos > hi * (1 + _RANGE_RTOL))]
        if bad.numel():
            raise ValueError(
                f"sigmas {bad.tolist()[:4]} lie outside the model's trained range [{lo:.6g}, {hi:.6g}] "
                "(only a final 0 may lie below it); build the grid with model_sigmas(model, n)"
            )
    return s.tolist()


# ----------------------------------------------------------------------------- the math
def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE, (x - D(x, σ)) / σ (Karras et al. 2022, eq. 3, σ(t) = t)."""
    return (x - denoised) / sigma


def euler_increment(d: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The Euler step from σ to σ_next with derivative d (Karras et al. 2022, Alg. 1 line 5)."""
    return d * (sigma_next - sigma)


def heun_corrects(forward: str, sigma_next: float) -> bool:
    """Whether the forward step gets Heun's 2nd-order correction: ``forward == "heun"`` and not
    onto σ = 0, where the denoiser is not evaluated (Karras et al. 2022, Alg. 1 line 6)."""
    return forward == "heun" and sigma_next != 0


def heun_increment(d: torch.Tensor, d_next: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Heun's step from σ to σ_next: the mean of the derivative d at x and d_next at the Euler
    predictor x + (σ_next − σ)·d, times the step (Karras et al. 2022, Alg. 1 lines 7–8)."""
    return ((d + d_next) / 2) * (sigma_next - sigma)


def edm_denoised(model_output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                 prediction_type: str = "epsilon") -> torch.Tensor:
    """D(x, σ) = c_skip·x + c_out·F of an EDM-preconditioned network output F (Karras et al. 2022,
    Table 1: c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²); the network saw c_in·x,
    c_in = 1/√(σ²+σ_d²), at c_noise = ¼ ln σ). ``prediction_type="v_prediction"`` flips c_out's
    sign (diffusers' EDM schedulers' convention)."""
    sd = sigma_data
    c_in = 1.0 / (sigma * sigma + sd ** 2).sqrt()
    c_skip = sd * sd / (sigma * sigma + sd * sd)
    c_out = sigma * sd * c_in * (-1.0 if prediction_type == "v_prediction" else 1.0)
    return c_skip * x + c_out * model_output


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
    """Δ_fwd from (x, d = dx/dσ at σ) to σ_next: Euler, or Heun (one more model call) unless
    the step lands on σ = 0."""
    if not heun_corrects(forward, sigma_next):
        return euler_increment(d, sigma, sigma_next)
    x_2 = x + euler_increment(d, sigma, sigma_next)
    d_2 = to_d(x_2, sigma_next, D(x_2, sigma_next))
    return heun_increment(d, d_2, sigma, sigma_next)


def _prepare(x: torch.Tensor, dtype):
    return x.to(dtype) if dtype is not None else x


def _finish(out, D: _Counter, return_nfe: bool):
    D.watch.flush()  # the one device sync of a deferred check (nothing to do on CPU)
    return (out, D.nfe) if return_nfe else out


# ----------------------------------------------------------------------------- plain EDM
def _churn(x, sigma: float, n_steps: int, s_churn, s_tmin, s_tmax, s_noise, generator, sigma_cap):
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2 lines 4-6): raise σ to σ̂ = σ(1+γ) by adding
    noise (this γ is Alg. 2's churn factor, not BDIA's). σ̂ is capped at the model's trained σ_max
    (a VP model is undefined above it)."""
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
    """The sampling loop with (B): ``x_prev`` here is the state one level noisier than ``x``
    (x_{i+1} of :mod:`diffkit.samplers.bdia`, whose indices grow with noise)."""
    sig = check_sigmas(sigmas, model)
    gamma = check_gamma(gamma)
    check_gamma_mode(gamma_mode)
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
        else:  # x_prev lives at sig[i - 1], the target at sigma_next
            g = bdia_edm_gamma_i(gamma, gamma_mode, sig[i - 1], sigma_next)
            x_new = bdia_edm_step(x_prev, x, d, delta, sig[i - 1], sigma, g)
        x_prev, x = x, x_new
    return _finish((x_prev, x) if return_pair else x, D, return_nfe)


@torch.no_grad()
def sample_bdia_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, gamma: float = 0.5,
                      gamma_mode: str = "vp", x_prev=None, dtype=None, return_pair=False, return_nfe=False):
    """BDIA with Euler forward and backward increments: 1 NFE per step.

    ``gamma`` ∈ [0, 1] (0: EDM Euler, bit for bit; validated by
    :func:`diffkit.samplers.bdia.check_gamma`), ``gamma_mode`` "vp" | "constant" (how γ_i follows
    γ, :func:`diffkit.samplers.bdia.bdia_edm_gamma_i`). The defaults (0.5, "vp") were good at
    every NFE on the digits teacher (benchmarks/bdia_edm.py); a constant γ ≥ 0.5 can be unstable at
    few steps on a VP model's wide σ range (its leapfrog-like parasitic mode is not damped). For
    inversion use γ near 1 and the same γ to regenerate.

    ``x_prev``: restart the recurrence from a pair -- ``x_prev`` is the state at ``sigmas[0]`` and
    ``x`` the state at ``sigmas[1]`` (what ``invert_bdia_euler`` returns); no plain first step is
    taken. ``return_pair``: return (state at sigmas[-2], state at sigmas[-1]) instead of the last
    state, as the inverse needs.
    """
    return _sample_bdia("euler", model, x, sigmas, gamma, gamma_mode, x_prev, extra_args, callback, disable,
                        dtype, return_pair, return_nfe)


@torch.no_grad()
def sample_bdia_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, *, gamma: float = 0.5,
                     gamma_mode: str = "vp", x_prev=None, dtype=None, return_pair=False, return_nfe=False):
    """BDIA with EDM's Heun forward increment and an Euler backward one: the NFE of EDM Heun
    (2N − 1 on a grid ending in 0).

    ``gamma``, ``gamma_mode``, ``x_prev`` and ``return_pair`` as in :func:`sample_bdia_euler`
    (γ = 0: EDM Heun, bit for bit).
    """
    return _sample_bdia("heun", model, x, sigmas, gamma, gamma_mode, x_prev, extra_args, callback, disable,
                        dtype, return_pair, return_nfe)


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
    """The sampling loop run backwards: from (x_i, x_{i-1}) recover x_{i+1} by
    :func:`~diffkit.samplers.bdia.bdia_edm_inverse_step`, re-evaluating the model at (x_i, σ_i)."""
    sig = check_sigmas(sigmas, model)
    gamma = check_gamma(gamma, for_inversion=True)
    check_gamma_mode(gamma_mode)
    if len(sig) < 3:
        raise ValueError("inversion needs a grid of at least 3 levels")
    warn_inversion_gamma(gamma, len(sig) - 2, stacklevel=4)  # the user's call (past the no_grad wrapper)
    x, x_below = (_prepare(t, dtype) for t in pair)  # states at sigmas[-2], sigmas[-1]
    if x.shape != x_below.shape:
        raise ValueError(f"pair: the two states differ in shape ({tuple(x.shape)} vs {tuple(x_below.shape)})")
    x_below = x_below.to(x.dtype)
    D = _Counter(model, extra_args)
    for i in trange(len(sig) - 2, 0, -1, disable=disable):
        D.step = i
        sigma_above, sigma, sigma_below = sig[i - 1], sig[i], sig[i + 1]  # noisier, here, the sampling target
        d = to_d(x, sigma, D(x, sigma))
        delta = _increment(D, forward, x, d, sigma, sigma_below)
        g = bdia_edm_gamma_i(gamma, gamma_mode, sigma_above, sigma_below)
        x, x_below = bdia_edm_inverse_step(x_below, x, d, delta, sigma_above, sigma, g), x
    return _finish((x, x_below), D, return_nfe)


@torch.no_grad()
def invert_bdia_euler(model, pair: Sequence[torch.Tensor], sigmas, extra_args=None, disable=None, *,
                      gamma: float, gamma_mode: str = "vp", dtype=None, return_nfe=False):
    """Exact inverse of :func:`sample_bdia_euler` (solves (B) for the previous state).

    ``pair`` = (state at sigmas[-2], state at sigmas[-1]), from ``sample_bdia_euler(...,
    return_pair=True)`` or :func:`bdia_start_pair` for a clean sample; ``sigmas`` is the sampling
    grid itself and ``gamma``/``gamma_mode`` must be those used (or to be used) for sampling.
    Returns (state at sigmas[0], state at sigmas[1]); ``sample_bdia_euler(model, x1, sigmas,
    x_prev=x0, ...)`` with the same γ regenerates the pair's last state up to round-off. γ must be
    > 0; below ``diffkit.samplers.bdia.GAMMA_WARN_BELOW`` an ``InversionWarning`` is issued. Same
    NFE per step as sampling.
    """
    return _invert_bdia("euler", model, pair, sigmas, gamma, gamma_mode, extra_args, disable, dtype, return_nfe)


@torch.no_grad()
def invert_bdia_heun(model, pair: Sequence[torch.Tensor], sigmas, extra_args=None, disable=None, *,
                     gamma: float, gamma_mode: str = "vp", dtype=None, return_nfe=False):
    """Exact inverse of :func:`sample_bdia_heun`; arguments and result as in :func:`invert_bdia_euler`."""
    return _invert_bdia("heun", model, pair, sigmas, gamma, gamma_mode, extra_args, disable, dtype, return_nfe)


#: the k-diffusion-style samplers by registry name
SAMPLERS: dict[str, Callable] = {
    "edm-euler": sample_euler,
    "edm-heun": sample_heun,
    "bdia-euler": sample_bdia_euler,
    "bdia-heun": sample_bdia_heun,
}
