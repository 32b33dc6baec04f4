"""Circles and 2-spheres: the closed-form score against Monte Carlo, and the normal-bundle ID."""

import pytest
import torch

from diffkit.analysis import (SphereManifold, VEProcess, VPLinearProcess, jacobian_id, loop_circulation, nb_id,
                              principal_angles)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

PROCESSES = {"ve": lambda: VEProcess(1e-4, 5.0), "vp": lambda: VPLinearProcess()}


@pytest.mark.parametrize("kind", ["ve", "vp"])
@pytest.mark.parametrize("d", [1, 2])
def test_sphere_score_matches_monte_carlo(kind, d):
    proc = PROCESSES[kind]()
    sp = SphereManifold(10, d, R=1.0, seed=3)
    g = torch.Generator().manual_seed(d)
    t = proc.t_at_sigma(0.4)
    x0 = sp.sample(2, g)
    x = proc.alpha(t) * x0 + proc.sigma(t) * torch.randn(2, 10, generator=g, dtype=torch.float64)
    exact = sp.score_fn(proc)(x, t)
    mc = sp.score_mc(x, t, proc, n=400_000, generator=g)
    rel = (mc - exact).norm(dim=1) / exact.norm(dim=1)
    assert rel.max() < 5e-3, rel
    # conservative: no circulation around small loops
    assert loop_circulation(sp.score_fn(proc), x, t, 0.05, n_loops=4, generator=g).curl.abs().max() < 1e-8


@pytest.mark.parametrize("kind", ["ve", "vp"])
@pytest.mark.parametrize("d", [1, 2])
def test_normal_bundle_estimator_on_spheres(kind, d):
    proc = PROCESSES[kind]()
    sp = SphereManifold(10, d, R=1.0, seed=3)
    g = torch.Generator().manual_seed(0)
    x0 = sp.sample(4, g)
    T = sp.tangent_basis(x0)
    assert torch.allclose(T.transpose(1, 2) @ T, torch.eye(d, dtype=torch.float64).expand(4, d, d), atol=1e-12)
    for sigma in (1e-3, 1e-2, 0.1):
        t = proc.t_at_sigma(sigma)
        nb = nb_id(sp.score_fn(proc), proc, x0, t, generator=g)
        assert nb.id.tolist() == [d] * 4, (sigma, nb.id)
        assert max(float(principal_angles(nb.tangent_basis(b), T[b]).max()) for b in range(4)) < 2 * sigma + 0.05
    assert jacobian_id(sp.score_fn(proc), proc, x0, proc.t_at_sigma(1e-2)).id.tolist() == [d] * 4
