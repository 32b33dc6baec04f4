"""Acceptance on Gaussian data on a d-dim linear subspace of R^D (exact scores, float64).

Full grid of the issue: D ∈ {10, 50}, d ∈ {1, 3, 7}, VP and VE, σ_t0 ∈ {1e-3, 1e-2}.
"""

import math

import pytest
import torch

from diffkit.analysis import (LinearGaussianManifold, VEProcess, VPLinearProcess, asymmetry, flow_jacobian,
                              gauge_field, jacobian, jacobian_id, log_sigma_grid, nb_id, principal_angles,
                              probability_flow, random_antisymmetric, spectral_gap)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

PROCESSES = {"ve": lambda: VEProcess(1e-4, 5.0), "vp": lambda: VPLinearProcess()}


@pytest.mark.parametrize("kind", ["ve", "vp"])
@pytest.mark.parametrize("D", [10, 50])
@pytest.mark.parametrize("d", [1, 3, 7])
def test_linear_subspace_grid(kind, D, d):
    proc = PROCESSES[kind]()
    fx = LinearGaussianManifold(D, d, seed=10 * D + d)
    score = fx.score_fn(proc)
    for i, sigma0 in enumerate([1e-3, 1e-2]):
        g = torch.Generator().manual_seed(i)
        t0 = proc.t_at_std(sigma0)
        assert float(proc.std(t0)) == pytest.approx(sigma0, rel=1e-12)
        assert proc.t_at_sigma(sigma0) == t0 and proc.sigma(t0) == proc.std(t0)  # the former names
        # exact Jacobian == -C_t^{-1}
        x = fx.sample_t(3, proc, t0, g)
        J = jacobian(score, x, t0)
        P = fx.precision(proc, t0)
        rel = (J + P).norm(dim=(1, 2)) / P.norm()
        assert rel.max() < 1e-6, rel
        # NAsym: exactly 0 up to float64 rounding (≈1e-33), < 1e-6 by Hutchinson
        exact = asymmetry(score, x, t0)
        assert exact.nasym.max() < 1e-24
        hut = asymmetry(score, x, t0, n_probes=8, generator=g)
        assert hut.nasym.abs().max() < 1e-6 and hut.n_probes == 8
        # the three score-based ID estimators
        x0 = fx.sample(3, g)
        nb = nb_id(score, proc, x0, t0, generator=g)
        assert nb.id.tolist() == [d] * 3 and nb.n_perturb == 4 * D
        assert (D - spectral_gap(nb.svals, "abs")).tolist() == [d] * 3
        assert principal_angles(nb.tangent_basis(0), fx.U).max() < 10 * sigma0  # tangent space recovered
        assert jacobian_id(score, proc, x0, t0).id.tolist() == [d] * 3
        assert jacobian_id(score, proc, x0, t0, gap="abs").id.tolist() == [d] * 3
        grid = log_sigma_grid(proc, 30, proc.t_max, t0)
        fj = flow_jacobian(score, proc, fx.sample_t(2, proc, proc.t_max, g), grid)
        assert fj.id.tolist() == [d, d] and fj.slope_id().tolist() == [d, d]


@pytest.mark.parametrize("kind,steps", [("ve", 300), ("vp", 500)])
def test_flow_jacobian_matches_closed_form(kind, steps):
    """Heun flow-Jacobian singular values -> C_t^{1/2} C_1^{-1/2} (rtol 1e-3); the sketch finds the same ID."""
    proc = PROCESSES[kind]()
    fx = LinearGaussianManifold(10, 3, seed=1)
    t0, t1 = proc.t_at_sigma(1e-2), proc.t_max
    g = torch.Generator().manual_seed(0)
    x1 = fx.sample_t(2, proc, t1, g)
    fj = flow_jacobian(fx.score_fn(proc), proc, x1, log_sigma_grid(proc, steps, t1, t0))
    ref = torch.linalg.svdvals(fx.flow_jacobian(proc, t0, t1))
    assert torch.allclose(fj.svals[-1], ref.expand(2, -1), rtol=1e-3, atol=0)
    assert torch.allclose(fj.svals[0], torch.ones(2, 10, dtype=torch.float64))
    grid = log_sigma_grid(proc, 40, t1, t0)
    sk = flow_jacobian(fx.score_fn(proc), proc, x1, grid, n_cols=6, generator=g)
    assert sk.svals.shape == (41, 2, 6) and sk.id.tolist() == [3, 3]
    assert torch.allclose(sk.x, probability_flow(fx.score_fn(proc), proc, x1, grid), rtol=1e-12, atol=1e-14)


def test_gauge_field_asymmetry_and_local_geometry():
    """(I + aA)∇log p: NAsym equals ‖skew B‖²/‖B‖² with B = (I+aA)C⁻¹ (Hutchinson within 3 s.e.);
    the log-gap ID stays d while the NB tangent space rotates monotonically with a."""
    D, d = 20, 4
    proc = VEProcess(1e-4, 5.0)
    fx = LinearGaussianManifold(D, d, seed=0)
    s = fx.score_fn(proc)
    A = random_antisymmetric(D, torch.Generator().manual_seed(0), 1.0)
    t = proc.t_at_sigma(1e-2)
    P = fx.precision(proc, t)
    x = fx.sample_t(2, proc, t, torch.Generator().manual_seed(3))
    x0 = fx.sample(3, torch.Generator().manual_seed(1))
    angles = []
    for a in [0.0, 0.1, 0.3, 1.0, 3.0]:
        f = gauge_field(s, a * A)
        B = (torch.eye(D, dtype=torch.float64) + a * A) @ P
        closed = float(((B - B.T) / 2).pow(2).sum() / B.pow(2).sum())
        ex = asymmetry(f, x, t)
        assert torch.allclose(ex.nasym, torch.full((2,), closed, dtype=torch.float64), rtol=1e-9, atol=1e-20)
        hut = asymmetry(f, x, t, n_probes=256, generator=torch.Generator().manual_seed(4))
        if a > 0:
            assert ((hut.nasym - closed).abs() < 3 * hut.nasym_se).all(), (hut.nasym, hut.nasym_se, closed)
        nb = nb_id(f, proc, x0, t, generator=torch.Generator().manual_seed(2))
        assert nb.id.tolist() == [d] * 3
        angles.append(max(float(principal_angles(nb.tangent_basis(b), fx.U).max()) for b in range(3)))
    assert all(a1 < a2 for a1, a2 in zip(angles, angles[1:])), angles
    assert math.degrees(angles[-1]) > 30


def test_spectral_gap_rules_and_floor():
    sv = torch.tensor([[100.0, 90.0, 80.0, 1.0, 0.9, 1e-9], [5.0, 4.0, 1.0, 0.5, 0.4, 0.3]], dtype=torch.float64)
    assert spectral_gap(sv, "log").tolist() == [5, 2]  # a near-zero tail value wins the ratio test
    assert spectral_gap(sv, "log", floor=1e-2).tolist() == [3, 2]  # ... unless raised to a floor
    assert spectral_gap(sv, "abs").tolist() == [3, 2]
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\)"):
        spectral_gap(sv, "log", floor=1.5)
