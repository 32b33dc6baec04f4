"""The diffkit CLI: help, info, sample, demo, bench dispatcher, placeholders."""

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
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "diffusers" in out and "attention" in out and "sdpa" in out or "xformers" in out


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
