"""The score Jacobian J = ∂s/∂x and its normalised asymmetry (a conservativity metric).

NAsym = ‖(J - Jᵀ)/2‖²_F / ‖J‖²_F ∈ [0, 1] (the antisymmetric energy fraction; QCSBM,
Chao et al. 2023). s is conservative (a gradient field) iff J is symmetric everywhere,
so NAsym detects a gauge part, though not its L²(p_t) size.

Reverse mode only (VJPs), so it works with every attention kernel (PyTorch's CPU
fused attention has no forward-mode AD, pytorch#128971). Works in any coordinates; the
tools report J of the score exactly as given (VP score s = -ε/std_vp for UNets).
The score function must treat batch rows independently (no batch statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from diffkit.analysis.processes import as_times
from diffkit.analysis.score import flat

__all__ = ["jacobian", "Asymmetry", "asymmetry", "rademacher"]


def _grad(out: torch.Tensor, x: torch.Tensor, cot: torch.Tensor, retain: bool = False) -> torch.Tensor:
    (g,) = torch.autograd.grad(out, x, cot, retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def jacobian(score_fn: Callable, x: torch.Tensor, t, max_batch: int = 4096) -> torch.Tensor:
    """Exact Jacobian J[b, i, j] = ∂s_i/∂x_j at each sample, shape (B, D, D).

    Each sample is replicated D times and one backward pass with the identity as
    cotangents gives all D rows (D VJPs, batched in chunks of at most ``max_batch`` rows).
    """
    B = x.shape[0]
    D = x[0].numel()
    f = flat(score_fn, x.shape[1:])
    t = as_times(t, B)
    xf = x.detach().reshape(B, D)
    per = max(1, max_batch // D)
    out = []
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for i in range(0, B, per):
            xb = xf[i:i + per]
            n = xb.shape[0]
            xr = xb.repeat_interleave(D, 0).requires_grad_(True)
            s = f(xr, t[i:i + per].repeat_interleave(D))
            g = _grad(s, xr, eye.repeat(n, 1))
            out.append(g.reshape(n, D, D))
    return torch.cat(out)


def rademacher(shape, generator: Optional[torch.Generator] = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """±1 entries, drawn on the CPU from ``generator``."""
    r = torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.int64)
    return (2 * r - 1).to(dtype=dtype, device=device)


@dataclass
class Asymmetry:
    """Per-sample asymmetry of J. With Hutchinson probes the ``*_se`` fields are standard
    errors over probes (None when exact); estimates are not clipped to [0, 1]."""

    skew_fro2: torch.Tensor  # ‖(J - Jᵀ)/2‖²_F, (B,)
    jac_fro2: torch.Tensor  # ‖J‖²_F, (B,)
    nasym: torch.Tensor  # skew_fro2 / jac_fro2, (B,)
    nasym_se: Optional[torch.Tensor] = None
    skew_fro2_se: Optional[torch.Tensor] = None
    n_probes: Optional[int] = None


def asymmetry(score_fn: Callable, x: torch.Tensor, t, n_probes: Optional[int] = None,
              generator: Optional[torch.Generator] = None, max_batch: int = 4096) -> Asymmetry:
    """Normalised asymmetry of the score Jacobian at each sample.

    ``n_probes=None``: exact, from :func:`jacobian`. ``n_probes=k`` (>= 2): Hutchinson with k
    Rademacher probes v and two VJPs each on one forward pass (no forward mode):
    a = Jᵀv gives ‖J‖²_F ≈ ‖a‖², and Jᵀa gives tr(J²) ≈ vᵀJᵀa; then
    ‖(J-Jᵀ)/2‖²_F = ½(‖J‖²_F - tr J²) and NAsym = ½(1 - tr J² / ‖J‖²_F) (ratio of means;
    standard error by the delta method). For a symmetric J every probe gives exactly 0.
    """
    B = x.shape[0]
    if n_probes is None:
        J = jacobian(score_fn, x, t, max_batch)
        skew = 0.25 * ((J - J.transpose(1, 2)) ** 2).sum((1, 2))
        fro = (J ** 2).sum((1, 2))
        return Asymmetry(skew, fro, skew / fro)
    n_probes = int(n_probes)
    if n_probes < 2:
        raise ValueError(f"n_probes must be >= 2 for Hutchinson estimates with standard errors (or None for exact), "
                         f"got {n_probes}")
    D = x[0].numel()
    f = flat(score_fn, x.shape[1:])
    t = as_times(t, B)
    xf = x.detach().reshape(B, D)
    V = rademacher((n_probes, B, D), generator, x.dtype, x.device)
    per = max(1, max_batch // B)
    us, ws = [], []
    with torch.enable_grad():
        for k in range(0, n_probes, per):
            v = V[k:k + per]
            m = v.shape[0]
            xr = xf.repeat(m, 1).requires_grad_(True)
            s = f(xr, t.repeat(m))
            a = _grad(s, xr, v.reshape(m * B, D), retain=True)  # Jᵀv
            b = _grad(s, xr, a.detach())  # JᵀJᵀv
            us.append((a ** 2).sum(1).reshape(m, B))
            ws.append((v.reshape(m * B, D) * b).sum(1).reshape(m, B))
    u, w = torch.cat(us), torch.cat(ws)  # (n, B): ‖J‖²_F and tr(J²) samples
    d = u - w  # 2‖(J-Jᵀ)/2‖²_F samples; identically 0 when J = Jᵀ
    fro, dm = u.mean(0), d.mean(0)
    ratio = dm / fro
    n = float(n_probes)
    ratio_se = ((d - ratio * u).std(0) / fro) / n ** 0.5
    return Asymmetry(0.5 * dm, fro, 0.5 * ratio, 0.5 * ratio_se, 0.5 * d.std(0) / n ** 0.5, n_probes)
