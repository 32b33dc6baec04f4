"""Absorbing (masked) discrete diffusion: schedules, transition probability ψ(t, s), the
two-stage draw and the expected-NFE law (RADD, arXiv 2406.03736; MDLM/SEDD use the same process).

Forward process: every token independently stays clean with probability e^{-σ̄(t)} and is
the mask token [M] otherwise (RADD §2.1). A reverse step t -> s leaves unmasked tokens alone
and, for each masked position, unmasks with probability ψ(t, s) to a real token v drawn from
p₀(v | unmasked part) -- the network's output (RADD eqs. D.13-D.16). Everything here is a
small pure function over floats (the schedule, evaluated in float64) or tensors (the draw).

The draw is split in two (docs/methods/radd.md explains why): a Bernoulli(ψ) per masked
position from a float64 uniform, then a categorical over *real* tokens only where a position unmasks. That is the
same distribution as the joint (V+1)-way draw, cannot emit [M], costs O(#unmasking · V)
instead of O(L · V) per step, and makes which step a token is revealed in independent of
the model -- hence the NFE law E-NFE(n, l) = n (1 - (1 - 1/n)^l) (RADD eq. 3.4 / D.31).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

__all__ = [
    "LogLinearSchedule", "GeometricSchedule", "make_schedule", "SCHEDULES", "time_grid",
    "psi_tweedie", "psi_euler", "transition_probs", "METHODS",
    "choose_unmask", "reveal_cdf", "draw_reveal_steps", "filter_logits", "unnormalised_probs", "inverse_cdf",
    "sample_categorical", "PRECISIONS",
    "expected_nfe", "reveal_probabilities", "expected_nfe_exact", "expected_forward_calls",
]

SCHEDULES = ("loglinear", "geometric")
METHODS = ("tweedie", "euler")
PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class LogLinearSchedule:
    """σ̄(t) = -log(1 - (1-ε)t): the masking probability 1 - e^{-σ̄} = (1-ε)t is linear in t
    (RADD/SEDD ``noise_lib.LogLinearNoise``; used by every released model)."""

    eps: float = 1e-3
    name = "loglinear"

    def total_noise(self, t: float) -> float:
        return -math.log1p(-(1.0 - self.eps) * t)

    def rate(self, t: float) -> float:
        """σ(t) = dσ̄/dt."""
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)

    def keep_prob(self, t: float) -> float:
        """e^{-σ̄(t)}, in closed form (no exp/log round trip)."""
        return 1.0 - (1.0 - self.eps) * t

    def mask_prob(self, t: float) -> float:
        """λ(t) = 1 - e^{-σ̄(t)}."""
        return (1.0 - self.eps) * t


@dataclass(frozen=True)
class GeometricSchedule:
    """σ̄(t) = σ̄_min^{1-t} σ̄_max^t (``noise_lib.GeometricNoise``). RADD/SEDD's config calls the
    bounds ``sigma_min`` / ``sigma_max``; they bound the *total* noise σ̄, hence the names here."""

    total_noise_min: float = 1e-4
    total_noise_max: float = 20.0
    name = "geometric"

    def total_noise(self, t: float) -> float:
        return self.total_noise_min ** (1.0 - t) * self.total_noise_max ** t

    def rate(self, t: float) -> float:
        return self.total_noise(t) * math.log(self.total_noise_max / self.total_noise_min)

    def keep_prob(self, t: float) -> float:
        return math.exp(-self.total_noise(t))

    def mask_prob(self, t: float) -> float:
        return -math.expm1(-self.total_noise(t))  # expm1: exact for small σ̄


def make_schedule(name: str = "loglinear", *, eps: float = 1e-3, total_noise_min: float = 1e-4,
                  total_noise_max: float = 20.0):
    """The schedule ``name`` (one of :data:`SCHEDULES`); ``eps`` is log-linear's ε, ``total_noise_min`` /
    ``total_noise_max`` the geometric schedule's σ̄ range (RADD/SEDD config: ``sigma_min`` / ``sigma_max``)."""
    if name == "loglinear":
        return LogLinearSchedule(eps)
    if name == "geometric":
        if not 0 < total_noise_min < total_noise_max:
            raise ValueError(f"geometric schedule needs 0 < total_noise_min < total_noise_max, got "
                             f"{total_noise_min}, {total_noise_max}")
        return GeometricSchedule(total_noise_min, total_noise_max)
    raise ValueError(f"noise_schedule must be one of {SCHEDULES}, got {name!r}")


def time_grid(num_steps: int, sampling_eps: float = 1e-5) -> list[float]:
    """The uniform grid t_0 = 1 > t_1 > ... > t_n = sampling_eps (RADD ``sampling.py``), float64."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    if not 0 < sampling_eps < 1:
        raise ValueError(f"sampling_eps must be in (0, 1), got {sampling_eps}")
    n = int(num_steps)
    dt = (1.0 - sampling_eps) / n
    return [1.0 - i * dt for i in range(n)] + [sampling_eps]


def psi_tweedie(schedule, t: float, s: float) -> float:
    """Tweedie τ-leaping: ψ = (e^{-σ̄(s)} - e^{-σ̄(t)}) / (1 - e^{-σ̄(t)})  (RADD eq. D.15)."""
    return (schedule.keep_prob(s) - schedule.keep_prob(t)) / schedule.mask_prob(t)


def psi_euler(schedule, t: float, s: float) -> float:
    """Euler: ψ = (t - s) σ(t) e^{-σ̄(t)} / (1 - e^{-σ̄(t)})  (RADD eq. D.16); may exceed 1 on coarse grids."""
    return (t - s) * schedule.rate(t) * schedule.keep_prob(t) / schedule.mask_prob(t)


def transition_probs(schedule, times: Sequence[float], method: str = "tweedie") -> list[float]:
    """ψ_i for each step t_i -> t_{i+1}, clamped to [0, 1] (Euler's ψ exceeds 1 on coarse grids); the
    last step is forced to 1 so that every remaining mask is filled without an extra network call
    (RADD's final step)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    fn = psi_tweedie if method == "tweedie" else psi_euler
    psis = [min(1.0, max(0.0, fn(schedule, t, s))) for t, s in zip(times[:-1], times[1:])]
    psis[-1] = 1.0
    return psis


# ----------------------------------------------------------------------------------------------
# The two-stage draw
# ----------------------------------------------------------------------------------------------

def choose_unmask(masked: torch.Tensor, psi: float, u: torch.Tensor) -> torch.Tensor:
    """Stage 1: a masked position unmasks iff u < ψ, u ~ U[0, 1) in float64 (P(stay) = 1 - ψ, eq. D.13).
    With ψ = 1 every masked position unmasks (u < 1 always)."""
    return masked & (u < psi)


def reveal_cdf(psis: Sequence[float]) -> torch.Tensor:
    """F_i = P(a position masked at t = 1 is revealed at step <= i) = 1 - Π_{j<=i} (1 - ψ_j), float64
    (F_{n-1} = 1: the last step reveals everything)."""
    alive, out = 1.0, []
    for p in psis:
        alive *= 1.0 - p
        out.append(1.0 - alive)
    return torch.tensor(out, dtype=torch.float64)


def draw_reveal_steps(psis: Sequence[float], u: torch.Tensor) -> torch.Tensor:
    """All stage-1 draws of a run at once: the step at which each masked position is revealed.

    The Bernoulli(ψ_i) choices of one position in successive steps are independent of the model
    and of every other position, so its reveal step is a single draw from q_i = ψ_i Π_{j<i}(1-ψ_j)
    -- here by inverse CDF from one float64 uniform ``u``. Same law as drawing step by step, and a
    sampler then only has to visit the steps in which something is revealed."""
    F = reveal_cdf(psis).to(u.device)
    return torch.searchsorted(F, u.to(torch.float64), right=True).clamp_(max=len(psis) - 1)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on logits over real tokens only ([K, V]).

    Removed entries become -inf. top-p keeps the smallest set of most likely tokens whose
    mass reaches ``top_p`` (always at least the most likely one). ``temperature=0`` is handled
    by the caller (greedy)."""
    if temperature != 1.0:
        logits = logits / temperature
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop = mass_before >= top_p
        drop[..., 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return logits


def unnormalised_probs(logits: torch.Tensor) -> torch.Tensor:
    """exp(logits - max) in float64: proportional to softmax(logits), without the normalising pass."""
    x = logits.to(torch.float64)
    return torch.exp(x - x.amax(dim=-1, keepdim=True))


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index j with cdf[j-1] <= u·total < cdf[j] for non-negative ``weights`` [K, V] (float64) and
    u ~ U[0, 1) [K]. A token of weight 0 can never be returned."""
    cdf = torch.cumsum(weights, dim=-1)
    x = (u.to(device=cdf.device, dtype=torch.float64) * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, x, right=True).squeeze(-1)
    over = idx >= weights.shape[-1]
    if over.any():  # u·total rounded up to the total: take the last token with positive weight
        last = weights.shape[-1] - 1 - torch.argmax((weights[over].flip(-1) > 0).to(torch.uint8), dim=-1)
        idx[over] = last
    return idx


def sample_categorical(logits: torch.Tensor, *, u: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None, precision: str = "float64") -> torch.Tensor:
    """Stage 2: one draw per row of ``logits`` ([K, V], real tokens only, -inf = excluded).

    ``precision="float64"``: inverse CDF in float64 with one uniform per row (``u``: [K]) -- exact
    up to float64 rounding, and a token of probability 0 (filtered, or underflowed) can never be
    drawn. ``precision="float32"``: Gumbel-max with float32 uniforms (``u``: [K, V]), the regime of
    the public RADD/MDLM code; it caps the Gumbel noise at ≈16.6 and so sharpens the distribution
    (Zheng et al. 2409.02908 §5). Offered to reproduce that regime, not as a default.
    Without ``u`` the uniforms come from ``generator``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float64":
        if u is None:
            u = torch.rand(logits.shape[:-1], generator=generator, dtype=torch.float64)
        return inverse_cdf(unnormalised_probs(logits), u)
    if u is None:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
    u = u.to(device=logits.device, dtype=torch.float32)
    return torch.argmax(logits.float() - torch.log(-torch.log(u + 1e-10) + 1e-10), dim=-1)


# ----------------------------------------------------------------------------------------------
# The NFE law
# ----------------------------------------------------------------------------------------------

def expected_nfe(num_steps: int, length: int) -> float:
    """RADD eq. 3.4 / D.31: E-NFE = n (1 - (1 - 1/n)^l) for l generated tokens on n uniform
    log-linear steps -- the expected number of intervals in which at least one token is revealed."""
    n = float(num_steps)
    return n * -math.expm1(length * math.log1p(-1.0 / n)) if n > 1 else 1.0


def reveal_probabilities(psis: Sequence[float]) -> list[float]:
    """q_i = ψ_i Π_{j<i} (1 - ψ_j): probability that a token masked at t = 1 is revealed in step i."""
    out, alive = [], 1.0
    for p in psis:
        out.append(alive * p)
        alive *= 1.0 - p
    return out


def expected_nfe_exact(psis: Sequence[float], length: int) -> float:
    """E[#steps with >= 1 reveal] = Σ_i 1 - (1 - q_i)^l for any schedule and grid (reveals of
    different tokens are independent and model-free under the two-stage draw)."""
    return sum(-math.expm1(length * math.log1p(-q)) if q < 1 else 1.0 for q in reveal_probabilities(psis))


def expected_forward_calls(psis: Sequence[float], length: int) -> float:
    """Cached network calls per sequence: the first step always evaluates, step i > 0 evaluates
    iff a token was revealed in step i - 1; a reveal in the last step needs no call.
    Log-linear: 1 + (n - 1)(1 - (1 - dt)^l), within 1 of eq. D.31's E-NFE."""
    q = reveal_probabilities(psis)[:-1]
    return 1.0 + sum(-math.expm1(length * math.log1p(-qi)) if qi < 1 else 1.0 for qi in q)
