"""diffkit.run_loop: the run machinery both trainers share — one meaning of ``resume``, the
checkpoint cadence, the CSV log and the summary — and the trainers' evaluation hooks
(``evaluator`` for both, DisBack's ``after_stage1``)."""

import json

import pytest
import torch

from diffkit.commands.train_teacher import SCHEDULER, build_scheduler, build_unet
from diffkit.data import digits_tensors
from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.distill.path import PathManifest
from diffkit.run_loop import RunLoop, read_csv_log
from diffkit.run_state import list_checkpoints
from diffkit.testing import tiny_unet2d
from diffkit.train import DDPMEpsLoss, IndexedDataSource, Trainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _trainer(run_dir, max_steps=3, checkpoint_every=2, **kw):
    x, y = digits_tensors("train")
    cfg = TrainConfig(max_steps=max_steps, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=checkpoint_every,
                      progress=False)
    return Trainer(build_unet("tiny"), DDPMEpsLoss(build_scheduler().config, null_class=10),
                   IndexedDataSource(x, y), cfg, run_dir, **kw)


def _disback(run_dir, max_steps=3, checkpoint_every=2, mode="vanilla", **kw):
    cfg = DisBackConfig(mode=mode, max_steps=max_steps, batch_size=2, checkpoint_every=checkpoint_every,
                        stage1_steps=2, path_nodes=2, steps_per_node=1, stage1_eval_samples=4, warmup_steps=0,
                        verify_teacher=False, progress=False)
    return DisBackTrainer(tiny_unet2d(num_classes=10).eval(), SCHEDULER, cfg, run_dir, cpu=True, **kw)


BUILDERS = {"Trainer": _trainer, "DisBackTrainer": _disback}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_both_trainers_run_on_the_shared_loop_with_one_meaning_of_resume(kind, tmp_path, monkeypatch):
    build = BUILDERS[kind]
    saved = []
    real = RunLoop.checkpoint
    monkeypatch.setattr(RunLoop, "checkpoint", lambda self: saved.append(self.step) or real(self))
    tr = build(tmp_path / "run")
    assert isinstance(tr, RunLoop)
    with pytest.raises(FileNotFoundError, match="no checkpoint found under"):
        tr.fit(resume="latest")                       # nothing to resume: an error, in both trainers
    tr.fit()                                          # resume=None: a new run
    assert saved == [2, 3]                            # the cadence (every 2) and the final step
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000002", "step-0000003"]
    rows = read_csv_log(tmp_path / "run" / tr.log_file, tr.int_log_fields)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows == tr.log  # exact round trip
    assert json.loads((tmp_path / "run" / tr.summary_file).read_text())["step"] == 3
    # resume=None (no --resume) on a folder holding a checkpoint: refused, never overwritten
    with pytest.raises(ValueError, match=r"already holds a checkpoint \(step-0000003\): resume it \(--resume"):
        build(tmp_path / "run", max_steps=4).fit()
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        build(tmp_path / "run", max_steps=4).fit(resume=False)
    resumed = build(tmp_path / "run", max_steps=4)
    resumed.fit(resume="latest")                      # --resume: continues from step 3
    assert resumed.step == 4 and [r["step"] for r in resumed.log] == [1, 2, 3, 4]
    assert resumed.log[:3] == tr.log
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        build(tmp_path / "other").fit(resume=str(tmp_path))


def test_disback_resume_after_a_kill_in_stage1_starts_stage2(tmp_path, monkeypatch):
    """A run killed during Stage 1 has no Stage-2 checkpoint: --resume is still right there."""
    calls = []
    monkeypatch.setattr(DisBackTrainer, "_setup_stage2", lambda self: calls.append("setup") or
                        (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _disback(tmp_path / "run", mode="disback").fit()
    monkeypatch.undo()
    tr = _disback(tmp_path / "run", mode="disback", max_steps=1)
    tr.fit(resume="latest")
    assert calls == ["setup"] and tr.step == 1


def test_after_stage1_hook_is_called_once_with_the_path_and_lands_in_the_summary(tmp_path):
    seen = []

    def check(manifest):
        seen.append(manifest)
        return {"nodes": manifest.num_nodes, "ok": 1.0}

    tr = _disback(tmp_path / "run", mode="disback", max_steps=2, checkpoint_every=1, after_stage1=check)
    tr.fit()
    assert len(seen) == 1 and isinstance(seen[0], PathManifest) and seen[0].num_nodes == 2
    assert seen[0].directory == tmp_path / "run" / "stage1"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage1_check"] == {"nodes": 2, "ok": 1.0}
    tr.fit()                                            # a later call continues from memory: no second call
    resumed = _disback(tmp_path / "run", mode="disback", max_steps=3, checkpoint_every=1, after_stage1=check)
    resumed.fit(resume="latest")                        # restored from the checkpoint, not recomputed
    assert len(seen) == 1 and resumed.stage1_check == {"nodes": 2, "ok": 1.0}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stage1_check"]["nodes"] == 2
    vanilla = _disback(tmp_path / "v", after_stage1=check)  # no path, no call
    vanilla.fit()
    assert len(seen) == 1 and "stage1_check" in json.loads((tmp_path / "v" / "summary.json").read_text())


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_evaluator_hook_runs_at_the_cadence_and_the_end(kind, tmp_path):
    calls = []

    def evaluator(model_or_pipe, step):
        calls.append((type(model_or_pipe).__name__, step))
        return {"score": float(step)}

    if kind == "Trainer":
        tr = _trainer(tmp_path / "run", max_steps=3, evaluator=evaluator, eval_every=2)
        expected = [("UNet2DModel", 2), ("UNet2DModel", 3)]
    else:
        tr = _disback(tmp_path / "run", max_steps=3, evaluator=evaluator)
        tr.config.eval_every = 2
        expected = [("OneStepPipeline", 0), ("OneStepPipeline", 2), ("OneStepPipeline", 3)]
    tr.fit()
    assert calls == expected
    summary = json.loads((tmp_path / "run" / tr.summary_file).read_text())
    assert [e["step"] for e in summary["evals"]] == [s for _, s in expected]
    assert all(isinstance(e["score"], float) for e in summary["evals"])


def test_trainer_summary_has_no_evals_without_an_evaluator(tmp_path):
    tr = _trainer(tmp_path / "run", max_steps=1)
    tr.fit()
    assert "evals" not in json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert torch.isfinite(torch.tensor(tr.log[0]["loss"]))
