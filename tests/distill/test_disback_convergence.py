"""DisBack convergence benchmark (plumbing, analysis), the shipped one-step digits generator,
its example script and demo step."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import disback_convergence as bench  # noqa: E402


def test_thresholds_are_multiples_of_the_measured_teacher_fid():
    # the teacher's FID comes from its committed measurement (benchmarks/results/digits_quality.json),
    # not from the constant it is quoted as: same sampler, n and seeds, equal at the quoted 3 decimals
    quality = json.loads((ROOT / "benchmarks" / "results" / "digits_quality.json").read_text())
    assert quality["sampler"].startswith("DDIM-50") and quality["model"] == "digits-unet"
    assert quality["n"] == bench.TEACHER_FID_N and quality["seeds"] == [0, 1, 2]
    measured = quality["summary"]["fid"][0]
    assert abs(bench.TEACHER_FID_DDIM50 - measured) <= 5e-4, (bench.TEACHER_FID_DDIM50, measured)
    t = bench.thresholds()
    assert list(t) == ["3x teacher", "2x teacher", "1.5x teacher"]
    for (name, value), factor in zip(t.items(), (3.0, 2.0, 1.5)):
        assert value == pytest.approx(factor * measured, abs=factor * 5e-4), name
    # the committed DisBack results were scored against these thresholds and this Stage-1 cost
    res = json.loads((ROOT / "benchmarks" / "results" / "disback_convergence.json").read_text())
    assert res["teacher_fid_ddim50"] == {"fid": bench.TEACHER_FID_DDIM50, "n": bench.TEACHER_FID_N}
    assert {k: v for k, v in res["thresholds"].items() if k in t} == t
    fake_updates, stage1_steps = res["settings"]["fake_updates"], res["settings"]["stage1_steps"]
    ratio = res["stage1_step_in_gen_steps"]
    assert ratio == bench.stage1_cost_ratio(fake_updates)
    for arm in "BC":  # the arms with a Stage-1 path are charged for it
        assert res["arms"][arm]["stage1_gen_step_equiv"] == pytest.approx(stage1_steps * ratio)


def test_analysis_helpers():
    curve = [(0, 2.0), (100, 1.0), (200, 0.05)]
    assert bench.steps_to(curve, 1.0) == 100 and bench.steps_to(curve, 0.01) is None
    assert bench.auc([(0, 1.0), (10, 1.0)], 10) == pytest.approx(1.0)
    assert bench.auc([(0, 2.0), (10, 0.0)], 10) == pytest.approx(1.0)
    # Stage 1 shifts the curve by its cost; the generator's initial FID holds meanwhile
    rec = {"stage1_steps": 9, "evals": [{"step": 0, "fid": 3.0}, {"step": 10, "fid": 1.0}]}
    assert bench.compute_curve(rec, 1 / 9) == [(0.0, 3.0), (1.0, 3.0), (11.0, 1.0)]
    s = bench._speedups({0: 200, 1: 300, 2: None}, {0: 100, 1: 100, 2: 50}, [0, 1, 2])
    assert s["pairs"] == 2 and s["per_seed"] == [2.0, 3.0] and s["ratio_of_means"] == pytest.approx(2.5)
    assert s["ci95"][0] <= 2.5 <= s["ci95"][1]


def test_quick_run_writes_results_and_resumes(tmp_path):
    out, js = tmp_path / "runs", tmp_path / "res.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "disback_convergence.py"), "--quick", "--out", str(out),
           "--json", str(js), "--seeds", "0", "--max-steps", "4", "--eval-every", "2", "--eval-n", "20"]
    r = subprocess.run(cmd + ["--max-runs", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 run(s) still to do" in r.stdout and not js.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("FID") >= 1 and "[C seed 0]" in r.stdout and "[A seed 0]" not in r.stdout  # A, B skipped
    res = json.loads(js.read_text())
    assert set(res["arms"]) == {"A", "B", "C"}
    for arm in "ABC":
        assert res["arms"][arm]["steps"] == [0, 2, 4]
    # B and C share seed 0's Stage-1 path; C walks it back to the teacher, B targets the teacher throughout
    runs = {r["arm"]: r for r in res["runs"]}
    assert [s["node"] for s in runs["C"]["switches"]] == [1, 0] and [s["node"] for s in runs["B"]["switches"]] == [0]
    assert runs["A"]["stage1_steps"] == 0 and runs["C"]["stage1_steps"] == 4
    assert js.with_suffix(".png").stat().st_size > 1000


# ---------------------------------------------------------------------------- the shipped asset
def test_shipped_onestep_asset_loads_and_draws_the_requested_classes():
    from diffkit.metrics.digits import balanced_labels, top1_accuracy
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.one_step import OneStepPipeline

    pipe = load_pipeline("digits-onestep")
    assert isinstance(pipe, OneStepPipeline) and pipe.num_classes == 10
    size = sum(f.stat().st_size for f in (ROOT / "assets" / "digits-onestep").rglob("*") if f.is_file())
    assert size < 5 * 2**20
    labels = balanced_labels(200)
    out = pipe(class_labels=labels, seed=0, output_type="pt")
    x = out.images
    assert x.shape == (200, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert top1_accuracy(x, labels) >= 0.9
    again = pipe(class_labels=labels[:10], seed=0, output_type="pt").images  # sample k's noise from (seed, k)
    assert torch.equal(again, x[:10])


def test_demo_step_shows_onestep_beside_teacher(tmp_path):
    from diffkit.commands._demo import DemoContext
    from diffkit.commands.distill import demo_step

    ctx = DemoContext(str(tmp_path), quick=True)
    demo_step(ctx)
    assert (tmp_path / "onestep_vs_teacher.png").stat().st_size > 0
    assert any("One-step generator" in line and "top-1" in line for line in ctx.report)
