"""Fréchet distance and kernel distance from features (backend-independent math).

``frechet_distance`` is the closed form between two Gaussians,
d² = |μ1-μ2|² + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}),
evaluated through the eigenvalues of S1^{1/2} S2 S1^{1/2} (symmetric PSD), which stays
stable for near-singular covariances where ``scipy.linalg.sqrtm(S1 @ S2)`` goes complex.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_stats", "frechet_distance", "kid_from_features"]


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of an (n, d) feature array, float64, unbiased covariance."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features: expected a 2-D (n, d) array, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"features: need at least 2 samples, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def kid_from_features(f1, f2, num_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                      gamma: float | None = None, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD² with a polynomial kernel), mean and std over subsets.

    Kernel k(x, y) = (γ x·y + coef0)^degree with γ = 1/d by default (as clean-fid/torchmetrics).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (n, d) with equal d, got {f1.shape} and {f2.shape}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    gamma = 1.0 / f1.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (gamma * x @ x.T + coef0) ** degree
        kyy = (gamma * y @ y.T + coef0) ** degree
        kxy = (gamma * x @ y.T + coef0) ** degree
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    vals = np.asarray(vals)
    return float(vals.mean()), float(vals.std())
