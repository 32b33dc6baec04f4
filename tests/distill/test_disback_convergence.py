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


def test_thresholds_fixed_in_the_script_and_teacher_multiples_read_unrounded():
    # the decisive thresholds are constants of the script (phase 1: absolute; phase 2: fractions of G⁰'s FID);
    # the teacher multiples beside them are read from the committed measurement, unrounded
    quality = json.loads((ROOT / "benchmarks" / "results" / "digits_quality.json").read_text())
    assert quality["sampler"].startswith("DDIM-50") and quality["model"] == "digits-unet"
    t = bench.teacher_fid()
    assert t["fid"] == quality["summary"]["fid"][0] and t["n"] == quality["n"] == 1000
    a1 = bench.parse_args([])
    thr = bench.thresholds(a1, g0_fid=2.0)
    assert [thr[k] for k in ("0.45", "0.30", "0.20")] == [0.45, 0.30, 0.20]
    assert thr["2x teacher"] == 2.0 * quality["summary"]["fid"][0]
    a2 = bench.parse_args(["--phase", "2"])
    thr2 = bench.thresholds(a2, g0_fid=40.0)
    assert [thr2[k] for k in ("50% G0", "25% G0", "10% G0")] == [20.0, 10.0, 4.0]
    assert a2.generator_timestep == 999 and a2.max_steps == 2000 and a1.generator_timestep == 399
    # every arm shares every hyper-parameter; only the mode differs
    cfgs = {arm: bench.config(a1, arm, 0) for arm in bench.ARMS}
    strip = lambda c: {k: v for k, v in vars(c).items() if k != "mode"}  # noqa: E731
    assert all(strip(c) == strip(cfgs["A"]) for c in cfgs.values())
    assert {c.mode for c in cfgs.values()} == {"vanilla", "warm-critic", "disback", "delayed-teacher"}
    # C's path phase and D's hold last the same number of generator steps
    k = cfgs["C"]
    assert [cfgs["C"].target_node(s) > 0 for s in range(300)] == [cfgs["D"].target_node(s) > 0 for s in range(300)]
    assert sum(cfgs["C"].target_node(s) > 0 for s in range(1000)) == (k.path_nodes - 1) * k.steps_per_node == 200


def _arms(steps: dict) -> dict:
    """arms[arm]["thresholds"][name]["steps"] from {arm: {name: [seed0, seed1, seed2]}}."""
    return {arm: {"thresholds": {name: {"steps": dict(enumerate(v))} for name, v in per.items()}}
            for arm, per in steps.items()}


@pytest.mark.parametrize("c, b, d, expect", [
    ([100, 150, 200], [200, 200, 250], [200, 150, 300], "supports the paper"),        # C wins 2 of 3 seeds
    ([200, 150, 200], [200, 200, 250], [200, 150, 300], "inconclusive"),              # ties are not fewer
    ([300, 400, None], [200, 250, 300], [300, 300, 300], "the claim fails"),          # C later than B (None: missed)
    ([150, 150, 200], [300, 300, 300], [150, 100, 250], "the gain is warm-up"),       # C ≈ D, both beat B
    ([None, None, None], [None, None, None], [None, None, None], "inconclusive"),     # nobody reaches it
    ([400, None, 500], [None, None, None], [None, None, None], "supports the paper"),  # only C reaches it
])
def test_verdict_follows_the_rule(c, b, d, expect):
    names = ("0.30", "0.20")
    arms = _arms({"B": {n: b for n in names}, "C": {n: c for n in names}, "D": {n: d for n in names}})
    v = bench.verdict(arms, names, [0, 1, 2])
    assert v["verdict"].startswith(expect), v
    assert v["rule"] == bench.RULE


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
           "--json", str(js)]
    r = subprocess.run(cmd + ["--max-runs", "3"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "5 run(s) still to do" in r.stdout and not js.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[D seed 0]" in r.stdout and "[A seed 0]" not in r.stdout  # finished runs are skipped
    res = json.loads(js.read_text())
    assert set(res["arms"]) == set("ABCD") and res["missing_runs"] == []
    for arm in "ABCD":
        assert res["arms"][arm]["steps"] == [0, 2, 4, 6]
    # B, C and D share a seed's Stage-1 path (checked once per seed); C walks it back to the teacher,
    # D holds its last node for C's path phase, B targets the teacher throughout
    runs = {(r["arm"], r["seed"]): r for r in res["runs"]}
    assert [(s["step"], s["node"]) for s in runs["C", 0]["switches"]] == [(0, 2), (2, 1), (4, 0)]
    assert [(s["step"], s["node"]) for s in runs["D", 0]["switches"]] == [(0, 3), (4, 0)]
    assert [s["node"] for s in runs["B", 0]["switches"]] == [0]
    # a seed's path rejected by the check is re-recorded at the next length (the tiny paths always fail: the
    # last length is walked, with every attempt recorded)
    assert runs["A", 0]["stage1_steps"] == 0 and runs["C", 0]["stage1_steps"] == runs["B", 1]["stage1_steps"] == 8
    assert res["stage1_steps_per_seed"] == {"0": 8, "1": 8}
    assert [t["stage1_steps"] for t in res["path_attempts"]["0"]] == [6, 8]
    assert not any(t["accepted"] for t in res["path_attempts"]["1"])
    assert set(res["path_checks"]) == {"0", "1"} and "verdict" in res["verdict"]
    assert res["verdict"]["rule"] == bench.RULE
    assert js.with_suffix(".png").stat().st_size > 1000


def test_arm_a_does_not_read_the_stage1_settings(tmp_path, monkeypatch):
    # arm A's finished runs are kept when only Stage-1 settings change (same_settings): justified only if A's
    # training is bit-identical under other Stage-1 settings; any other arm's run is refused
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets both; restored after the test
    threads = torch.get_num_threads()

    def run_a(out, **change):
        monkeypatch.setattr(bench, "QUICK", dict(bench.QUICK, **change))
        assert bench.main(["--quick", "--out", str(out), "--arms", "A", "--seeds", "0", "--max-runs", "1"]) == 0
        return json.loads((out / "results" / "A-seed0.json").read_text())

    try:
        r1 = run_a(tmp_path / "a")
        r2 = run_a(tmp_path / "b", stage1_steps=9, stage1_extend=[10], stage1_lr=3e-5, path_spacing="even",
                   progress_candidates=3)
    finally:
        torch.set_num_threads(threads)
    assert [e["fid"] for e in r1["evals"]] == [e["fid"] for e in r2["evals"]]
    assert r1["settings"]["stage1_steps"] == 6 and r2["settings"]["stage1_steps"] == 9
    assert bench.same_settings(r1["settings"], r2["settings"], "A")
    assert not any(bench.same_settings(r1["settings"], r2["settings"], arm) for arm in "BCD")
    assert not bench.same_settings(r1["settings"], dict(r2["settings"], lr_fake=1.0), "A")
    assert not bench.same_settings(None, r2["settings"], "A")


def test_path_lengths_bench_records_each_length_with_the_experiments_own_stage1(tmp_path, monkeypatch, capsys):
    # disback_path --lengths: every length × seed recorded and checked through disback_convergence.stage1 (the
    # experiment's folders and check files), read back when finished; a run outside the grid is refused
    import disback_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = bench.evaluate_path

    def accept_12(m, *args, **kw):  # the tiny paths always fail: let the 12-step one pass, to see the choice
        c = real(m, *args, **kw)
        if m.info["stage1_steps"] == 12:
            c["accepted"], c["failed"] = True, []
        return c

    monkeypatch.setattr(bench, "evaluate_path", accept_12)
    assert disback_path.convergence is bench
    js = tmp_path / "lengths.json"
    argv = ["--quick", "--lengths", "--out", str(tmp_path / "runs"), "--json", str(js)]
    threads = torch.get_num_threads()
    try:
        assert disback_path.main(argv + ["--length-runs", "6:0"]) == 0
        assert "still to do (length:seed): [(12, 0)]" in capsys.readouterr().out and not js.exists()
        for bad, says in (("7:0", "--length-runs: [(7, 0)] not in the grid"), ("6-0", "--length-runs: expected")):
            with pytest.raises(SystemExit):
                disback_path.main(argv + ["--length-runs", bad])
            assert says in capsys.readouterr().err
        assert disback_path.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(js.read_text())
    assert [(x["stage1_steps"], x["seed"]) for x in res["runs"]] == [(6, 0), (12, 0)]
    for x in res["runs"]:
        check = json.loads((tmp_path / "runs" / "lengths" / f"s{x['stage1_steps']}" / "path-check-seed0.json")
                           .read_text())
        assert x["check"] == check and x["node_steps"][-1] == x["stage1_steps"]
        assert x["last_fd_g0"] == check["criteria"]["end"]["value"] and x["accepted"] == check["accepted"]
    assert [x["accepted"] for x in res["runs"]] == [False, True]
    assert res["accepted_lengths"] == [12] and res["chosen"] == 12 and res["first_accepted_per_seed"] == {"0": 12}


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
    # sample k's noise comes from (seed, k): the first 10 of a batch of 200 are the batch of 10, up to the CPU
    # kernels' batch-size-dependent summation order (bit-equal with 2 threads here, 8e-7 apart with 1 thread)
    again = pipe(class_labels=labels[:10], seed=0, output_type="pt").images
    torch.testing.assert_close(again, x[:10], rtol=0, atol=1e-5)


def test_demo_step_shows_onestep_beside_teacher(tmp_path):
    from diffkit.commands._demo import DemoContext
    from diffkit.commands.distill import demo_step

    ctx = DemoContext(str(tmp_path), quick=True)
    demo_step(ctx)
    assert (tmp_path / "onestep_vs_teacher.png").stat().st_size > 0
    assert any("One-step generator" in line and "top-1" in line for line in ctx.report)
