"""Intrinsic-dimension (ID) estimators: three from a score field, two classical ones.

From a score field (all take the score in the process's own coordinates -- the
VP score s = -ε/std_vp for UNets -- and x0 in data coordinates):

* :func:`nb_id` -- the normal-bundle estimator (Stanczuk et al., arXiv 2212.12611): K
  perturbations x = α_t0·x0 + σ_t0·z around each datum, SVD of the K×D matrix of their
  scores; the D - k large singular values (≈ 1/σ) span the normal space, ID = D - (#above
  the largest spectral gap). The right singular vectors of the k small ones estimate the
  tangent space.
* :func:`jacobian_id` -- the same count from the singular values of the exact score
  Jacobian at α_t0·x0 (for K ≫ D the centred score matrix ≈ σ·Z·Jᵀ).
* :func:`flow_jacobian` -- singular values of the probability-flow map's Jacobian
  Y = ∂x_t/∂x_{t1} (Horvat & Pfister 2024, Fig. 2): along the manifold they saturate as
  t → 0, off it they vanish like σ_t; ID = #above the largest gap at the last time, or
  ``FlowJacobian.slope_id()`` = #values whose log-log slope against σ is below ½.

Gap rules (:func:`spectral_gap`): ``"log"`` -- the largest ratio s_i/s_{i+1} (robust to a
gauge part); ``"abs"`` -- the largest difference s_i - s_{i+1} (SB's choice).

Classical estimators on point clouds: :func:`twonn_id` (Facco et al. 2017) and
:func:`mle_id` (Levina & Bickel 2004 with MacKay & Ghahramani's averaging of inverses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diffkit.analysis.jacobian import _grad, jacobian
from diffkit.analysis.processes import pf_step
from diffkit.analysis.score import flat

__all__ = ["GAP_RULES", "spectral_gap", "NBResult", "nb_spectrum", "nb_id", "IDResult", "jacobian_id", "FlowJacobian",
           "flow_jacobian", "twonn_id", "mle_id", "principal_angles"]

GAP_RULES = ("log", "abs")


def spectral_gap(svals: torch.Tensor, rule: str = "log", floor: Optional[float] = None) -> torch.Tensor:
    """Number of singular values above the largest gap, per row of descending ``svals`` (B, m).

    ``"log"``: argmax of log s_i - log s_{i+1}; ``"abs"``: argmax of s_i - s_{i+1}. Values below
    ``floor``·s_1 (default: machine epsilon) are raised to it first, so that with ``"log"`` a single
    near-zero value (e.g. a Hessian eigenvalue crossing zero in a tangent direction) cannot
    create the largest ratio.
    """
    if rule not in GAP_RULES:
        raise ValueError(f"gap must be one of {GAP_RULES}, got {rule!r}")
    if svals.ndim != 2 or svals.shape[1] < 2:
        raise ValueError(f"svals: expected shape (B, m) with m >= 2, got {tuple(svals.shape)}")
    if floor is not None and not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1) (a fraction of the largest singular value), got {floor}")
    s = svals.to(torch.float64)
    rel = torch.finfo(svals.dtype).eps if floor is None else max(float(floor), torch.finfo(svals.dtype).eps)
    s = s.clamp_min(rel * s[:, :1].clamp_min(torch.finfo(torch.float64).tiny))
    if rule == "log":
        s = s.log()
    gaps = s[:, :-1] - s[:, 1:]
    return gaps.argmax(1) + 1


def _check_gap(gap):
    if gap not in GAP_RULES:
        raise ValueError(f"gap must be one of {GAP_RULES}, got {gap!r}")


@dataclass
class NBResult:
    id: torch.Tensor  # (B,) long
    svals: torch.Tensor  # (B, min(K, D)) descending
    vh: torch.Tensor  # (B, min(K, D), D) right singular vectors (rows)
    t0: float
    n_perturb: int
    gap: str
    points: Optional[torch.Tensor] = None  # (B, K, D) perturbed points, with keep_samples=True
    scores: Optional[torch.Tensor] = None  # (B, K, D) their scores

    def tangent_basis(self, b: int, k: Optional[int] = None) -> torch.Tensor:
        """(D, k) orthonormal basis of the estimated tangent space at point b (k = its ID by default)."""
        k = int(self.id[b]) if k is None else int(k)
        return self.vh[b, self.vh.shape[1] - k:].T


def nb_spectrum(scores: torch.Tensor, center: bool = True):
    """(singular values (B, min(K, D)), right singular vectors (B, min(K, D), D)) of score matrices (B, K, D)."""
    S = scores - scores.mean(-2, keepdim=True) if center else scores
    _, sv, vh = torch.linalg.svd(S, full_matrices=False)
    return sv, vh


@torch.no_grad()
def nb_id(score_fn: Callable, process, x0: torch.Tensor, t0, n_perturb: Optional[int] = None, center: bool = True,
          gap: str = "log", generator: Optional[torch.Generator] = None, max_batch: int = 4096,
          keep_samples: bool = False) -> NBResult:
    """Normal-bundle ID estimate at each datum x0 (B, *S).

    ``t0``: a time of ``process`` (e.g. σ_t0 ∈ {1e-3, 1e-2} for exact scores; use
    ``process.t_at_std(σ)``). ``n_perturb`` K: default 4·D (as layer6ai's estimator); at
    least D + 1 with ``center`` (D without), so the score matrix can have rank D. ``center``
    subtracts the mean score before the SVD (as the official code). VP perturbations are
    α_t0·x0 + σ_t0·z (not x0 + σ·z). ``keep_samples`` keeps the points and their scores (e.g. for
    :func:`~.gauge.fit_local_quadratic`).
    """
    _check_gap(gap)
    B, D = x0.shape[0], x0[0].numel()
    K = 4 * D if n_perturb is None else int(n_perturb)
    need = D + 1 if center else D
    if K < need:
        raise ValueError(f"n_perturb={K} is too few: the normal-bundle estimator needs n_perturb >= {need} "
                         f"(D{' + 1 with center=True' if center else ''}) score vectors; default is 4·D = {4 * D}")
    t = process.check_t(torch.as_tensor(t0, dtype=torch.float64), "t0")
    if t.ndim:
        raise ValueError(f"t0 must be a single time, got shape {tuple(t.shape)}")
    a, s = float(process.alpha(t)), float(process.std(t))
    f = flat(score_fn, x0.shape[1:])
    xf = x0.reshape(B, D)
    per = max(1, max_batch // K)
    svals, vhs, kept = [], [], []
    for i in range(0, B, per):
        xb = xf[i:i + per]
        n = xb.shape[0]
        z = torch.randn(n, K, D, generator=generator, dtype=torch.float64).to(xf)
        pts = a * xb[:, None] + s * z
        S = f(pts.reshape(n * K, D), t.expand(n * K)).reshape(n, K, D)
        sv, vh = nb_spectrum(S, center)
        svals.append(sv)
        vhs.append(vh)
        if keep_samples:
            kept.append((pts, S))
    sv, vh = torch.cat(svals), torch.cat(vhs)
    pts = torch.cat([p for p, _ in kept]) if keep_samples else None
    sc = torch.cat([q for _, q in kept]) if keep_samples else None
    return NBResult(D - spectral_gap(sv, gap), sv, vh, float(t), K, gap, pts, sc)


@dataclass
class IDResult:
    id: torch.Tensor  # (B,)
    svals: torch.Tensor  # (B, D) descending
    vh: torch.Tensor  # (B, D, D)
    gap: str

    def tangent_basis(self, b: int, k: Optional[int] = None) -> torch.Tensor:
        k = int(self.id[b]) if k is None else int(k)
        return self.vh[b, self.vh.shape[1] - k:].T


def jacobian_id(score_fn: Callable, process, x0: torch.Tensor, t0, gap: str = "log") -> IDResult:
    """ID from the singular values of the exact score Jacobian at α_t0·x0 (D - #above the gap).

    The D - k normal singular values are ≈ 1/σ_t0², the k tangent ones O(1).
    """
    _check_gap(gap)
    B, D = x0.shape[0], x0[0].numel()
    t = process.check_t(torch.as_tensor(t0, dtype=torch.float64), "t0")
    J = jacobian(score_fn, float(process.alpha(t)) * x0, t.expand(B))
    _, sv, vh = torch.linalg.svd(J)
    return IDResult(D - spectral_gap(sv, gap), sv, vh, gap)


@dataclass
class FlowJacobian:
    t: torch.Tensor  # (T,) the grid (descending)
    sigma_ve: torch.Tensor  # (T,)
    svals: torch.Tensor  # (T, B, m) singular values of ∂x_t/∂x_{t1} (sketched when m < D)
    id: torch.Tensor  # (B,) #above the largest gap at the last time
    x: torch.Tensor  # (B, *S) the flow's end point x_{t_grid[-1]}
    gap: str

    def slopes(self, window: float = 0.5) -> torch.Tensor:
        """d log s_i / d log σ̃ over the last ``window`` fraction of the log-σ range, (B, m): ≈ 0 along
        the manifold (saturating), ≈ 1 across it (vanishing like σ_t)."""
        if not 0 < window <= 1:
            raise ValueError(f"window must be in (0, 1], got {window}")
        ls = self.sigma_ve.log()
        start = int(torch.nonzero(ls <= ls[-1] + window * (ls[0] - ls[-1])).min())
        if start >= ls.numel() - 1:
            start = ls.numel() - 2
        lsv = self.svals.clamp_min(torch.finfo(self.svals.dtype).tiny).log()
        return (lsv[-1] - lsv[start]) / (ls[-1] - ls[start])

    def slope_id(self, window: float = 0.5, threshold: float = 0.5) -> torch.Tensor:
        """ID as the number of singular values whose log-log slope is below ``threshold`` (HP24 Fig. 2:
        tangent values saturate, normal ones decay like σ); usable where the final spectrum has no
        clear gap."""
        return (self.slopes(window) < threshold).sum(1)


def _step_jacobian(step: Callable, xt: torch.Tensor, max_batch: int):
    """(step(xt), ∂step/∂x) for flat xt (B, D), by replicated reverse mode."""
    B, D = xt.shape
    per = max(1, max_batch // D)
    ys, Js = [], []
    eye = torch.eye(D, dtype=xt.dtype, device=xt.device)
    with torch.enable_grad():
        for i in range(0, B, per):
            n = xt[i:i + per].shape[0]
            xr = xt[i:i + per].repeat_interleave(D, 0).requires_grad_(True)
            y = step(xr)
            ys.append(y.detach()[::D])
            Js.append(_grad(y, xr, eye.repeat(n, 1)).reshape(n, D, D))
    return torch.cat(ys), torch.cat(Js)


def flow_jacobian(score_fn: Callable, process, x1: torch.Tensor, t_grid, n_cols: Optional[int] = None,
                  gap: str = "log", solver: str = "heun", generator: Optional[torch.Generator] = None,
                  max_batch: int = 4096) -> FlowJacobian:
    """Singular values of the probability-flow Jacobian Y(t) = ∂x_t/∂x_{t1} along ``t_grid``.

    ``x1``: points at t1 = t_grid[0] (e.g. exact samples of p_t1, or N(0, I) for a VP model at
    its last timestep); ``t_grid``: descending times ending at t0 (see
    ``processes.log_sigma_grid``). The flow is integrated as :func:`~.processes.probability_flow`
    and Y as the exact Jacobian of the discrete flow map (the variational equation
    dY/dt = ∇v·Y discretised by the same solver), in the process's own coordinates.
    ``n_cols=None``: the full Jacobian (D VJPs per step, reverse mode); ``n_cols=m``: a
    randomised sketch YΩ with Gaussian Ω (D×m, entries N(0, 1/m)) propagated by forward-
    mode JVPs (UNets need the math attention processor -- :class:`~.score.UNetScore` sets it);
    m must exceed the expected ID.
    """
    _check_gap(gap)
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    t_grid = process.check_t(torch.as_tensor(t_grid, dtype=torch.float64).reshape(-1), "t_grid")
    if t_grid.numel() < 2:
        raise ValueError("t_grid needs at least 2 times (start and end)")
    B, D = x1.shape[0], x1[0].numel()
    m = D if n_cols is None else int(n_cols)
    if not 2 <= m <= D:
        raise ValueError(f"n_cols must be in 2..D={D} (or None for the full Jacobian), got {n_cols}")
    f = flat(score_fn, x1.shape[1:])
    alphas = process.alpha(t_grid)
    xt = x1.detach().reshape(B, D) / float(alphas[0])
    if n_cols is None:
        Y = torch.eye(D, dtype=xt.dtype, device=xt.device).expand(B, D, D).clone()
    else:
        Y = torch.randn(B, D, m, generator=generator, dtype=torch.float64).to(xt) / m ** 0.5
    svals = [torch.linalg.svdvals(Y)]
    for i in range(t_grid.numel() - 1):
        step = lambda z, i=i: pf_step(f, process, z, t_grid[i], t_grid[i + 1], solver)  # noqa: E731
        if n_cols is None:
            xt, Phi = _step_jacobian(step, xt, max_batch)
            Y = Phi @ Y
        else:
            xr = xt.repeat_interleave(m, 0)
            cols = Y.transpose(1, 2).reshape(B * m, D)
            y, jy = torch.func.jvp(step, (xr,), (cols,))
            xt = y[::m].detach()
            Y = jy.detach().reshape(B, m, D).transpose(1, 2)
        svals.append(torch.linalg.svdvals(Y))
    scale = (alphas / alphas[0]).to(xt)  # Y in x coordinates: (α_t/α_1)·∂x̃_t/∂x̃_1
    sv = torch.stack(svals) * scale[:, None, None]
    return FlowJacobian(t_grid, process.sigma_ve(t_grid), sv, spectral_gap(sv[-1], gap),
                        (xt * float(alphas[-1])).reshape(x1.shape), gap)


# ----------------------------------------------------------------------- classical
def _knn_dists(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distances to the k nearest other points, (N, k), float64 (self and exact duplicates removed)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    N = x.shape[0]
    if N < k + 2:
        raise ValueError(f"need at least {k + 2} points for {k} neighbours, got {N}")
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    d = d.masked_fill(d == 0, float("inf"))  # duplicates carry no scale information
    return d.topk(k, dim=1, largest=False).values


def twonn_id(x: torch.Tensor, discard_fraction: float = 0.1) -> float:
    """TwoNN (Facco et al. 2017): μ = r2/r1 is Pareto(d); fit -log(1 - F(μ)) = d·log μ through
    the origin, discarding the largest ``discard_fraction`` of μ (noise-dominated tail)."""
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    r = _knn_dists(x, 2)
    mu = (r[:, 1] / r[:, 0])[torch.isfinite(r).all(1)].sort().values
    n = mu.numel()
    keep = max(2, int(n * (1 - discard_fraction)))
    F = torch.arange(1, n + 1, dtype=torch.float64) / n
    lx, ly = mu[:keep].log(), -torch.log1p(-F[:keep].clamp(max=1 - 1e-12))
    return float((lx * ly).sum() / (lx * lx).sum())


def mle_id(x: torch.Tensor, k: int = 10) -> float:
    """Levina-Bickel MLE with k neighbours; the per-point inverse estimates
    (1/(k-1))·Σ_{j<k} log(T_k/T_j) are averaged before inverting (MacKay & Ghahramani 2005)."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    T = _knn_dists(x, k)
    T = T[torch.isfinite(T).all(1)]
    inv = (T[:, -1:] / T[:, :-1]).log().sum(1) / (k - 1)
    return float(1 / inv.mean())


def principal_angles(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of orthonormal U (D, p) and V (D, q)."""
    sv = torch.linalg.svdvals(U.T.to(torch.float64) @ V.to(torch.float64))
    return torch.arccos(sv.clamp(-1, 1)).sort().values
