"""Where the commands write: training outputs default to runs/, the shipped assets are only
replaced with --replace-asset (their SHA256SUMS rewritten), and an unwritable output is refused
before any work, in one line naming the argument."""

import hashlib
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from diffkit.assets import REBUILD
from diffkit.cli import main
from diffkit.weights import MANIFEST, check_manifest, manifest_text
from helpers import ASSETS, ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

TINY_TEACHER = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "8", "--no-progress"]
TINY_FEATURES = ["--max-steps", "2", "--batch-size", "8", "--no-progress"]
TINY_TEXT = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--no-progress"]
TINY_DISTILL = ["--mode", "vanilla", "--max-steps", "1", "--batch-size", "2", "--no-verify-teacher", "--cpu",
                "--no-progress", "--sample-every", "0", "--no-final-fid"]


def _hashes(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """The current folder is a copy of the checkout's layout whose assets/ is the shipped assets
    folder (DIFFKIT_ASSETS): commands run here as they would from the repository root, without
    any risk to the real assets."""
    root = tmp_path / "repo"
    shutil.copytree(ASSETS, root / "assets")
    monkeypatch.chdir(root)
    monkeypatch.setenv("DIFFKIT_ASSETS", str(root / "assets"))
    return root


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    d = tmp_path_factory.mktemp("teacher") / "tiny-teacher"
    ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler()).save_pretrained(d)
    return d


# ------------------------------------------------------------------ item: outputs default to runs/
def test_training_commands_with_default_output_leave_the_assets_untouched(repo_copy, tiny_teacher_dir):
    from diffkit.pipelines import load_pipeline

    real_before, before = _hashes(ASSETS), _hashes(repo_copy / "assets")
    assert main(["train-teacher", *TINY_TEACHER]) == 0
    assert main(["train-features", *TINY_FEATURES]) == 0
    assert main(["text", "train", *TINY_TEXT]) == 0
    changed = sorted(k for k in set(before) | set(_hashes(repo_copy / "assets"))
                     if before.get(k) != _hashes(repo_copy / "assets").get(k))
    assert not changed                                       # `git status` stays clean from the repo root
    assert main(["distill", "--teacher", str(tiny_teacher_dir), *TINY_DISTILL]) == 0
    assert _hashes(repo_copy / "assets") == before
    assert _hashes(ASSETS) == real_before
    runs = repo_copy / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["distill", "distill-run", "text-train", "text-train-run",
                                                     "train-features", "train-features-run", "train-teacher",
                                                     "train-teacher-run"]
    for name in ("train-teacher", "train-features", "text-train", "distill"):
        assert check_manifest(runs / name)                   # each export is a complete, checked model folder
        assert not (runs / name / "checkpoints").exists() and (runs / f"{name}-run" / "checkpoints").is_dir()
    assert load_pipeline(runs / "train-teacher").num_classes == 10


def test_replacing_a_shipped_asset_needs_the_flag_and_rewrites_its_manifest(repo_copy, capsys):
    from diffkit.pipelines import load_pipeline

    before = _hashes(repo_copy / "assets")
    refused = [["train-teacher", *TINY_TEACHER, "--output", "assets/digits-unet"],
               ["train-teacher", *TINY_TEACHER, "--output", "digits-unet"],          # the asset's bare name
               ["train-teacher", *TINY_TEACHER, "--output", str(repo_copy / "assets" / "my-model")],
               ["train-features", *TINY_FEATURES, "--output", "assets/digits-features"],
               ["text", "train", *TINY_TEXT, "--output", "assets/text-radd"],
               ["distill", "--teacher", "digits-unet", *TINY_DISTILL, "--output", "assets/digits-onestep"],
               ["train-teacher", *TINY_TEACHER, "--run-dir", "assets/runs"]]
    for argv in refused:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("needs --replace-asset" in err or "--run-dir assets/runs is in the shipped "
                                         "assets" in err), err
    assert _hashes(repo_copy / "assets") == before
    assert not (repo_copy / "runs").exists() and not (repo_copy / "digits-unet").exists()

    # with the flag, a bare asset name is the shipped folder; model card and PNGs are kept
    assert main(["train-teacher", *TINY_TEACHER, "--output", "digits-unet", "--replace-asset"]) == 0
    folder = repo_copy / "assets" / "digits-unet"
    after = _hashes(repo_copy / "assets")
    w = "digits-unet/unet/diffusion_pytorch_model.safetensors"
    assert after[w] != before[w] and after["digits-unet/README.md"] == before["digits-unet/README.md"]
    assert (folder / MANIFEST).read_text() == manifest_text(folder) and check_manifest(folder)
    assert load_pipeline("digits-unet").unet.config.block_out_channels == [16, 32]   # the tiny preset, verified
    assert (repo_copy / "runs" / "digits-unet" / "checkpoints").is_dir()             # run folder outside assets
    assert not (repo_copy / "digits-unet").exists()


def test_every_rebuild_command_passes_the_flag():
    for name, (_, cmd) in REBUILD.items():
        assert cmd.count("--replace-asset") == cmd.count("--output assets/") >= 1, name
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if "--output assets/" in ln]
    assert len(lines) >= 4
    for ln in lines:
        assert "--replace-asset" in ln, ln


def test_run_folder_is_never_the_exported_model_folder(tmp_path, capsys, monkeypatch):
    from diffkit.train import default_run_dir

    monkeypatch.chdir(tmp_path)
    assert default_run_dir("assets/digits-unet") == Path("runs/digits-unet")
    assert default_run_dir("runs/onestep") == Path("runs/onestep-run")
    assert default_run_dir(tmp_path / "runs" / "x") == Path("runs/x-run")
    for run_dir in ("out", "out/ckpt"):
        assert main(["train-features", *TINY_FEATURES, "--output", "out", "--run-dir", run_dir]) == 1
        err = capsys.readouterr().err
        assert err.startswith("diffkit train-features: error: run_dir (--run-dir)") and "inside it" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ item: unwritable outputs, up front
class _WorkStarted(AssertionError):
    pass


def _no_work(*a, **k):
    raise _WorkStarted("the command started its work before checking its output")


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work entry point (loading its model, training, analysing) fails the test if reached."""
    import diffkit.analysis.report as report
    import diffkit.commands.text as text
    import diffkit.commands.train_features as train_features
    import diffkit.commands.train_teacher as train_teacher
    import diffkit.metrics.fid as fid
    import diffkit.pipelines as pipelines
    import diffkit.text_train as text_train

    for mod, name in ((pipelines, "load_pipeline"), (report, "analyze_digits"), (fid, "evaluate"),
                      (train_teacher, "train_teacher"), (train_features, "train_features"),
                      (text_train, "train_text_model"), (text, "_pipeline")):
        monkeypatch.setattr(mod, name, _no_work)


def _cases(block: str, folder: str):
    return [
        (f"sample --model digits-unet --output {block}/s.png", "--output", "is a file, not a folder"),
        (f"sample --model digits-unet --output {folder}", "--output", "is a folder; give a file name"),
        (f"sample-edm --model digits-unet --output {folder}", "--output", "is a folder"),
        (f"edit --model digits-unet --digit 0 --output {folder}", "--output", "is a folder"),
        (f"invert --model digits-unet --output {block}/x/inv.safetensors", "--output", "is a file, not a folder"),
        (f"analyze --quick --output {block}", "--output", "is a file; give a folder"),
        (f"fid --model digits-unet --n 10 --ref digits-train --json {folder}", "--json", "is a folder"),
        (f"fid --model digits-unet --n 10 --ref digits-train --save-stats {block}/s.npz", "--save-stats",
         "is a file, not a folder"),
        (f"text sample --output {folder}", "--output", "is a folder"),
        (f"demo --output {block}", "--output", "is a file; give a folder"),
        (f"train-teacher --output {block}", "--output", "is a file; give a folder"),
        (f"train-teacher --run-dir {block}/r", "--run-dir", "is a file, not a folder"),
        (f"train-features --output {block}/f", "--output", "is a file, not a folder"),
        (f"text train --output {block}", "--output", "is a file; give a folder"),
        (f"distill --teacher digits-unet --output {block}", "--output", "is a file; give a folder"),
    ]


def test_unwritable_outputs_are_refused_before_any_work_in_one_line(tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image: past the suffix check, refused as a folder
    for line, arg, why in _cases("blocker", "folder.png"):
        argv = shlex.split(line)
        assert main(argv) == 1, line
        err = capsys.readouterr().err
        cmd = argv[0] if argv[0] != "text" else "text"
        assert err.count("\n") == 1 and err.startswith(f"diffkit {cmd}: error: {arg} "), (line, err)
        assert why in err, (line, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder.png"]  # nothing created
    assert not list((tmp_path / "folder.png").iterdir())


def test_output_checks_name_an_unwritable_folder(tmp_path, monkeypatch):
    from diffkit.commands._outputs import OutputError, check_output_dir, check_output_file

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))  # (root ignores chmod)
    with pytest.raises(OutputError, match=re.escape(f"--json {ro}/new/r.json: folder {ro} is not writable")):
        check_output_file(ro / "new" / "r.json", "--json")
    with pytest.raises(OutputError, match=re.escape(f"--output {ro}: folder is not writable")):
        check_output_dir(ro, "--output")
    with pytest.raises(OutputError, match=re.escape(f"--output {ro}/m: folder {ro} is not writable")):
        check_output_dir(ro / "m", "--output", replace=True)
    check_output_file(tmp_path / "a" / "b" / "c.png")             # creatable: fine, and nothing is created
    check_output_dir(tmp_path / "a" / "b", replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]
