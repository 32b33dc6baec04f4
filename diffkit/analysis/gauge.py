"""Conservative/gauge split of a score field by potential distillation.

Any field splits as s = ∇φ_t + r_t with the gauge condition ∇·(p_t r_t) = 0, i.e.
E_{p_t}[∇ψ·r_t] = 0 for every test function ψ (a weighted Helmholtz-Hodge split in
L²(p_t)). ∇φ_t minimises E_{p_t}‖∇φ - s‖², so fitting a scalar network φ by least squares
on forward-noised data recovers it; only ∇φ_t affects sampling (Horvat & Pfister 2024):
sampling is exact iff ∇φ_t = ∇log p_t.

Pipeline: :func:`make_bank` (forward-noised data x_t = α_t·x0 + σ_t·ε, their scores and ε) ->
:func:`fit_potential` (minimise E σ_t²‖∇φ(x_t, t) - s(x_t, t)‖²; the weight σ_t² only
rescales each t, so the per-t minimiser is unchanged) -> :func:`gauge_split`,
:func:`gauge_residual` (E[∇ψ_k·r] on random Fourier test functions, ≈ 0 for a gauge r) and
:func:`dsm_decomposition` (DSM(s) = DSM(∇φ) + E‖r‖² + cross, cross → 0 at the projection).

Coordinates: the process's own (VP latent and VP score s = -ε/std_vp for UNets). The
potentials take flattened x (B, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from diffkit.analysis.processes import as_times
from diffkit.analysis.score import flat

__all__ = ["QuadraticPotential", "PotentialMLP", "PotentialScore", "ScoreBank", "make_bank", "PotentialFit",
           "fit_potential", "GaugeSplit", "gauge_split", "GaugeResidual", "gauge_residual", "DSMDecomposition",
           "dsm_decomposition", "conservative_part_linear", "LocalQuadratic", "fit_local_quadratic",
           "local_conservative_part"]


# ----------------------------------------------------------------------- potentials
class QuadraticPotential(nn.Module):
    """φ(x) = -½xᵀMx + bᵀx with M symmetric (time-independent): ∇φ = -Mx + b."""

    def __init__(self, D: int, dtype=torch.float64):
        super().__init__()
        self.P = nn.Parameter(torch.zeros(D, D, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(D, dtype=dtype))

    @property
    def M(self) -> torch.Tensor:
        return 0.5 * (self.P + self.P.T)

    def forward(self, x: torch.Tensor, t=None, labels=None) -> torch.Tensor:
        return -0.5 * ((x @ self.M) * x).sum(1) + x @ self.b


class PotentialMLP(nn.Module):
    """A smooth (SiLU) scalar network φ(x, t[, class]) in energy form, for VP or VE scores in R^D.

    φ(x, t) = -‖x̃ - D_θ(x̃, σ̃)‖² / (2σ̃²) with x̃ = x/α_t, σ̃ = σ_t/α_t (``sigma_ve``) and D_θ an
    MLP denoiser with EDM preconditioning (Karras et al. 2022 eq. 7: c_skip, c_out, c_in from
    ``sigma_data``). This is the reconstruction-energy parameterisation of Salimans & Ho (2021):
    ∇φ points back to the denoiser's output, so the network learns a smooth O(1) map rather than
    an O(1/σ) field. e(t) are Fourier features of log σ̃; an optional class embedding is added.
    """

    def __init__(self, D: int, process, hidden: int = 256, depth: int = 3, num_classes: Optional[int] = None,
                 sigma_data: float = 0.5, n_freq: int = 16):
        super().__init__()
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.D, self.process, self.sigma_data = int(D), process, float(sigma_data)
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * (math.pi / 8))
        emb = 2 * n_freq
        self.embed = nn.Embedding(num_classes, emb) if num_classes else None
        layers, width = [], D + emb
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, D))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, dtype = x.shape[0], x.dtype
        t = as_times(t, B)
        x = x.to(self.net[0].weight.dtype)
        a = self.process.alpha(t).to(x).reshape(B, 1)
        st = self.process.sigma_ve(t).to(x).reshape(B, 1)
        sd2 = self.sigma_data ** 2
        c_in = 1 / (st * st + sd2).sqrt()
        c_skip, c_out = sd2 * c_in * c_in, st * self.sigma_data * c_in
        ang = st.log() * self.freqs.to(x)
        e = torch.cat([ang.sin(), ang.cos()], 1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("labels are required for a class-conditional PotentialMLP")
            e = e + self.embed(torch.as_tensor(labels, device=x.device).reshape(-1).expand(B)).to(x)
        xt = x / a
        den = c_skip * xt + c_out * self.net(torch.cat([c_in * xt, e], 1))
        return (-((xt - den) ** 2).sum(1) / (2 * st.reshape(B) ** 2)).to(dtype)


class PotentialScore:
    """∇_x φ as a score function s(x, t) (input shape kept). Differentiable: when x requires
    grad (e.g. inside :func:`~.jacobian.jacobian`) the graph is kept, so J = Hessian of φ."""

    def __init__(self, potential: nn.Module, label: Optional[int] = None, create_graph: bool = False):
        self.potential, self.label, self.create_graph = potential, label, create_graph

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        B = x.shape[0]
        labels = None if self.label is None else torch.full((B,), int(self.label), dtype=torch.long)
        return _grad_phi(self.potential, x.reshape(B, -1), t, labels,
                         self.create_graph or x.requires_grad).reshape(x.shape)


def _grad_phi(potential, xf, t, labels, create_graph: bool) -> torch.Tensor:
    with torch.enable_grad():
        xg = xf if xf.requires_grad else xf.detach().requires_grad_(True)
        phi = potential(xg, as_times(t, xf.shape[0]), labels)
        (g,) = torch.autograd.grad(phi.sum(), xg, create_graph=create_graph)
    return g


# ----------------------------------------------------------------------- data bank
@dataclass
class ScoreBank:
    """Forward-noised samples x_t = α_t·x0 + σ_t·ε (flattened), their times, scores and ε."""

    x: torch.Tensor  # (N, D)
    t: torch.Tensor  # (N,) float64
    score: torch.Tensor  # (N, D)
    eps: torch.Tensor  # (N, D)
    process: object
    labels: Optional[torch.Tensor] = None  # (N,) long

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def std(self) -> torch.Tensor:
        """The noise std σ_t of each sample."""
        return self.process.std(self.t).to(self.x)

    @property
    def sigma(self) -> torch.Tensor:  # the former name of std
        return self.std

    def subset(self, idx) -> "ScoreBank":
        return ScoreBank(self.x[idx], self.t[idx], self.score[idx], self.eps[idx], self.process,
                         None if self.labels is None else self.labels[idx])

    @staticmethod
    def cat(banks: Sequence["ScoreBank"]) -> "ScoreBank":
        if not banks:
            raise ValueError("banks: need at least one ScoreBank")
        labels = None
        if any(b.labels is not None for b in banks):
            if not all(b.labels is not None for b in banks):
                raise ValueError("either every bank has labels or none")
            labels = torch.cat([b.labels for b in banks])
        cat = lambda name: torch.cat([getattr(b, name) for b in banks])  # noqa: E731
        return ScoreBank(cat("x"), cat("t"), cat("score"), cat("eps"), banks[0].process, labels)


@torch.no_grad()
def make_bank(score_fn: Callable, process, x0: torch.Tensor, t_values, n_noise: int = 1,
              generator: Optional[torch.Generator] = None, label: Optional[int] = None,
              max_batch: int = 1024) -> ScoreBank:
    """Noise every datum ``n_noise`` times at times drawn uniformly from ``t_values`` and record the scores."""
    t_values = process.check_t(torch.as_tensor(t_values, dtype=torch.float64).reshape(-1), "t_values")
    if t_values.numel() == 0 or n_noise < 1:
        raise ValueError("need at least one time in t_values and n_noise >= 1")
    N, D = x0.shape[0], x0[0].numel()
    f = flat(score_fn, x0.shape[1:])
    xf = x0.reshape(N, D).repeat(n_noise, 1)
    n = xf.shape[0]
    t = t_values[torch.randint(0, t_values.numel(), (n,), generator=generator)]
    eps = torch.randn(n, D, generator=generator, dtype=torch.float64).to(xf)
    a, s = process.alpha(t).to(xf).reshape(n, 1), process.std(t).to(xf).reshape(n, 1)
    x = a * xf + s * eps
    scores = torch.cat([f(x[i:i + max_batch], t[i:i + max_batch]) for i in range(0, n, max_batch)])
    labels = None if label is None else torch.full((n,), int(label), dtype=torch.long)
    return ScoreBank(x, t, scores.detach(), eps, process, labels)


# ----------------------------------------------------------------------- fitting
@dataclass
class PotentialFit:
    potential: nn.Module
    history: list = field(default_factory=list)  # weighted loss per step (Adam) / iteration (L-BFGS)

    @property
    def final_loss(self) -> float:
        return self.history[-1] if self.history else float("nan")


def _weighted_loss(potential, bank: ScoreBank, idx=None) -> torch.Tensor:
    b = bank if idx is None else bank.subset(idx)
    g = _grad_phi(potential, b.x, b.t, b.labels, create_graph=True)
    return (b.std[:, None] ** 2 * (g - b.score) ** 2).sum(1).mean()


def fit_potential(bank: ScoreBank, potential: nn.Module, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
                  optimizer: str = "adam", generator: Optional[torch.Generator] = None) -> PotentialFit:
    """Fit φ by minimising the weighted least squares E σ_t²‖∇φ(x_t, t) - s(x_t, t)‖² over the bank.

    ``optimizer="adam"``: minibatches of ``batch_size`` drawn from ``generator``, cosine-decayed
    lr; ``"lbfgs"``: full batch, strong-Wolfe line search, ``steps`` iterations (exact for
    potentials linear in their parameters, e.g. :class:`QuadraticPotential`).
    """
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    hist = []
    params = [p for p in potential.parameters() if p.requires_grad]
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, tolerance_grad=1e-14, tolerance_change=1e-16,
                                history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = _weighted_loss(potential, bank)
            loss.backward()
            hist.append(float(loss.detach()))
            return loss

        opt.step(closure)
        return PotentialFit(potential, hist)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = len(bank)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        loss = _weighted_loss(potential, bank, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hist.append(float(loss.detach()))
    return PotentialFit(potential, hist)


# ----------------------------------------------------------------------- diagnostics
@dataclass
class GaugeSplit:
    grad_phi: torch.Tensor  # conservative part ∇φ, shape of x
    r: torch.Tensor  # gauge part s - ∇φ


def gauge_split(score_fn: Callable, grad_phi_fn: Callable, x: torch.Tensor, t) -> GaugeSplit:
    """s = ∇φ + r at x (e.g. ``grad_phi_fn = PotentialScore(fit.potential)``)."""
    with torch.no_grad():
        s = flat(score_fn, x.shape[1:])(x.reshape(x.shape[0], -1), t).reshape(x.shape)
    g = flat(grad_phi_fn, x.shape[1:])(x.reshape(x.shape[0], -1), t).reshape(x.shape).detach()
    return GaugeSplit(g, s - g)


@dataclass
class GaugeResidual:
    value: torch.Tensor  # E[∇ψ_k·r], (n_test,)
    stderr: torch.Tensor  # Monte Carlo standard error, (n_test,)
    rms: torch.Tensor  # √E[(∇ψ_k·r)²]: the scale to compare |value| with

    @property
    def z(self) -> torch.Tensor:
        """value / stderr: ~N(0, 1) for a gauge r."""
        return self.value / self.stderr


def gauge_residual(r: torch.Tensor, x: torch.Tensor, n_test: int = 16, freq_scale: Optional[float] = None,
                   generator: Optional[torch.Generator] = None) -> GaugeResidual:
    """Weak gauge condition E_{p_t}[∇ψ_k·r] on random Fourier test functions ψ_k = cos(ω_k·x + b_k).

    ``x`` must be samples of p_t and ``r`` the field at them (same shape). ω_k ~ N(0, freq_scale²·I)
    (default 1/std of x's coordinates), b_k ~ U(0, 2π). ∇ψ_k·r = -sin(ω_k·x + b_k)·(ω_k·r).
    """
    if r.shape != x.shape:
        raise ValueError(f"r and x must have the same shape, got {tuple(r.shape)} and {tuple(x.shape)}")
    N = x.shape[0]
    if N < 2 or n_test < 1:
        raise ValueError(f"need at least 2 samples and n_test >= 1, got {N} samples, n_test={n_test}")
    xf, rf = x.reshape(N, -1).to(torch.float64), r.reshape(N, -1).to(torch.float64)
    D = xf.shape[1]
    scale = float(freq_scale) if freq_scale is not None else float(1 / xf.std().clamp_min(1e-12))
    omega = torch.randn(n_test, D, generator=generator, dtype=torch.float64) * scale
    b = torch.rand(n_test, generator=generator, dtype=torch.float64) * (2 * math.pi)
    terms = -torch.sin(xf @ omega.T + b) * (rf @ omega.T)  # (N, n_test)
    return GaugeResidual(terms.mean(0), terms.std(0) / N ** 0.5, (terms ** 2).mean(0).sqrt())


@dataclass
class DSMDecomposition:
    """σ²-weighted DSM losses on a bank: ``dsm_score = dsm_conservative + gauge_energy + cross``
    exactly; ``cross`` = 2E[σ²r·(∇φ + ε/σ)] → 0 when ∇φ is the L²(p_t) projection (then
    DSM(s) - DSM(∇φ) = E‖r‖²: DSM penalises the gauge part that sampling ignores)."""

    dsm_score: float  # E‖σ·s + ε‖²
    dsm_conservative: float  # E‖σ·∇φ + ε‖²
    gauge_energy: float  # E σ²‖r‖²
    cross: float


@torch.no_grad()
def dsm_decomposition(bank: ScoreBank, potential: nn.Module, max_batch: int = 4096) -> DSMDecomposition:
    g = torch.cat([_grad_phi(potential, bank.x[i:i + max_batch], bank.t[i:i + max_batch],
                             None if bank.labels is None else bank.labels[i:i + max_batch], False)
                   for i in range(0, len(bank), max_batch)]).detach()
    s = bank.std[:, None].to(torch.float64)
    eps, sc, g = bank.eps.to(torch.float64), bank.score.to(torch.float64), g.to(torch.float64)
    r = sc - g
    return DSMDecomposition(float(((s * sc + eps) ** 2).sum(1).mean()), float(((s * g + eps) ** 2).sum(1).mean()),
                            float(((s * r) ** 2).sum(1).mean()), float((2 * (s * r) * (s * g + eps)).sum(1).mean()))


# ----------------------------------------------------------------------- local split
def conservative_part_linear(B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """M with -Mx the L²(N(0, C)) projection of the field -Bx onto gradients.

    Solves the Lyapunov equation MC + CM = BC + CBᵀ in C's eigenbasis: the weighted split of a
    linear field under a Gaussian (not the symmetric part of B unless C ∝ I).
    """
    evals, Q = torch.linalg.eigh(C)
    rhs = Q.T @ (B @ C + C @ B.T) @ Q
    return Q @ (rhs / (evals[:, None] + evals[None, :])) @ Q.T


@dataclass
class LocalQuadratic:
    """The local conservative part -M(x - c) + b (M symmetric) of a field around a centre c,
    with the affine least-squares fit G(x - c) + b it was projected from. Callable as a score."""

    center: torch.Tensor  # (D,)
    M: torch.Tensor  # (D, D) symmetric: -M is the Hessian of the local potential
    b: torch.Tensor  # (D,)
    G: torch.Tensor  # (D, D) affine fit of the field (its Jacobian estimate)
    cov: torch.Tensor  # (D, D) covariance of the points (the weighting of the projection)
    residual: float  # mean ‖s - (G(x-c) + b)‖² / mean ‖s - mean s‖² (nonlinearity within the ball)

    def __call__(self, x: torch.Tensor, t=None) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1)
        c, M, b = self.center.to(xf), self.M.to(xf), self.b.to(xf)
        return (-(xf - c) @ M + b).reshape(x.shape)


def fit_local_quadratic(points: torch.Tensor, scores: torch.Tensor) -> LocalQuadratic:
    """Least-squares projection of sampled field values onto gradients of quadratic potentials.

    Minimises Σ‖-M(x_i - c) + b - s_i‖² over symmetric M and b (c = mean of the points): first the
    affine fit s ≈ G(x - c) + b, then M from the Lyapunov equation MĈ + ĈM = -(GĈ + ĈGᵀ) with the
    points' covariance Ĉ (-sym(G) when Ĉ ∝ I). Needs n >= D + 1 points.
    """
    pts = points.reshape(points.shape[0], -1).to(torch.float64)
    sc = scores.reshape(scores.shape[0], -1).to(torch.float64)
    n, D = pts.shape
    if sc.shape != pts.shape:
        raise ValueError(f"points and scores must have the same shape, got {tuple(pts.shape)} and {tuple(sc.shape)}")
    if n < D + 1:
        raise ValueError(f"a local quadratic fit in D={D} needs at least D + 1 = {D + 1} points, got {n}")
    c = pts.mean(0)
    u = pts - c
    b = sc.mean(0)
    Gt = torch.linalg.lstsq(u, sc - b).solution  # (D, D): s - b ≈ u @ Gt, G = Gtᵀ
    G = Gt.T
    resid = float(((sc - b - u @ Gt) ** 2).sum(1).mean() / ((sc - b) ** 2).sum(1).mean().clamp_min(1e-300))
    cov = u.T @ u / n
    M = conservative_part_linear(-G, cov)
    return LocalQuadratic(c, 0.5 * (M + M.T), b, G, cov, resid)


@torch.no_grad()
def local_conservative_part(score_fn: Callable, center: torch.Tensor, t, radius: float, n: Optional[int] = None,
                            generator: Optional[torch.Generator] = None) -> LocalQuadratic:
    """:func:`fit_local_quadratic` on n points c + radius·z (z ~ N(0, I); default n = 4·D) around one
    centre c (a single sample, any shape).

    The conservative part of the field in L² of that Gaussian ball: the measure the normal-bundle
    estimator integrates over when radius = σ_t0 and c = α_t0·x0.
    """
    D = center.numel()
    n = 4 * D if n is None else int(n)
    z = torch.randn(n, D, generator=generator, dtype=torch.float64).to(center.dtype)
    pts = center.reshape(1, D) + radius * z
    f = flat(score_fn, center.shape)
    return fit_local_quadratic(pts, f(pts, as_times(t, n)))
