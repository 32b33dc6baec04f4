"""Integral conservativity tests with forward passes only: loop circulation, path dependence.

A gradient field has zero circulation around every closed loop. For a linear field
s = Bx the circulation around a circle of radius ρ in the plane spanned by orthonormal
(u, w) is exactly 2πρ²·wᵀ skew(B) u, skew(B) = (B - Bᵀ)/2; for a smooth field it
is 2πρ²·wᵀ skew(J) u + O(ρ³), so it tests finite-scale rotation as well as the
infinitesimal one. Coordinates: whatever the score uses (VP score for UNets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from diffkit.analysis.processes import as_times
from diffkit.analysis.score import flat

__all__ = ["LoopCirculation", "random_planes", "loop_circulation", "line_integral", "path_dependence"]


@dataclass
class LoopCirculation:
    value: torch.Tensor  # ∮ s·dl, (B, n_loops)
    u: torch.Tensor  # (B, n_loops, D)
    w: torch.Tensor  # (B, n_loops, D); loops run from u towards w
    radius: float

    @property
    def curl(self) -> torch.Tensor:
        """value / (2πρ²): the in-plane rotation wᵀ skew(J) u in the small-loop limit."""
        return self.value / (2 * math.pi * self.radius ** 2)


def random_planes(n: int, D: int, generator: Optional[torch.Generator] = None, dtype=torch.float64):
    """n random orthonormal pairs (u, w) in R^D (QR of Gaussian D×2 matrices), each (n, D)."""
    if D < 2:
        raise ValueError(f"a loop needs D >= 2 dimensions, got D={D}")
    g = torch.randn(n, D, 2, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(g)
    return q[..., 0].to(dtype), q[..., 1].to(dtype)


@torch.no_grad()
def loop_circulation(score_fn: Callable, x: torch.Tensor, t, radius: float, n_loops: int = 8, n_quad: int = 64,
                     generator: Optional[torch.Generator] = None) -> LoopCirculation:
    """Circulation of the score around ``n_loops`` random circles of ``radius`` centred at each x.

    Trapezoidal rule with ``n_quad`` equispaced points: spectrally accurate for a periodic
    integrand and exact for linear fields (n_quad >= 3).
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if n_quad < 3 or n_loops < 1:
        raise ValueError(f"need n_quad >= 3 and n_loops >= 1, got n_quad={n_quad}, n_loops={n_loops}")
    B, D = x.shape[0], x[0].numel()
    f = flat(score_fn, x.shape[1:])
    t = as_times(t, B)
    u, w = random_planes(B * n_loops, D, generator, x.dtype)
    u, w = u.to(x.device), w.to(x.device)
    theta = torch.arange(n_quad, dtype=torch.float64) * (2 * math.pi / n_quad)
    c, s = theta.cos().to(x), theta.sin().to(x)
    centres = x.reshape(B, D).repeat_interleave(n_loops, 0)  # (B*L, D)
    pts = centres[:, None] + radius * (c[None, :, None] * u[:, None] + s[None, :, None] * w[:, None])
    tangent = radius * (-s[None, :, None] * u[:, None] + c[None, :, None] * w[:, None])
    vals = f(pts.reshape(-1, D), t.repeat_interleave(n_loops * n_quad)).reshape(B * n_loops, n_quad, D)
    circ = (vals * tangent).sum(-1).sum(-1) * (2 * math.pi / n_quad)
    return LoopCirculation(circ.reshape(B, n_loops), u.reshape(B, n_loops, D), w.reshape(B, n_loops, D), float(radius))


@torch.no_grad()
def line_integral(score_fn: Callable, xa: torch.Tensor, xb: torch.Tensor, t, n_quad: int = 16) -> torch.Tensor:
    """∫ s·dl along the straight segment xa -> xb (Gauss-Legendre, exact for polynomial
    fields of degree <= 2·n_quad - 2), shape (B,)."""
    if xa.shape != xb.shape:
        raise ValueError(f"end points must have the same shape, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    if n_quad < 1:
        raise ValueError(f"n_quad must be >= 1, got {n_quad}")
    B, D = xa.shape[0], xa[0].numel()
    f = flat(score_fn, xa.shape[1:])
    t = as_times(t, B)
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    tau = torch.from_numpy((nodes + 1) / 2).to(xa)
    wts = torch.from_numpy(weights / 2).to(xa)
    a, b = xa.reshape(B, D), xb.reshape(B, D)
    pts = a[:, None] + tau[None, :, None] * (b - a)[:, None]
    vals = f(pts.reshape(-1, D), t.repeat_interleave(n_quad)).reshape(B, n_quad, D)
    return ((vals * (b - a)[:, None]).sum(-1) * wts).sum(-1)


def path_dependence(score_fn: Callable, xa: torch.Tensor, xb: torch.Tensor, xc: torch.Tensor, t,
                    n_quad: int = 16) -> torch.Tensor:
    """∫_{a→b→c} s·dl - ∫_{a→c} s·dl, the circulation around the triangle a→b→c→a, (B,).

    Zero for a gradient field; (c-a)ᵀ skew(B) (b-a) for a linear field s = Bx.
    """
    return (line_integral(score_fn, xa, xb, t, n_quad) + line_integral(score_fn, xb, xc, t, n_quad)
            - line_integral(score_fn, xa, xc, t, n_quad))
