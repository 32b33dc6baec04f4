"""The DisBack path check (diffkit.metrics.path_check, issue #20 item 1): the rule on numbers
(a geometric path passes; the issue's degenerate path and each broken criterion fail, by name),
and end to end through ``DisBackTrainer(after_stage1=...)`` on a tiny teacher: a path whose
first node already sits at the last one (it holds all of the DSM-loss drop) is flagged with a
warning, refused with ``require_path``, and recorded in the run summary either way. Also
Stage 1's own learning rate and the log-spaced snapshot schedules."""

import json
import shutil
import warnings

import pytest
import torch

from diffkit.cli import main
from diffkit.commands.train_teacher import SCHEDULER, build_scheduler, export_pipeline
from diffkit.data import digits_tensors
from diffkit.distill.config import DisBackConfig
from diffkit.distill.disback import DisBackTrainer
from diffkit.distill.losses import score_loss
from diffkit.distill.path import PATH_FILE, load_path_manifest, log_spaced_steps, select_nodes, stage1_boundaries
from diffkit.metrics.path_check import (CRITERIA, PathCheckError, PathCheckWarning, path_check_hook,
                                        path_criteria)
from diffkit.pipelines import load_pipeline
from diffkit.testing import tiny_unet2d

pytestmark = pytest.mark.usefixtures("one_thread")

FLOOR = 0.024  # the G⁰-vs-G⁰ floor the issue measured (n = 500)


def geometric(d0=1.97, dN=0.04, N=5):
    return [d0 * (dN / d0) ** (i / N) for i in range(N + 1)]


# ---------------------------------------------------------------------------- the rule on numbers
def test_a_geometric_path_with_even_loss_steps_is_accepted():
    r = path_criteria(geometric(), FLOOR, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert r["accepted"] and r["failed"] == []
    assert set(r["criteria"]) == set(CRITERIA)
    # "roughly": every interior node may sit up to 2× off the interpolation
    d = geometric()
    d[2] *= 1.9
    assert path_criteria(d, FLOOR, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])["accepted"]


def test_the_issues_degenerate_path_fails_by_name():
    # node 1 after 80 of 400 steps: 88 % of the DSM-loss drop, distance 0.15 to G⁰ (teacher 1.97)
    d = [1.97, 0.15, 0.05, 0.045, 0.04, 0.035]
    loss = [1.0, 0.12, 0.06, 0.03, 0.01, 0.0]
    r = path_criteria(d, FLOOR, loss)
    assert not r["accepted"]
    assert r["failed"] == ["geometric", "drops", "loss_share"]
    assert r["criteria"]["loss_share"]["value"] == pytest.approx(0.88)
    assert "node 1 holds 88 %" in r["criteria"]["loss_share"]["detail"]


@pytest.mark.parametrize("case, failed", [
    ("end", ["end"]),                # the last node never reaches G⁰
    ("plateau", ["drops"]),          # two nodes a floor apart: no measurable step
    ("one_node_drop", ["loss_share"]),  # one node holds the loss drop, the distances still look fine
    ("jump", ["geometric"]),         # an early fall of the distance, steps still measurable
    ("no_loss_drop", ["loss_share"]),
])
def test_each_criterion_fails_alone(case, failed):
    d, loss = geometric(), [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    if case == "end":
        d = geometric(dN=0.2)
    elif case == "plateau":
        d = [1.97, 0.9, 0.4, 0.19, 0.17, 0.04]
    elif case == "one_node_drop":
        loss = [1.0, 0.3, 0.2, 0.1, 0.05, 0.0]
    elif case == "jump":
        d = [1.97, 0.4, 0.3, 0.19, 0.088, 0.04]  # node 1 2.3x below the interpolation 0.90
    elif case == "no_loss_drop":
        loss = [1.0, 1.0, 1.1, 1.05, 1.02, 1.01]
    r = path_criteria(d, FLOOR, loss)
    assert r["failed"] == failed, r["criteria"]
    assert not r["accepted"]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="floor"):
        path_criteria(geometric(), 0.0, [1, 0.8, 0.6, 0.4, 0.2, 0])
    with pytest.raises(ValueError, match="fd_g0 and dsm_loss"):
        path_criteria(geometric(), FLOOR, [1.0, 0.0])


# ---------------------------------------------------------------------------- Stage-1 schedule
def test_stage1_lr_default_falls_back_to_lr_fake_and_is_recorded():
    assert DisBackConfig(lr_fake=3e-4).stage1_learning_rate == 1e-5   # the default: the path that passed the check
    assert DisBackConfig(lr_fake=3e-4, stage1_lr=None).stage1_learning_rate == 3e-4
    assert DisBackConfig(lr_fake=3e-4, stage1_lr=1e-5).stage1_learning_rate == 1e-5
    with pytest.raises(ValueError, match="stage1_lr"):
        DisBackConfig(stage1_lr=0.0)


def test_log_spacing_is_fine_early_and_ends_at_the_last_step():
    assert log_spaced_steps(5, 400) == [3, 11, 36, 121, 400]
    steps = stage1_boundaries(400, 5, "log-progress", 8)
    assert len(steps) == 40 and steps[:3] == [1, 2, 3] and steps[-1] == 400 and steps == sorted(set(steps))
    assert stage1_boundaries(400, 5, "even", 8) == [80, 160, 240, 320, 400]  # the default is unchanged
    assert stage1_boundaries(4, 3, "log-progress", 4) == [1, 2, 3, 4]        # capped at one per step
    # progress selection over log-spaced candidates picks early nodes when the loss falls early
    cands = [{"step": s, "file": f"{s}", "eval_loss": 1.0 / (1 + s)} for s in steps]
    chosen, fell_back = select_nodes(cands, 1.0, 5, "log-progress")
    assert not fell_back and [c["step"] for c in chosen] == [1, 2, 3, 4, 400]


# ---------------------------------------------------------------------------- end to end
SMALL = dict(batch_size=4, stage1_steps=6, path_nodes=3, steps_per_node=2, max_steps=1, checkpoint_every=0,
             stage1_eval_samples=16, warmup_steps=1, lr_generator=1e-4, lr_fake=1e-3, progress=False,
             generator_timestep=399)


@pytest.fixture(scope="module")
def teacher_pipe(tmp_path_factory):
    unet = tiny_unet2d(num_classes=10).train()
    x, y = digits_tensors("train")
    loss = score_loss(SCHEDULER, seed=0, label_dropout=0.1, null_class=10, t_range=(0, 999))
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    for s in range(20):
        idx = torch.arange(s * 16, s * 16 + 16)
        value = loss(unet, (x[idx % len(x)], y[idx % len(x)]), idx, s)
        opt.zero_grad()
        value.backward()
        opt.step()
    d = export_pipeline(unet.eval(), build_scheduler(), tmp_path_factory.mktemp("teacher") / "tiny")
    pipe = load_pipeline(d)
    pipe.set_progress_bar_config(disable=True)
    pipe.folder = str(d)
    return pipe


@pytest.fixture(scope="module")
def recorded(teacher_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("path") / "stage1"
    DisBackTrainer(teacher_pipe.unet, SCHEDULER, DisBackConfig(**SMALL), d.parent / "run", stage1_dir=d,
                   cpu=True).run_stage1()
    return d


def collapse(src, dst):
    """A copy of a recorded path in which every node is the last one (the issue's degenerate path in
    the extreme: node 1 already describes G⁰ and holds the whole DSM-loss drop)."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / PATH_FILE).read_text())
    last = raw["nodes"][-1]
    for node in raw["nodes"][1:-1]:
        node.update({k: last[k] for k in ("step", "file", "sha256", "eval_loss", "bytes")})
    (dst / PATH_FILE).write_text(json.dumps(raw))
    return dst


def hook(pipe, **kw):
    return path_check_hook(pipe, n=20, steps=5, **kw)


def test_the_check_measures_every_node_and_the_references(teacher_pipe, recorded):
    m = load_path_manifest(recorded)
    with warnings.catch_warnings():  # the tiny path may fail the rule; here only the measurements matter
        warnings.simplefilter("ignore", PathCheckWarning)
        record = hook(teacher_pipe)(m)
    assert [v["index"] for v in record["nodes"]] == [0, 1, 2, 3]
    assert [v["dsm_loss"] for v in record["nodes"]] == [n["eval_loss"] for n in m.nodes]
    assert record["floor"] > 0 and record["teacher_fd_g0"] == record["nodes"][0]["fd_g0"]
    assert record["generator_timestep"] == 399 and record["n"] == 20
    assert all(v["fid_data"] > 0 and v["fd_g0"] > 0 for v in record["nodes"])
    assert record["accepted"] == (record["failed"] == [])


def test_a_collapsed_path_is_flagged_refused_and_recorded(teacher_pipe, recorded, tmp_path):
    bad = collapse(recorded, tmp_path / "collapsed")
    cfg = DisBackConfig(**SMALL)
    run = tmp_path / "warn"
    tr = DisBackTrainer(teacher_pipe.unet, SCHEDULER, cfg, run, stage1_dir=bad, cpu=True,
                        after_stage1=hook(teacher_pipe))
    with pytest.warns(PathCheckWarning, match="loss_share: node 1 holds 100 %"):
        tr.fit()
    check = json.loads((run / "summary.json").read_text())["stage1_check"]
    assert check["accepted"] is False and "loss_share" in check["failed"] and "drops" in check["failed"]
    assert check["criteria"]["loss_share"]["shares"][0] == pytest.approx(1.0)
    assert check["nodes"][1]["fd_g0"] == check["nodes"][3]["fd_g0"]  # the same network, the same samples
    assert tr.step == 1  # warned, then Stage 2 ran

    run = tmp_path / "refuse"
    tr = DisBackTrainer(teacher_pipe.unet, SCHEDULER, cfg, run, stage1_dir=bad, cpu=True,
                        after_stage1=hook(teacher_pipe, require_path=True))
    with pytest.raises(PathCheckError, match="failed the path check.*loss_share"):
        tr.fit()
    assert tr.step == 0 and not (run / "log.csv").exists()
    check = json.loads((run / "summary.json").read_text())["stage1_check"]
    assert check["accepted"] is False and check["require_path"] is True


def test_cli_require_path_refuses_a_collapsed_path(teacher_pipe, recorded, tmp_path, capsys):
    bad = collapse(recorded, tmp_path / "collapsed")
    argv = ["distill", "--teacher", teacher_pipe.folder, "--mode", "disback", "--output", str(tmp_path / "g"),
            "--run-dir", str(tmp_path / "run"), "--stage1-dir", str(bad), "--max-steps", "1", "--batch-size", "4",
            "--stage1-steps", "6", "--path-nodes", "3", "--generator-timestep", "399", "--cpu", "--no-progress",
            "--require-path", "--path-check-n", "20"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "failed the path check" in err and "loss_share" in err
