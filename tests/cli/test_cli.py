"""The diffkit CLI: help, info, sample, demo, bench dispatcher, placeholders."""

import json
import os
import subprocess
import sys

import pytest
from diffusers import DDIMScheduler

from diffkit.cli import main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ["info", "demo", "sample", "bench", "invert", "edit", "train-teacher", "train-features", "text",
                 "distill", "fid", "analyze"]:
        assert name in out


def test_info(capsys):
    import importlib.metadata as md
    import platform

    import torch

    from diffkit.attention import probe_xformers
    from diffkit.registry import available_samplers

    assert main(["info", "--device", "cpu"]) == 0
    lines = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines())
    expect = {"python": platform.python_version()}
    for name in ("diffkit", "torch", "diffusers", "accelerate", "transformers", "safetensors", "xformers"):
        try:
            expect[name] = md.version(name)
        except md.PackageNotFoundError:
            expect[name] = "not installed"
    assert {k: lines.get(k) for k in expect} == expect
    assert lines["device"] == "cpu"
    ok, reason = probe_xformers("cpu", torch.float32)
    assert lines["attention"] == f"{'xformers' if ok else 'sdpa'} (xformers {reason})"
    assert lines["samplers"].split(" (")[0].split(", ") == list(available_samplers())


def test_sample_writes_png(tmp_path, tiny_class_unet, capsys):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    ClassConditionalPipeline(tiny_class_unet, DDIMScheduler()).save_pretrained(tmp_path / "m")
    out = tmp_path / "s.png"
    assert main(["sample", "--model", str(tmp_path / "m"), "--sampler", "euler", "--steps", "3", "--n", "4",
                 "--output", str(out)]) == 0
    assert out.exists() and "NFE 3" in capsys.readouterr().out
    assert main(["sample", "--model", str(tmp_path / "m"), "--sampler", "bogus", "--output", str(out)]) == 1
    assert "unknown sampler 'bogus'" in capsys.readouterr().err


def test_demo_quick_writes_image_and_report(tmp_path):
    assert main(["demo", "--output", str(tmp_path), "--quick", "--only", "demo"]) == 0
    assert (tmp_path / "samples_ddim.png").exists()
    assert "# diffkit demo report" in (tmp_path / "report.md").read_text()


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    assert "benchmarks:" in capsys.readouterr().out


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "diffkit")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("diffkit ")


# ------------------------------------------------------------------ counts and the one-step generator at the CLI
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.pipelines.one_step import OneStepPipeline
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    root = tmp_path_factory.mktemp("models")
    ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler()).save_pretrained(root / "tiny-unet")
    OneStepPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler(),
                    generator_timestep=200).save_pretrained(root / "tiny-onestep")
    return root


BAD_COUNTS = [
    (["sample", "--model", "{unet}", "--steps", "-3"], "--steps", 1),
    (["sample", "--model", "{unet}", "--steps", "0"], "--steps", 1),
    (["sample", "--model", "{unet}", "--n", "0"], "--n", 1),
    (["sample-edm", "--model", "{unet}", "--nfe", "0"], "--nfe", 1),
    (["sample-edm", "--model", "{unet}", "--n", "-1"], "--n", 1),
    (["fid", "--model", "{unet}", "--steps", "-2", "--n", "10", "--ref", "digits-train"], "--steps", 1),
    (["fid", "--model", "{unet}", "--n", "0", "--ref", "digits-train"], "--n", 1),
    (["invert", "--model", "{unet}", "--steps", "1"], "--steps", 2),
    (["edit", "--model", "{unet}", "--steps", "-1"], "--steps", 2),
    (["distill", "--teacher", "{unet}", "--output", "x", "--eval-every", "1", "--eval-n", "0"], "--eval-n", 1),
]


@pytest.mark.parametrize("argv,flag,lo", BAD_COUNTS, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_counts_below_the_accepted_range_are_refused_naming_the_argument(argv, flag, lo, model_dirs, tmp_path,
                                                                        monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(unet=model_dirs / "tiny-unet") for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"argument {flag}: must be an integer >= {lo}, got " in capsys.readouterr().err


ONE_STEP_REFUSED = [
    ["sample-edm", "--model", "{one}", "--n", "2"],
    ["invert", "--model", "{one}", "--no-check"],
    ["edit", "--model", "{one}", "--digit", "0", "--source", "3", "--target", "8", "--steps", "4"],
    ["fid", "--model", "{one}", "--sampler", "edm-heun", "--n", "10", "--ref", "digits-train", "--no-progress"],
    ["sample", "--model", "{one}", "--sampler", "ddim", "--n", "2"],
    ["distill", "--teacher", "{one}", "--output", "out", "--mode", "vanilla", "--max-steps", "1", "--batch-size", "2",
     "--no-verify-teacher", "--cpu", "--no-progress"],
]


@pytest.mark.parametrize("argv", ONE_STEP_REFUSED, ids=lambda v: v[0])
def test_one_step_generator_is_refused_where_it_cannot_be_driven(argv, model_dirs, tmp_path, monkeypatch, capsys,
                                                                 one_thread):
    monkeypatch.chdir(tmp_path)
    assert main([a.format(one=model_dirs / "tiny-onestep") for a in argv]) == 1
    err = capsys.readouterr().err
    assert "tiny-onestep is a one-step generator (OneStepPipeline): it supports `diffkit sample` and `diffkit fid` " \
           "with its own sampler" in err
    assert "needs a diffusion model such as digits-unet" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_one_step_generator_samples_and_scores_with_its_own_sampler(model_dirs, tmp_path, capsys, one_thread):
    one = str(model_dirs / "tiny-onestep")
    assert main(["sample", "--model", one, "--n", "4", "--output", str(tmp_path / "s.png")]) == 0
    assert "NFE 1" in capsys.readouterr().out and (tmp_path / "s.png").exists()
    assert main(["fid", "--model", one, "--n", "20", "--ref", "digits-train", "--no-progress",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "FID = " in capsys.readouterr().out
    proto = json.loads((tmp_path / "r.json").read_text())[0]["protocol"]
    assert proto["sampler"] is None and proto["scheduler"] == "DDIMScheduler" and proto["steps"] == 1
