"""The UNet adapter (VP score -ε/std_vp, math attention), the digits report / CLI, classical ID, the example."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffkit.analysis import (LinearGaussianManifold, UNetScore, asymmetry, flow_jacobian, log_sigma_grid, mle_id,
                              nb_id, twonn_id)
from diffkit.conditioning import class_guidance
from diffkit.denoisers import EpsModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _attn_kinds(unet):
    from diffusers.models.attention_processor import Attention

    return {type(m.processor).__name__ for m in unet.modules() if isinstance(m, Attention)}


def test_unet_score_is_minus_eps_over_std_vp(tiny_class_unet):
    cfg = DDIMScheduler().config
    model = EpsModel(tiny_class_unet, cfg)
    before = _attn_kinds(tiny_class_unet)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    with UNetScore(tiny_class_unet, cfg, class_label=4) as score:
        assert _attn_kinds(tiny_class_unet) == {"AttnProcessor"}
        for t in (0.0, 37.0, 512.5):  # grid points and a continuous t
            tt = torch.full((3,), t, dtype=torch.float64)
            t_in = tt.long() if t == int(t) else tt
            alpha, std = model.levels(t_in, z)
            eps, _ = model.predict(z, t_in, class_guidance(tiny_class_unet, [4]), alpha=alpha, std=std)
            expect = -eps / std.view(-1, 1, 1, 1)
            assert torch.allclose(score(z, tt), expect, rtol=1e-6, atol=1e-6)
            assert float(score.process.sigma(torch.tensor(t))) == pytest.approx(float(std[0]), rel=1e-6)
    assert _attn_kinds(tiny_class_unet) == before  # restored


def test_unet_asymmetry_hutchinson_agrees_with_exact_and_flow_sketch_runs(tiny_class_unet):
    cfg = DDIMScheduler().config
    with UNetScore(tiny_class_unet, cfg, class_label=2) as score:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 1, 8, 8, generator=g)
        ex = asymmetry(score, x, 100)
        hut = asymmetry(score, x, 100, n_probes=64, generator=g)
        assert ((ex.nasym > 0.01) & (ex.nasym < 1)).all()  # a random UNet is not conservative
        assert ((hut.nasym - ex.nasym).abs() < 4 * hut.nasym_se + 1e-4).all(), (hut.nasym, hut.nasym_se, ex.nasym)
        assert torch.allclose(hut.jac_fro2, ex.jac_fro2, rtol=0.5)
        proc = score.process
        grid = log_sigma_grid(proc, 3, 999, 50)
        fj = flow_jacobian(score, proc, x[:1], grid, n_cols=4, generator=g)  # forward mode through math attention
        assert fj.svals.shape == (4, 1, 4) and int(fj.id[0]) == _above_largest_log_gap(fj.svals[-1, 0])
        nb = nb_id(score, proc, x[:1], 20, n_perturb=65, generator=g, keep_samples=True)
    # independently of the adapter and the estimator: the scores at the kept perturbations are -ε/std of
    # the UNet (EpsModel), their centred 65 x 64 matrix has the reported singular values (numpy), and
    # the ID is 64 minus the count above its largest log gap
    model = EpsModel(tiny_class_unet, cfg)
    t = torch.full((65,), 20)
    pts = nb.points[0].reshape(65, 1, 8, 8)
    alpha, std = model.levels(t, pts)
    eps, _ = model.predict(pts, t, class_guidance(tiny_class_unet, [2] * 65), alpha=alpha, std=std)
    scores = (-eps / std.view(-1, 1, 1, 1)).reshape(65, 64).detach().double().numpy()
    assert np.allclose(nb.scores[0].double().numpy(), scores, rtol=1e-5, atol=1e-5)
    sv = np.linalg.svd(scores - scores.mean(0), compute_uv=False)
    assert np.allclose(nb.svals[0].double().numpy(), sv, rtol=1e-4, atol=1e-4 * sv[0])
    assert int(nb.id[0]) == 64 - _above_largest_log_gap(nb.svals[0])


def _above_largest_log_gap(svals, floor=None):
    """The number of singular values above the largest ratio s_i / s_(i+1), values below floor·s_1 (default:
    machine epsilon of their dtype) raised to it first -- numpy, independent of ``spectral_gap``."""
    s = np.asarray(svals.tolist() if hasattr(svals, "tolist") else svals, dtype=np.float64)
    rel = floor if floor is not None else float(torch.finfo(svals.dtype).eps)
    s = np.maximum(s, rel * s[0])
    return int(np.argmax(s[:-1] / s[1:])) + 1


@pytest.mark.parametrize("d", [2, 5])
def test_classical_estimators_on_a_linear_subspace(d):
    x = LinearGaussianManifold(20, d, lam=torch.ones(d), seed=0).sample(1500, torch.Generator().manual_seed(d))
    assert twonn_id(x) == pytest.approx(d, rel=0.1)
    assert mle_id(x, k=10) == pytest.approx(d, rel=0.1)


def test_analyze_cli_quick_report(tmp_path, tiny_class_unet):
    from diffkit.cli import main
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    model_dir = tmp_path / "model"
    ClassConditionalPipeline(tiny_class_unet, DDIMScheduler()).save_pretrained(str(model_dir))
    out = tmp_path / "report"
    code = main(["analyze", "--model", str(model_dir), "--output", str(out), "--quick", "--classes", "0,3",
                 "--potential-steps", "40"])
    assert code == 0
    for f in ("report.md", "results.json", "nb_spectra.png", "nasym_vs_sigma.png", "id_per_class.png",
              "flow_jacobian.png", "potential_fit.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "results.json").read_text())
    assert [r["class"] for r in res["per_class"]] == [0, 3]
    assert res["sigma_t0"] == pytest.approx(0.05, rel=0.1)
    floor, D = res["config"]["gap_floor"], 64
    for r in res["per_class"]:
        assert len(r["nb_raw_log"]) == len(r["nb_phi_log"]) == len(r["jac_raw"]) == 2  # points per class
        assert r["twonn"] > 0 and r["mle"] > 0
        if str(r["class"]) in res["spectra"]:  # the first point's spectra are saved: its IDs follow from them
            sp = next(iter(res["spectra"][str(r["class"])].values()))
            assert r["nb_raw_log"][0] == D - _above_largest_log_gap(sp["raw"], floor)
            assert r["nb_phi_log"][0] == D - _above_largest_log_gap(sp["phi"], floor)
            assert r["nb_loc_log"][0] == D - _above_largest_log_gap(sp["loc"], floor)
    assert set(res["spectra"]) == {"0", "3"} and res["flows"]
    for flow in res["flows"].values():
        assert flow["gap_id"] == _above_largest_log_gap(flow["svals"][-1], floor)
    pot = res["potential"]
    assert pot["dsm_score"] == pytest.approx(pot["dsm_conservative"] + pot["gauge_energy"] + pot["cross"], rel=1e-9)
    assert all(0 <= r["nasym_mean"] <= 1 for r in res["nasym"])
    md = (out / "report.md").read_text()
    assert "## Intrinsic dimension per class" in md and "![NAsym vs σ](nasym_vs_sigma.png)" in md
