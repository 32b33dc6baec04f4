"""Forward noising processes x_t = α_t·x0 + σ_t·ε, and the probability-flow ODE.

Three processes share one small interface (``alpha(t)``, ``std(t)`` -- the noise std σ_t,
also reachable under its former name ``sigma(t)`` --, ``sigma_ve(t)``, ``t_at_std``, ``t_at_sigma_ve``,
``check_t``), so every analysis tool works on VP and VE alike:

* :class:`VEProcess` -- variance exploding, α = 1, and t *is* σ (EDM convention).
* :class:`VPLinearProcess` -- continuous VP with β(t) = β_min + (β_max-β_min)·t, t ∈ (0, 1]
  (Song et al. 2021, eq. 29): α = exp(-½∫β), σ = √(1-α²).
* :class:`DiscreteVPProcess` -- a diffusers model's own schedule (``diffkit.schedules.VPSchedule``);
  t is the (continuous) training timestep in [0, T-1], α = √ᾱ_t, σ = ``std_vp``.

Coordinates. A score ``s(x, t) = ∇_x log p_t(x)`` is always taken in the process's *own*
coordinates x: the VP latent z for VP processes (so s = -ε/std_vp for a diffusers UNet),
x itself for VE. The VE view of a VP process is x̃ = x/α with σ̃ = ``sigma_ve`` = σ/α and
s̃(x̃) = α·s(α·x̃) -- used internally by :func:`probability_flow`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from diffkit.schedules import VPSchedule

__all__ = ["VEProcess", "VPLinearProcess", "DiscreteVPProcess", "as_times", "noise",
           "log_sigma_grid", "pf_step", "probability_flow"]


def as_times(t, batch: int) -> torch.Tensor:
    """t as a float64 CPU tensor of shape (batch,) (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
    if t.ndim == 0:
        return t.expand(batch).clone()
    t = t.reshape(-1)
    if t.shape[0] == 1 and batch != 1:
        return t.expand(batch).clone()
    if t.shape[0] != batch:
        raise ValueError(f"t: expected a scalar or {batch} times (one per sample), got {t.shape[0]}")
    return t


class _Process:
    kind = "vp"
    t_min: float
    t_max: float

    def check_t(self, t, name: str = "t") -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        bad = (~torch.isfinite(t)) | (t < self.t_min - 1e-12) | (t > self.t_max + 1e-12)
        if bad.any():
            raise ValueError(f"{name}={torch.unique(t[bad]).tolist()[:4]} outside the schedule: accepted "
                             f"{self.t_min:.6g} <= {name} <= {self.t_max:.6g} ({self!r})")
        return t

    def std(self, t) -> torch.Tensor:
        """σ_t: the standard deviation of the noise in this process's own coordinates."""
        raise NotImplementedError

    def sigma_ve(self, t) -> torch.Tensor:
        """σ_ve = σ_t/α_t: the noise std in VE coordinates x/α (EDM's σ)."""
        return self.std(t) / self.alpha(t)

    def t_at_std(self, std) -> torch.Tensor:
        """The time at which the noise std :meth:`std` equals ``std``."""
        s = torch.as_tensor(std, dtype=torch.float64)
        if self.kind == "vp":
            if ((s <= 0) | (s >= 1)).any():
                raise ValueError(f"std: a VP noise std must be in (0, 1), got {s.flatten()[:4].tolist()}")
            s = s / (1 - s * s).sqrt()
        return self.t_at_sigma_ve(s)

    # the former names of std / t_at_std, kept for existing callers
    def sigma(self, t) -> torch.Tensor:
        return self.std(t)

    def t_at_sigma(self, sigma) -> torch.Tensor:
        return self.t_at_std(sigma)


class VEProcess(_Process):
    """Variance exploding: x_t = x0 + t·ε, t ∈ [sigma_min, sigma_max] (t is σ)."""

    kind = "ve"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def __repr__(self):
        return f"VEProcess(sigma_min={self.t_min:g}, sigma_max={self.t_max:g})"

    def alpha(self, t) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def std(self, t) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64).clone()

    def t_at_sigma_ve(self, sigma_ve) -> torch.Tensor:
        return self.check_t(torch.as_tensor(sigma_ve, dtype=torch.float64), "sigma")


class VPLinearProcess(_Process):
    """Continuous VP with linear β: ∫₀ᵗβ = β_min·t + ½(β_max-β_min)·t², t ∈ [t_min, 1]."""

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-7):
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def __repr__(self):
        return f"VPLinearProcess(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, t in [{self.t_min:g}, 1])"

    def _int_beta(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * self._int_beta(t))

    def std(self, t) -> torch.Tensor:
        return (-torch.expm1(-self._int_beta(t))).sqrt()  # expm1: exact at tiny t

    def sigma_ve(self, t) -> torch.Tensor:
        return torch.expm1(self._int_beta(t)).sqrt()

    def t_at_sigma_ve(self, sigma_ve) -> torch.Tensor:
        B = torch.log1p(torch.as_tensor(sigma_ve, dtype=torch.float64) ** 2)
        db = self.beta_max - self.beta_min
        t = 2 * B / (self.beta_min + (self.beta_min ** 2 + 2 * db * B).sqrt())  # stable root of the quadratic
        return self.check_t(t, "t(sigma)")


class DiscreteVPProcess(_Process):
    """A diffusers model's discrete VP schedule, with continuous t ∈ [0, T-1].

    Between training timesteps ``sigma_ve`` is interpolated linearly in log σ
    (``VPSchedule.t_to_sigma``, the convention of ``diffkit.denoisers.EpsModel``).
    """

    kind = "vp"

    def __init__(self, schedule):
        self.schedule = schedule if isinstance(schedule, VPSchedule) else VPSchedule.from_config(schedule)
        if self.schedule.zero_terminal_snr:
            raise ValueError("zero-terminal-SNR schedules have σ_ve = ∞ at t = T-1; "
                             "the analysis needs finite noise levels")
        self.t_min, self.t_max = 0.0, float(self.schedule.num_train_timesteps - 1)

    def __repr__(self):
        return f"DiscreteVPProcess(T={self.schedule.num_train_timesteps})"

    def sigma_ve(self, t) -> torch.Tensor:
        return self.schedule.t_to_sigma(torch.as_tensor(t, dtype=torch.float64))

    def alpha(self, t) -> torch.Tensor:
        return 1 / (1 + self.sigma_ve(t) ** 2).sqrt()

    def std(self, t) -> torch.Tensor:
        s = self.sigma_ve(t)
        return s / (1 + s * s).sqrt()

    def t_at_sigma_ve(self, sigma_ve) -> torch.Tensor:
        return self.schedule.sigma_to_t(torch.as_tensor(sigma_ve, dtype=torch.float64))


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def noise(process, x0: torch.Tensor, t, generator: Optional[torch.Generator] = None):
    """(x_t, ε) with x_t = α_t·x0 + σ_t·ε; ε drawn on the CPU from ``generator``."""
    t = process.check_t(as_times(t, x0.shape[0]))
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(device=x0.device, dtype=x0.dtype)
    return _bc(process.alpha(t), x0) * x0 + _bc(process.std(t), x0) * eps, eps


def log_sigma_grid(process, n_steps: int, t_start, t_end) -> torch.Tensor:
    """n_steps+1 times from t_start to t_end, uniform in log σ_ve (float64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    t_start, t_end = process.check_t(t_start, "t_start"), process.check_t(t_end, "t_end")
    lo, hi = math.log(float(process.sigma_ve(t_start))), math.log(float(process.sigma_ve(t_end)))
    s = torch.linspace(lo, hi, n_steps + 1, dtype=torch.float64).exp()
    t = process.t_at_sigma_ve(s)
    t[0], t[-1] = t_start, t_end  # exact end points
    return t


def pf_step(score_fn: Callable, process, xt: torch.Tensor, t_from, t_to, solver: str = "heun") -> torch.Tensor:
    """One probability-flow step in VE coordinates x̃ = x/α, from t_from to t_to (scalars).

    dx̃/d log σ̃ = -σ̃²·s̃(x̃) with s̃(x̃) = α·s(α·x̃, t) (Song et al. 2021 eq. 13 with σ̃ as time).
    """
    B = xt.shape[0]
    t_from, t_to = torch.as_tensor(t_from, dtype=torch.float64), torch.as_tensor(t_to, dtype=torch.float64)

    def drift(z, t):
        a, s = float(process.alpha(t)), float(process.sigma_ve(t))
        return -(s * s * a) * score_fn(a * z, t.expand(B).clone())

    h = math.log(float(process.sigma_ve(t_to))) - math.log(float(process.sigma_ve(t_from)))
    d1 = drift(xt, t_from)
    if solver == "euler":
        return xt + h * d1
    return xt + 0.5 * h * (d1 + drift(xt + h * d1, t_to))


def probability_flow(score_fn: Callable, process, x: torch.Tensor, t_grid, solver: str = "heun",
                     callback: Optional[Callable] = None) -> torch.Tensor:
    """Integrate the probability-flow ODE from t_grid[0] to t_grid[-1] (forward passes only).

    Integrated in VE coordinates with log σ̃ as the time variable (:func:`pf_step`);
    ``solver``: "heun" (2nd order, Karras et al. 2022 Alg. 1 without churn) or "euler".
    The score and ``x`` are in the process's own coordinates (VP latent for VP processes);
    ``callback(i, t, x)`` is called after every step (i = 1..n). Use
    :func:`log_sigma_grid` for a grid uniform in log σ.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    t_grid = process.check_t(torch.as_tensor(t_grid, dtype=torch.float64).reshape(-1), "t_grid")
    if t_grid.numel() < 2:
        raise ValueError("t_grid needs at least 2 times (start and end)")
    alphas = process.alpha(t_grid)
    xt = x / float(alphas[0])
    for i in range(t_grid.numel() - 1):
        xt = pf_step(score_fn, process, xt, t_grid[i], t_grid[i + 1], solver)
        if callback is not None:
            callback(i + 1, t_grid[i + 1], xt * float(alphas[i + 1]))
    return xt * float(alphas[-1])
