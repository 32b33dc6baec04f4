"""Synthetic data with exact scores, and fields built from them, for testing the analysis tools.

* :class:`LinearGaussianManifold` -- N(0, UΛUᵀ) on a d-dim subspace of R^D: p_t = N(0, C_t),
  C_t = α_t²UΛUᵀ + σ_t²I, score -C_t⁻¹x, closed forms for the Jacobian, the flow Jacobian
  (the conservative part of a linear field: ``gauge.conservative_part_linear``).
* :class:`SphereManifold` -- uniform on a circle (d = 1) or a 2-sphere (d = 2) of radius R in a
  random (d+1)-dim subspace of R^D; closed-form score and a Monte Carlo check.
* Fields: :func:`gauge_field` (I + A)s with A antisymmetric (a gauge part A∇log p_t: sampling
  unchanged), :func:`rotation_field` (+ scale·Kx/σ_t², not gauge unless p_t is isotropic),
  :func:`scaled_field` (c·s: conservative but wrong for c != 1).

Coordinates: every score here is ∇_x log p_t in the process's own coordinates (the VP latent
for VP processes, x for VE; see :mod:`diffkit.analysis.processes`). Inputs of any shape
(B, *S) are flattened to (B, D).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from diffkit.analysis.processes import as_times
from diffkit.analysis.score import check_score_output

__all__ = ["LinearGaussianManifold", "SphereManifold", "ExactScore", "gauge_field", "rotation_field",
           "scaled_field", "random_antisymmetric"]


def _levels(process, t, B, like):
    t = process.check_t(as_times(t, B))
    a = process.alpha(t).to(like).reshape(B, 1)
    s = process.std(t).to(like).reshape(B, 1)
    return a, s


def _orthonormal(D: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # unique QR


class ExactScore:
    """``fixture.score(x, t, process)`` as a score function ``s(x, t)`` (input shape kept)."""

    def __init__(self, fixture, process):
        self.fixture, self.process = fixture, process

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        B = x.shape[0]
        return self.fixture.score(x.reshape(B, -1), t, self.process).reshape(x.shape)


class LinearGaussianManifold:
    """Gaussian data N(0, UΛUᵀ) on a d-dimensional linear subspace of R^D (U orthonormal)."""

    def __init__(self, D: int, d: int, lam=None, seed: int = 0):
        if not 1 <= d < D:
            raise ValueError(f"need 1 <= d < D, got d={d}, D={D}")
        self.D, self.d = int(D), int(d)
        self.U = _orthonormal(D, d, seed)
        lam = torch.linspace(1.0, 2.0, d) if lam is None else torch.as_tensor(lam)
        lam = lam.to(torch.float64)
        if lam.shape != (d,) or (lam <= 0).any():
            raise ValueError(f"lam: expected {d} positive variances, got {lam.tolist()}")
        self.lam = lam

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (z * self.lam.sqrt()) @ self.U.T

    def tangent_basis(self) -> torch.Tensor:
        return self.U

    def _coef(self, a, s):  # per-sample eigenvalues of C_t: tangent α²λ + σ², normal σ²
        return a * a * self.lam + s * s, s * s

    def cov(self, process, t) -> torch.Tensor:
        a, s = _levels(process, t, 1, self.lam)
        ct, cn = self._coef(a, s)
        return (self.U * ct) @ self.U.T + cn * (torch.eye(self.D, dtype=torch.float64) - self.U @ self.U.T)

    def precision(self, process, t) -> torch.Tensor:
        """C_t⁻¹, assembled from the eigen-decomposition (accurate for tiny σ)."""
        a, s = _levels(process, t, 1, self.lam)
        ct, cn = self._coef(a, s)
        return (self.U / ct) @ self.U.T + (torch.eye(self.D, dtype=torch.float64) - self.U @ self.U.T) / cn

    def score(self, x: torch.Tensor, t, process) -> torch.Tensor:
        B = x.shape[0]
        a, s = _levels(process, t, B, x)
        U = self.U.to(x)
        ct, cn = self._coef(a, s)
        y = x @ U
        return -x / cn + (y * (1 / cn - 1 / ct)) @ U.T

    def score_fn(self, process) -> ExactScore:
        return ExactScore(self, process)

    def flow_jacobian(self, process, t, t1) -> torch.Tensor:
        """∂x_t/∂x_{t1} of the exact probability flow: C_t^{1/2} C_{t1}^{-1/2} (commuting covariances)."""
        a, s = _levels(process, t, 1, self.lam)
        a1, s1 = _levels(process, t1, 1, self.lam)
        ct, cn = self._coef(a, s)
        ct1, cn1 = self._coef(a1, s1)
        P = self.U @ self.U.T
        normal = torch.eye(self.D, dtype=torch.float64) - P
        return (self.U * (ct / ct1).sqrt()) @ self.U.T + (cn / cn1).sqrt() * normal

    def sample_t(self, n: int, process, t, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Exact samples of p_t."""
        x0 = self.sample(n, generator)
        a, s = _levels(process, t, n, x0)
        return a * x0 + s * torch.randn(n, self.D, generator=generator, dtype=torch.float64)


def _langevin(k: torch.Tensor) -> torch.Tensor:
    """coth k - 1/k (S² mean resultant length), with its series for small k."""
    small = k < 1e-3
    ks = torch.where(small, torch.ones_like(k), k)
    return torch.where(small, k / 3 - k ** 3 / 45, 1 / torch.tanh(ks) - 1 / ks)


class SphereManifold:
    """Uniform distribution on a d-sphere (d ∈ {1, 2}) of radius R in a random (d+1)-dim subspace of R^D.

    Exact score, with y = Vᵀx the in-subspace coordinates and κ = αR|y|/σ²:
    s = -x/σ² + (αR/σ²)·A(κ)·V ŷ, A = I₁/I₀ (circle) or coth κ - 1/κ (S²).
    """

    def __init__(self, D: int, d: int = 2, R: float = 1.0, seed: int = 0):
        if d not in (1, 2):
            raise ValueError(f"d must be 1 (circle) or 2 (2-sphere), got {d}")
        if D < d + 1:
            raise ValueError(f"a {d}-sphere needs D >= {d + 1}, got D={D}")
        if R <= 0:
            raise ValueError(f"R must be > 0, got {R}")
        self.D, self.d, self.R = int(D), int(d), float(R)
        self.V = _orthonormal(D, d + 1, seed)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        u = torch.randn(n, self.d + 1, generator=generator, dtype=torch.float64)
        return self.R * (u / u.norm(dim=1, keepdim=True)) @ self.V.T

    def _mean_resultant(self, k):
        if self.d == 1:
            return torch.special.i1e(k) / torch.special.i0e(k)  # exp-scaled: no overflow
        return _langevin(k)

    def score(self, x: torch.Tensor, t, process) -> torch.Tensor:
        B = x.shape[0]
        a, s = _levels(process, t, B, x)
        V = self.V.to(x)
        y = x @ V
        r = y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
        k = a * self.R * r / (s * s)
        return -x / (s * s) + (a * self.R / (s * s)) * self._mean_resultant(k) * (y / r) @ V.T

    def score_fn(self, process) -> ExactScore:
        return ExactScore(self, process)

    @torch.no_grad()
    def score_mc(self, x: torch.Tensor, t, process, n: int = 400_000, generator: Optional[torch.Generator] = None,
                 chunk: int = 100_000) -> torch.Tensor:
        """Monte Carlo score -(x - α·E[x0|x])/σ² with E[x0|x] by self-normalised weights over n sphere samples."""
        B = x.shape[0]
        a, s = _levels(process, t, B, x)
        logw, num = None, None
        for i in range(0, n, chunk):
            x0 = self.sample(min(chunk, n - i), generator).to(x)
            lw = -((x[:, None, :] - a[:, :, None] * x0[None]) ** 2).sum(-1) / (2 * s * s)  # (B, m)
            m = lw.max(1, keepdim=True).values
            if logw is None:
                logw, num, den = m, torch.exp(lw - m) @ x0, torch.exp(lw - m).sum(1, keepdim=True)
            else:
                new = torch.maximum(logw, m)
                num = num * torch.exp(logw - new) + torch.exp(lw - new) @ x0
                den = den * torch.exp(logw - new) + torch.exp(lw - new).sum(1, keepdim=True)
                logw = new
        return -(x - a * num / den) / (s * s)

    def tangent_basis(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, D, d) orthonormal tangent bases at points x0 on the sphere."""
        y = x0 @ self.V
        yh = y / y.norm(dim=1, keepdim=True)
        P = torch.eye(self.d + 1, dtype=x0.dtype) - yh[:, :, None] * yh[:, None, :]
        evals, vecs = torch.linalg.eigh(P)
        return self.V.to(x0) @ vecs[:, :, 1:]  # eigenvalue 0 first (the normal ŷ), then d ones


# ----------------------------------------------------------------------- fields
def _check_antisymmetric(A: torch.Tensor, name: str) -> torch.Tensor:
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square (D, D) matrix, got shape {tuple(A.shape)}")
    if (A + A.T).abs().max() > 1e-12 * max(1.0, float(A.abs().max())):
        raise ValueError(f"{name} must be antisymmetric ({name}ᵀ = -{name}); "
                         f"max |{name} + {name}ᵀ| = {float((A + A.T).abs().max()):.3g}")
    return A


def random_antisymmetric(D: int, generator: Optional[torch.Generator] = None, norm: float = 1.0) -> torch.Tensor:
    """A random antisymmetric (D, D) float64 matrix with spectral norm ``norm``."""
    G = torch.randn(D, D, generator=generator, dtype=torch.float64)
    A = G - G.T
    return A * (norm / torch.linalg.matrix_norm(A, ord=2))


def gauge_field(score_fn: Callable, A: torch.Tensor) -> Callable:
    """(I + A)·s with A antisymmetric: adds the gauge part A∇log p_t, which is divergence-free
    under p_t (∇·(p_t A∇log p_t) = Σ A_ij ∂_i∂_j p_t = 0), so exact sampling is preserved."""
    A = _check_antisymmetric(A, "A")

    def field(x, t):
        s = check_score_output(score_fn(x, t), x)
        sf = s.reshape(x.shape[0], -1)
        if sf.shape[1] != A.shape[0]:
            raise ValueError(f"A is {tuple(A.shape)} but the score has D={sf.shape[1]}")
        return (sf + sf @ A.to(sf).T).reshape(x.shape)

    return field


def rotation_field(score_fn: Callable, K: torch.Tensor, process, scale: float = 1.0) -> Callable:
    """s + scale·Kx/σ_t² with K antisymmetric: a rotation about the origin, which is a gauge
    field only when p_t is isotropic; otherwise it changes the sampled distribution."""
    K = _check_antisymmetric(K, "K")

    def field(x, t):
        B = x.shape[0]
        s = check_score_output(score_fn(x, t), x).reshape(B, -1)
        _, sig = _levels(process, t, B, s)
        return (s + scale * (x.reshape(B, -1) @ K.to(s).T) / (sig * sig)).reshape(x.shape)

    return field


def scaled_field(score_fn: Callable, c: float) -> Callable:
    """c·s: still conservative, but the wrong score for c != 1."""

    def field(x, t):
        return c * check_score_output(score_fn(x, t), x)

    return field
