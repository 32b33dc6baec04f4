"""`diffkit distill`'s defaults (issue #20 item 4) and the closing FID-digits beside G⁰'s."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import pytest
from diffusers import DDIMScheduler

from diffkit.cli import main
from diffkit.commands import distill as cmd
from diffkit.distill.config import DisBackConfig
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import disback_convergence as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

TINY = ["--mode", "vanilla", "--max-steps", "1", "--batch-size", "2", "--no-verify-teacher", "--cpu", "--no-progress",
        "--sample-every", "0"]


def _parse(*argv):
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(["--teacher", "x", *argv])


def test_command_defaults_are_the_config_defaults():
    # every DisBackConfig default reaches the command unchanged (a flag whose default is None, e.g. the old
    # --stage1-lr / --generator-timestep, would silently replace the config's value)
    assert asdict(cmd.config_from_args(_parse())) == asdict(DisBackConfig())


def test_defaults_are_the_convergence_experiments_phase1_settings():
    # the defaults are the shared settings of the four-arm experiment's phase 1 (its Stage-1 path passed the
    # path check): generator timestep 399, not the top timestep 999 whose pure-noise input ended in noise
    d = asdict(DisBackConfig())
    phase1 = {k: v for k, v in bench.PHASES[1].items() if k in d and k not in ("eval_every",)}
    assert {k: d[k] for k in phase1} == phase1
    assert d["generator_timestep"] == 399 and d["mode"] == "disback"
    assert (d["path_nodes"] - 1) * d["steps_per_node"] <= d["max_steps"] // 4   # the path phase leaves the teacher 3/4


def test_final_fid_is_printed_beside_g0s_and_stored_in_the_summary(tmp_path, capsys):
    from diffkit.metrics.evaluators import fid_digits_evaluator
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.pipelines.one_step import OneStepPipeline
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    teacher = tmp_path / "teacher"
    ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler()).save_pretrained(teacher)
    assert main(["distill", "--teacher", str(teacher), *TINY, "--final-fid-n", "20", "--output", str(tmp_path / "g"),
                 "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["final_fid"]
    assert rec["n"] == 20 and rec["seed"] == 0 and rec["generator_timestep"] == 399
    line = next(x for x in out.splitlines() if x.startswith("FID-digits (n = 20, seed 0, one step): "))
    assert f"{rec['fid']:.3f}" in line and f"G⁰'s {rec['g0_fid']:.3f}" in line and f"ratio {rec['ratio']:.2f}" in line
    assert rec["ratio"] == pytest.approx(rec["fid"] / rec["g0_fid"])
    assert rec["improved"] == (rec["fid"] < rec["g0_fid"]) and (("did NOT" in line) != rec["improved"])
    # G⁰ is the teacher's own one-step x̂0 at t_g = 399 (same n, seed, labels); the generator is the export
    pipe = load_pipeline(teacher)
    evaluate = fid_digits_evaluator(n=20, seed=0, steps=1)
    g0 = OneStepPipeline(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config), 399)
    assert rec["g0_fid"] == pytest.approx(evaluate(g0, 0)["fid"], rel=1e-5)
    assert rec["fid"] == pytest.approx(evaluate(load_pipeline(tmp_path / "g"), 1)["fid"], rel=1e-5)


def test_final_fid_can_be_skipped_and_a_bad_n_is_refused_before_training(tmp_path, capsys):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    teacher = tmp_path / "teacher"
    ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler()).save_pretrained(teacher)
    assert main(["distill", "--teacher", str(teacher), *TINY, "--final-fid-n", "25", "--output",
                 str(tmp_path / "bad"), "--run-dir", str(tmp_path / "bad-run")]) == 1
    assert "--final-fid-n" in capsys.readouterr().err and not (tmp_path / "bad-run" / "checkpoints").exists()
    assert main(["distill", "--teacher", str(teacher), *TINY, "--no-final-fid", "--output", str(tmp_path / "g"),
                 "--run-dir", str(tmp_path / "run")]) == 0
    assert "final FID-digits: skipped (--no-final-fid)" in capsys.readouterr().out
    assert "final_fid" not in json.loads((tmp_path / "run" / "summary.json").read_text())
