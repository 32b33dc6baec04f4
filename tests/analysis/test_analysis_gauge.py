"""Gauge freedom: sampling invariance, the conservative/gauge split, DSM decomposition, integral metrics."""

import math

import pytest
import torch

from diffkit.analysis import (LinearGaussianManifold, PotentialMLP, PotentialScore, QuadraticPotential, ScoreBank,
                              SphereManifold, VEProcess, VPLinearProcess, asymmetry, conservative_part_linear,
                              dsm_decomposition, fit_local_quadratic, fit_potential, gauge_field, gauge_residual,
                              gauge_split, line_integral, local_conservative_part, log_sigma_grid, loop_circulation,
                              make_bank, path_dependence, probability_flow, random_antisymmetric, rotation_field,
                              scaled_field)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_gauge_field_preserves_sampling_neither_necessary_nor_sufficient(kind):
    """PF-ODE covariance at σ = 0.05: a gauge field (a up to 3) stays within 3x the Monte Carlo floor;
    a non-gauge rotation and the conservative 1.5x score are > 10x off."""
    D, n = 6, 4000
    proc = VEProcess(1e-3, 5.0) if kind == "ve" else VPLinearProcess()
    fx = LinearGaussianManifold(D, 2, lam=[0.5, 2.0], seed=0)
    s = fx.score_fn(proc)
    t1, t0 = proc.t_max, proc.t_at_sigma(0.05)
    C = fx.cov(proc, t0)
    floor = float(math.sqrt(((C ** 2).sum() + torch.trace(C) ** 2) / n) / C.norm())  # E‖Ĉ - C‖_F / ‖C‖_F
    A = random_antisymmetric(D, torch.Generator().manual_seed(0), 1.0)
    x1 = fx.sample_t(n, proc, t1, torch.Generator().manual_seed(1))
    grid = log_sigma_grid(proc, 200, t1, t0)
    x_t0 = fx.sample_t(8, proc, t0, torch.Generator().manual_seed(2))

    def cov_err(field):
        x = probability_flow(field, proc, x1, grid)
        return float(((x.T @ x / n) - C).norm() / C.norm()) / floor

    assert cov_err(s) < 3
    for a in (1.0, 3.0):
        g = gauge_field(s, a * A)
        assert cov_err(g) < 3, a
        assert asymmetry(g, x_t0, t0).nasym.min() > 0.05  # far from conservative: not necessary
    rot = rotation_field(s, A, proc)
    assert cov_err(rot) > 10
    assert asymmetry(rot, x_t0, t0).nasym.min() > 0.05
    big = scaled_field(s, 1.5)
    assert cov_err(big) > 10  # conservative (NAsym 0) but wrong: not sufficient
    assert asymmetry(big, x_t0, t0).nasym.max() < 1e-24


def _moment_design(C):
    """2D points ±√D·C^{1/2}e_i: mean 0 and second moment exactly C."""
    D = C.shape[0]
    ev, Q = torch.linalg.eigh(C)
    half = Q @ torch.diag(ev.sqrt()) @ Q.T
    return torch.cat([math.sqrt(D) * half, -math.sqrt(D) * half])


def test_quadratic_potential_recovers_precision_and_split():
    """Least-squares φ of (I + aA)∇log p is log p: M = C⁻¹ to 1e-6 (L-BFGS on a design with the exact
    moments), which is also the Lyapunov projection; r = s - ∇φ is the gauge part -aAC⁻¹x."""
    D = 8
    proc = VEProcess(1e-3, 5.0)
    fx = LinearGaussianManifold(D, 3, seed=2)
    t = proc.t_at_sigma(0.3)
    C, P = fx.cov(proc, t), fx.precision(proc, t)
    A = 2.0 * random_antisymmetric(D, torch.Generator().manual_seed(0))
    field = gauge_field(fx.score_fn(proc), A)
    X = _moment_design(C)
    tt = t.expand(X.shape[0]).clone()
    bank = ScoreBank(X, tt, field(X, tt), torch.zeros_like(X), proc)
    pot = QuadraticPotential(D)
    fit = fit_potential(bank, pot, steps=200, optimizer="lbfgs")
    assert float((pot.M.detach() - P).norm() / P.norm()) < 1e-6
    assert float(pot.b.detach().abs().max()) < 1e-6
    B = (torch.eye(D, dtype=torch.float64) + A) @ P
    assert torch.allclose(conservative_part_linear(B, C), P, rtol=0, atol=1e-9 * float(P.abs().max()))
    x = fx.sample_t(5, proc, t, torch.Generator().manual_seed(1))
    split = gauge_split(field, PotentialScore(pot), x, t)
    assert torch.allclose(split.r, -(x @ P) @ A.T, rtol=1e-5, atol=1e-5)
    assert fit.history[-1] < fit.history[0]
    # a rotation's conservative part is not C⁻¹ (anisotropic C): the Lyapunov solve says by how much
    K = random_antisymmetric(D, torch.Generator().manual_seed(5))
    Mrot = conservative_part_linear(P - K / float(proc.sigma(t)) ** 2, C)
    assert float((Mrot - P).norm() / P.norm()) > 0.1


def test_dsm_decomposition_and_weak_gauge_residual():
    """DSM(s) - DSM(∇log p) = E σ²‖r‖² + cross exactly; E‖r‖² = a² tr(AC⁻¹Aᵀ); cross and
    E[∇ψ·r] ≈ 0 for the gauge part, while a rotation fails the weak gauge condition."""
    D, a = 4, 1.0
    proc = VEProcess(1e-3, 5.0)
    fx = LinearGaussianManifold(D, 2, lam=[0.5, 2.0], seed=0)
    s = fx.score_fn(proc)
    A = random_antisymmetric(D, torch.Generator().manual_seed(0), 1.0)
    field = gauge_field(s, a * A)
    t = proc.t_at_sigma(0.3)
    P = fx.precision(proc, t)
    g = torch.Generator().manual_seed(1)
    bank = make_bank(field, proc, fx.sample(20000, g), t, generator=g)
    exact = QuadraticPotential(D)
    with torch.no_grad():
        exact.P.copy_(P)
    dec = dsm_decomposition(bank, exact)
    sig2 = float(proc.sigma(t)) ** 2
    assert dec.dsm_score == pytest.approx(dec.dsm_conservative + dec.gauge_energy + dec.cross, rel=1e-12)
    assert dec.gauge_energy == pytest.approx(sig2 * a * a * float(torch.trace(A @ P @ A.T)), rel=0.05)
    assert abs(dec.cross) < 0.05 * dec.gauge_energy
    r = gauge_split(field, PotentialScore(exact), bank.x, bank.t).r
    assert gauge_residual(r, bank.x, n_test=16, generator=g).z.abs().max() < 4
    rot = rotation_field(s, A, proc)(bank.x, bank.t) - s(bank.x, bank.t)
    assert gauge_residual(rot, bank.x, n_test=16, generator=g).z.abs().max() > 10


def test_potential_network_removes_the_gauge_part():
    """A small PotentialMLP fitted over three noise levels: its error to ∇log p is far below the gauge part's."""
    D = 4
    proc = VEProcess(1e-3, 5.0)
    fx = LinearGaussianManifold(D, 2, lam=[0.5, 2.0], seed=0)
    s = fx.score_fn(proc)
    field = gauge_field(s, random_antisymmetric(D, torch.Generator().manual_seed(0), 1.0))
    g = torch.Generator().manual_seed(1)
    tv = proc.t_at_sigma(torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64))
    bank = make_bank(field, proc, fx.sample(2000, g), tv, generator=g)
    torch.manual_seed(0)
    pot = PotentialMLP(D, proc, hidden=32, depth=2, sigma_data=1.0).double()
    fit = fit_potential(bank, pot, steps=400, batch_size=256, lr=1e-2, generator=g)
    assert fit.final_loss < 0.7 * fit.history[0]
    for t in tv:
        x = fx.sample_t(2000, proc, t, g)
        truth = s(x, t)
        err_phi = float(((PotentialScore(pot)(x, t) - truth) ** 2).sum(1).mean())
        err_gauge = float(((field(x, t) - truth) ** 2).sum(1).mean())
        assert err_phi < 0.1 * err_gauge, (float(t), err_phi, err_gauge)
    x = fx.sample_t(2, proc, tv[1], g)
    assert asymmetry(PotentialScore(pot), x, tv[1]).nasym.max() < 1e-20  # ∇φ: symmetric Hessian


def test_loop_circulation_and_path_dependence_closed_forms():
    D = 7
    g = torch.Generator().manual_seed(0)
    B = torch.randn(D, D, generator=g, dtype=torch.float64)
    K = (B - B.T) / 2
    lin = lambda x, t: x @ B.T  # noqa: E731  s = Bx
    x = torch.randn(3, D, generator=g, dtype=torch.float64)
    lc = loop_circulation(lin, x, 0.0, radius=0.7, n_loops=5, n_quad=8, generator=g)
    expect = 2 * math.pi * 0.7 ** 2 * torch.einsum("bli,ij,blj->bl", lc.w, K, lc.u)
    assert torch.allclose(lc.value, expect, rtol=0, atol=1e-10)
    assert torch.allclose(lc.curl, torch.einsum("bli,ij,blj->bl", lc.w, K, lc.u), atol=1e-10)
    xa, xb, xc = (torch.randn(3, D, generator=g, dtype=torch.float64) for _ in range(3))
    pd = path_dependence(lin, xa, xb, xc, 0.0, n_quad=2)
    assert torch.allclose(pd, torch.einsum("bi,ij,bj->b", xc - xa, K, xb - xa), rtol=0, atol=1e-10)
    # a gradient field: line integral = potential difference, no circulation
    sym = lambda x, t: x @ (B + B.T)  # noqa: E731  ∇(xᵀBx)
    assert torch.allclose(line_integral(sym, xa, xb, 0.0, 2), (xb @ B * xb).sum(1) - (xa @ B * xa).sum(1), atol=1e-10)
    assert loop_circulation(sym, x, 0.0, 0.5, generator=g).value.abs().max() < 1e-10


def test_local_conservative_part():
    """Locally (isotropic Gaussian ball) the projection onto quadratic potentials of a linear field
    -Bx is -sym(B)x; for a conservative field the affine fit is already symmetric."""
    D = 6
    proc = VEProcess(1e-3, 5.0)
    fx = LinearGaussianManifold(D, 2, seed=0)
    t = proc.t_at_sigma(0.1)
    A = random_antisymmetric(D, torch.Generator().manual_seed(0), 2.0)
    field = gauge_field(fx.score_fn(proc), A)
    B = (torch.eye(D, dtype=torch.float64) + A) @ fx.precision(proc, t)  # field = -Bx
    c = fx.sample(1, torch.Generator().manual_seed(1))[0]
    pts = c + 0.05 * _moment_design(torch.eye(D, dtype=torch.float64))  # isotropic design around c
    lq = fit_local_quadratic(pts, field(pts, t))
    assert torch.allclose(lq.G, -B, rtol=0, atol=1e-8 * float(B.abs().max())) and lq.residual < 1e-20
    assert torch.allclose(lq.M, (B + B.T) / 2, rtol=0, atol=1e-8 * float(B.abs().max()))
    assert torch.allclose(lq(c[None]), field(c[None], t), rtol=1e-9)  # exact at the centre (b = s(c))
    lq2 = local_conservative_part(field, c, t, 0.05, generator=torch.Generator().manual_seed(2))  # random ball
    assert torch.allclose(lq2.G, -B, rtol=0, atol=1e-8 * float(B.abs().max()))
    assert torch.allclose(lq2.M, conservative_part_linear(B, lq2.cov), rtol=0, atol=1e-8 * float(B.abs().max()))
    assert float((lq2.M - (B + B.T) / 2).norm() / B.norm()) > 1e-3  # anisotropic sample: not just sym(B)
    sp = SphereManifold(8, 2, seed=0)
    x0 = sp.sample(1, torch.Generator().manual_seed(3))[0]
    lq3 = local_conservative_part(sp.score_fn(proc), x0, t, 0.01, generator=torch.Generator().manual_seed(4))
    skew = float(((lq3.G - lq3.G.T) / 2).norm() / lq3.G.norm())
    assert skew < 0.05 and float((lq3.M + lq3.G).norm() / lq3.G.norm()) < 0.05
