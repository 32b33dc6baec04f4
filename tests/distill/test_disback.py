"""DisBack trainer: path recording, strict target switches, modes, exact resume, 1- vs
2-process agreement, export to a one-step pipeline, and clear errors on bad input.

The teacher is ``tiny_unet2d(num_classes=10)`` trained for 20 ε-prediction steps on the
digits (enough for its top-timestep output to be the input noise, which the
prediction-type check looks at)."""

import copy
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffkit.cli import main
from diffkit.commands.train_teacher import SCHEDULER, build_scheduler, export_pipeline
from diffkit.conditioning import Guidance, class_guidance
from diffkit.data import digits_tensors
from diffkit.denoisers import Denoiser, EpsModel
from diffkit.distill.disback import DisBackConfig, DisBackTrainer, load_path_manifest, state_fingerprint
from diffkit.distill.generator import OneStepGenerator
from diffkit.distill.losses import score_loss
from diffkit.seeding import randn_for_indices
from diffkit.testing import tiny_unet2d
from diffkit.train import latest_checkpoint
from diffkit.weights import load_state_dict_strict
from helpers import ROOT

SMALL = dict(batch_size=4, stage1_steps=6, path_nodes=3, steps_per_node=2, max_steps=6, checkpoint_every=0,
             stage1_eval_samples=16, warmup_steps=2, lr_generator=1e-4, lr_fake=1e-3, progress=False)


def small(**kw):
    return DisBackConfig(**{**SMALL, **kw})


def _train_tiny(prediction_type="epsilon", steps=20, seed=0):
    cfg = {**SCHEDULER, "prediction_type": prediction_type}
    unet = tiny_unet2d(num_classes=10, seed=seed).train()
    x, y = digits_tensors("train")
    loss = score_loss(cfg, seed=0, label_dropout=0.1, null_class=10, t_range=(0, 999))
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    for s in range(steps):
        idx = torch.arange(s * 16, s * 16 + 16)
        value = loss(unet, (x[idx % len(x)], y[idx % len(x)]), idx, s)
        opt.zero_grad()
        value.backward()
        opt.step()
    return unet.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def teacher():
    return _train_tiny()


@pytest.fixture(scope="session")
def teacher_dir(teacher, tmp_path_factory):
    return export_pipeline(teacher, build_scheduler(), tmp_path_factory.mktemp("teacher") / "tiny-teacher")


@pytest.fixture(scope="session")
def shared_path(teacher, tmp_path_factory):
    """A Stage-1 path (N = 3 nodes after 2, 4, 6 steps) shared by the Stage-2 tests."""
    d = tmp_path_factory.mktemp("path") / "stage1"
    DisBackTrainer(teacher, SCHEDULER, small(), d.parent / "run", stage1_dir=d, cpu=True).run_stage1()
    return d


def trainer(teacher, run_dir, path=None, **kw):
    return DisBackTrainer(teacher, SCHEDULER, small(**kw), run_dir, stage1_dir=path, cpu=True)


def _equal_states(a, b):
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ---------------------------------------------------------------------------- Stage 1
def test_stage1_records_teacher_then_nodes_with_hashes(shared_path, teacher):
    m = load_path_manifest(shared_path, state_fingerprint(teacher), 3)
    assert [n["step"] for n in m.nodes] == [0, 2, 4, 6]            # node 0 = the teacher, N = 3 stored
    assert m.nodes[0]["file"] is None and m.nodes[0]["sha256"] == state_fingerprint(teacher)
    sizes = {m.node_file(i).stat().st_size for i in (1, 2, 3)}
    assert len(sizes) == 1 and m.disk_bytes == 3 * sizes.pop()      # N × model size, reported
    assert not list((shared_path / "checkpoints").glob("step-*"))   # optimiser state dropped once done
    teacher_sd = teacher.state_dict()
    prints = {state_fingerprint(teacher)}
    for i in (1, 2, 3):
        sd = load_file(str(m.node_file(i)))
        assert set(sd) == set(teacher_sd) and not _equal_states(sd, teacher_sd)
        prints.add(json.dumps(sorted((k, v.sum().item()) for k, v in sd.items())))
    assert len(prints) == 4                                         # every node differs
    # Stage 1 fits the score to G⁰'s samples: the DSM loss on a fixed G⁰ batch falls from the teacher
    assert m.nodes[3]["eval_loss"] < m.nodes[0]["eval_loss"]


def test_stage1_progress_spacing_follows_measured_loss(teacher, tmp_path):
    tr = trainer(teacher, tmp_path / "run", path_nodes=2, path_spacing="progress", progress_candidates=3)
    m = tr.run_stage1()
    cands = m.info["candidates"]
    assert [c["step"] for c in cands] == [1, 2, 3, 4, 5, 6]
    l0, lN = m.nodes[0]["eval_loss"], cands[-1]["eval_loss"]
    prog = [(l0 - c["eval_loss"]) / (l0 - lN) for c in cands]
    first = next(k for k in range(len(cands) - 1) if prog[k] >= 0.5)  # node 1: half the loss drop
    assert [n["step"] for n in m.nodes] == [0, cands[first]["step"], 6]
    assert sorted(p.name for p in (m.directory / "path").iterdir()) == sorted(Path(n["file"]).name
                                                                            for n in m.nodes[1:])


def test_stage1_resumes_after_a_kill(teacher, shared_path, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = DisBackTrainer.stage1_eval_loss

    def dying(self, unet):
        calls["n"] += 1
        if calls["n"] == 3:  # after the step-4 snapshot was written, before it was recorded
            raise KeyboardInterrupt
        return real(self, unet)

    monkeypatch.setattr(DisBackTrainer, "stage1_eval_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer(teacher, tmp_path / "run").run_stage1()
    monkeypatch.setattr(DisBackTrainer, "stage1_eval_loss", real)
    m = trainer(teacher, tmp_path / "run").run_stage1()
    ref = load_path_manifest(shared_path)
    assert [n["sha256"] for n in m.nodes] == [n["sha256"] for n in ref.nodes]  # bit-identical path


# ---------------------------------------------------------------------------- Stage 2
def test_target_switches_load_the_recorded_nodes_strictly(teacher, shared_path, tmp_path):
    tr = trainer(teacher, tmp_path / "run", shared_path, max_steps=5)
    m = load_path_manifest(shared_path)
    tr.fit(stop_at=0)
    assert _equal_states(tr.fake_unwrapped.state_dict(), load_file(str(m.node_file(3))))  # fake ← node N
    assert _equal_states(tr.gen_unwrapped.unet.state_dict(), teacher.state_dict())         # G ← teacher
    for k in range(1, 6):
        tr.fit(stop_at=k)
        node = max(2 - (k - 1) // 2, 0)            # N−1 … 0, K2 = 2 generator steps each, then the teacher
        assert tr.target_index == node == tr.log[-1]["target_node"]
        if node:
            assert _equal_states(tr.target_unet.state_dict(), load_file(str(m.node_file(node))))
        else:
            assert tr.target_unet is tr.teacher
    assert [(s["step"], s["node"]) for s in tr.switches] == [(0, 2), (2, 1), (4, 0)]
    assert [s["sha256"] for s in tr.switches] == [m.nodes[i]["sha256"] for i in (2, 1, 0)]


def test_delayed_teacher_holds_the_last_node_for_the_path_phase(teacher, shared_path, tmp_path):
    # N = 3 nodes, K2 = 2: DisBack walks nodes 2, 1 for 4 steps; the control holds node 3 (= the fake's init)
    tr = trainer(teacher, tmp_path / "run", shared_path, mode="delayed-teacher", max_steps=6)
    m = load_path_manifest(shared_path)
    tr.fit(stop_at=0)
    assert _equal_states(tr.fake_unwrapped.state_dict(), load_file(str(m.node_file(3))))
    tr.fit()
    assert [r["target_node"] for r in tr.log] == [3, 3, 3, 3, 0, 0]
    assert [(s["step"], s["node"]) for s in tr.switches] == [(0, 3), (4, 0)]
    assert [s["sha256"] for s in tr.switches] == [m.nodes[i]["sha256"] for i in (3, 0)]


@pytest.mark.parametrize("mode", ["vanilla", "warm-critic"])
def test_modes_differ_only_in_initialisation_and_target(teacher, shared_path, tmp_path, mode):
    tr = trainer(teacher, tmp_path / "run", shared_path if mode != "vanilla" else None, mode=mode, max_steps=1)
    tr.fit(stop_at=0)
    init = teacher.state_dict() if mode == "vanilla" else load_file(str(load_path_manifest(shared_path).node_file(3)))
    assert _equal_states(tr.fake_unwrapped.state_dict(), init)
    tr.fit()
    assert [r["target_node"] for r in tr.log] == [0] and tr.target_unet is tr.teacher
    assert not (tmp_path / "run" / "stage1").exists()


def test_kill_and_resume_equals_uninterrupted_run(teacher, shared_path, tmp_path, monkeypatch):
    kw = dict(max_steps=4, checkpoint_every=2, fake_updates=2)
    a = trainer(teacher, tmp_path / "a", shared_path, **kw)
    a.fit()

    real = DisBackTrainer.train_step

    def dying(self):
        if self.step == 3:
            raise KeyboardInterrupt  # killed during step 4; the last checkpoint is step 2
        return real(self)

    monkeypatch.setattr(DisBackTrainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer(teacher, tmp_path / "b", shared_path, **kw).fit()
    monkeypatch.setattr(DisBackTrainer, "train_step", real)
    b = trainer(teacher, tmp_path / "b", shared_path, **kw)
    b.fit(resume="latest")                               # resumes from checkpoints/step-0000002
    assert b.step == a.step == 4
    assert _equal_states(b.gen_unwrapped.unet.state_dict(), a.gen_unwrapped.unet.state_dict())
    assert _equal_states(b.ema.shadow, a.ema.shadow)
    assert _equal_states(b.fake_unwrapped.state_dict(), a.fake_unwrapped.state_dict())
    strip = lambda log: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in log]  # noqa: E731
    assert strip(b.log) == strip(a.log) and len(a.log) == 4
    assert [(s["step"], s["node"]) for s in b.switches] == [(s["step"], s["node"]) for s in a.switches]
    with open(tmp_path / "b" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 5))


class _Unhandled(Exception):
    pass


@pytest.fixture
def guard_sigterm():
    """SIGTERM raises _Unhandled unless the code under test installs its own handler (the test
    process must never die of it); the test checks that this handler comes back."""
    def handler(signum, frame):
        raise _Unhandled(f"signal {signum} reached the previous handler")

    old = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, old)


def test_sigint_in_stage2_checkpoints_that_step_and_resume_equals_uninterrupted_run(teacher, shared_path, tmp_path,
                                                                                   monkeypatch, one_thread):
    kw = dict(max_steps=4, checkpoint_every=0, fake_updates=2, sample_every=2)
    a = trainer(teacher, tmp_path / "a", shared_path, **kw)
    a.fit()
    real = DisBackTrainer.train_step

    def interrupted(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 2: it finishes, then the run stops
        return real(self)

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(DisBackTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        trainer(teacher, tmp_path / "b", shared_path, **kw).fit()
    assert (getattr(e.value, "signum", None), getattr(e.value, "step", None)) == (signal.SIGINT, 2)
    assert signal.getsignal(signal.SIGINT) is previous
    assert latest_checkpoint(tmp_path / "b").name == "step-0000002"
    assert (tmp_path / "b" / "samples" / "step-0000002.png").exists()   # the step's own work was done
    monkeypatch.setattr(DisBackTrainer, "train_step", real)
    b = trainer(teacher, tmp_path / "b", shared_path, **kw)
    b.fit(resume="latest")
    assert b.step == a.step == 4
    assert _equal_states(b.gen_unwrapped.unet.state_dict(), a.gen_unwrapped.unet.state_dict())
    assert _equal_states(b.ema.shadow, a.ema.shadow)
    assert _equal_states(b.fake_unwrapped.state_dict(), a.fake_unwrapped.state_dict())
    strip = lambda log: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in log]  # noqa: E731
    assert strip(b.log) == strip(a.log)


def test_sigterm_in_stage1_checkpoints_and_the_resumed_path_is_identical(teacher, tmp_path, monkeypatch, guard_sigterm,
                                                                        one_thread):
    real = DisBackTrainer._score_loss

    def score_loss_with_sigterm(self, name):
        loss_fn = real(self, name)
        if name != "stage1-loss":
            return loss_fn

        def loss(model, batch, indices, step):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # during Stage-1 step 3 (between the snapshots at 2 and 4)
            return loss_fn(model, batch, indices, step)

        return loss

    monkeypatch.setattr(DisBackTrainer, "_score_loss", score_loss_with_sigterm)
    with pytest.raises(KeyboardInterrupt) as e:
        trainer(teacher, tmp_path / "run").run_stage1()
    assert (getattr(e.value, "signum", None), getattr(e.value, "step", None)) == (signal.SIGTERM, 3)
    assert signal.getsignal(signal.SIGTERM) is guard_sigterm
    assert latest_checkpoint(tmp_path / "run" / "stage1").name == "step-0000003"
    monkeypatch.setattr(DisBackTrainer, "_score_loss", real)
    m = trainer(teacher, tmp_path / "run").run_stage1()
    ref = trainer(teacher, tmp_path / "ref").run_stage1()     # uninterrupted, same thread count
    assert [n["sha256"] for n in m.nodes] == [n["sha256"] for n in ref.nodes]  # bit-identical path


def _read_csv(path, cols):
    with open(path) as f:
        return [[float(r[c]) for c in cols] for r in csv.DictReader(f)]


def test_one_and_two_processes_give_the_same_losses(teacher, teacher_dir, tmp_path):
    """Per-sample draws are keyed to the global index and DDP averages equal local means, so a
    2-process (CPU, gloo) run follows the 1-process run up to float summation order: the
    logged losses agree to rtol 1e-4 (observed ~1e-6)."""
    from diffkit.cli import build_parser
    from diffkit.commands.distill import config_from_args

    argv = ["distill", "--teacher", str(teacher_dir), "--mode", "disback", "--max-steps", "3", "--batch-size", "8",
            "--stage1-steps", "2", "--path-nodes", "2", "--steps-per-node", "1", "--fake-updates", "2", "--cpu",
            "--no-progress", "--stage1-eval-samples", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "diffkit.cli", *argv, "--output", str(tmp_path / "g2"),
                        "--run-dir", str(tmp_path / "r2")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    args = build_parser().parse_args(argv + ["--output", str(tmp_path / "g1")])
    one = DisBackTrainer(teacher, SCHEDULER, config_from_args(args), tmp_path / "r1", cpu=True)
    one.train(output=tmp_path / "g1")
    cols = ["loss_fake", "loss_gen", "mismatch", "grad_rms"]
    l1, l2 = _read_csv(tmp_path / "r1" / "log.csv", cols), _read_csv(tmp_path / "r2" / "log.csv", cols)
    assert len(l1) == len(l2) == 3
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-7)
    s1 = _read_csv(tmp_path / "r1" / "stage1" / "loss_log.csv", ["loss"])
    s2 = _read_csv(tmp_path / "r2" / "stage1" / "loss_log.csv", ["loss"])
    torch.testing.assert_close(torch.tensor(s2), torch.tensor(s1), rtol=1e-4, atol=1e-7)
    assert json.loads((tmp_path / "g2" / "distill.json").read_text())["processes"] == 2


# ---------------------------------------------------------------------------- generator and export
def test_generator_is_the_teachers_top_step_denoiser(teacher):
    g = OneStepGenerator.from_teacher(teacher, SCHEDULER)
    sched = EpsModel(teacher, SCHEDULER).schedule
    assert g.timestep == 999 and g.sigma_init == pytest.approx(sched.sigma_ve_max)
    z = randn_for_indices((1, 8, 8), range(6), 0)
    labels = torch.arange(6)
    with torch.no_grad():
        x = g(z, labels)
        d = Denoiser(EpsModel(teacher, SCHEDULER))(g.sigma_init * z.double(), g.sigma_init,
                                                   Guidance(class_guidance(teacher, labels).cond))
    torch.testing.assert_close(x.double(), d, rtol=1e-4, atol=1e-4)   # D(σ_init·z; σ_init), EDM form
    assert all(p.requires_grad for p in g.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_export_loads_as_one_step_pipeline_and_samples_with_one_evaluation(teacher, tmp_path, capsys):
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.one_step import OneStepPipeline

    tr = trainer(teacher, tmp_path / "run", mode="vanilla", max_steps=1)
    tr.train(output=tmp_path / "gen")
    pipe = load_pipeline(tmp_path / "gen")
    assert isinstance(pipe, OneStepPipeline) and pipe.num_classes == 10
    labels = list(range(10))
    out = pipe(class_labels=labels, num_inference_steps=50, seed=3, output_type="pt")
    assert out.nfe == 1
    z = randn_for_indices((1, 8, 8), range(10), 3)
    with torch.no_grad():
        ref = OneStepGenerator(tr.ema_unet(), SCHEDULER, 399)(z, torch.tensor(labels)).clamp(-1, 1)
    assert torch.equal(out.images, ref)
    assert not _equal_states(tr.ema_unet().state_dict(), teacher.state_dict())  # it did train
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(class_labels=labels, guidance_scale=3.0)
    with pytest.raises(ValueError, match="accepted labels are 0..9"):
        pipe(class_labels=[10])
    png = tmp_path / "s.png"
    assert main(["sample", "--model", str(tmp_path / "gen"), "--steps", "20", "--n", "10", "--output", str(png)]) == 0
    assert png.exists() and "NFE 1" in capsys.readouterr().out
    assert main(["sample", "--model", str(tmp_path / "gen"), "--sampler", "euler", "--output", str(png)]) == 1
    assert "gen is a one-step generator (OneStepPipeline)" in capsys.readouterr().err
    facts = json.loads((tmp_path / "gen" / "distill.json").read_text())
    assert facts["generator_steps"] == 1 and facts["config"]["mode"] == "vanilla"
    assert facts["generator_timestep"] == tr.generator_timestep == 399   # the default (docs/methods/disback.md)
    assert (tmp_path / "run" / "samples" / "step-0000001.png").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 1


def _readme_block(section: str) -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"<!-- section:{section} -->"):text.index(f"<!-- /section:{section} -->")]
    block = body[body.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.strip()]


def test_readme_distill_then_sample_commands_run_as_written(tmp_path, monkeypatch, capsys, one_thread):
    """The README's two DisBack commands, in an empty folder, at a tiny size (size flags appended):
    the export is a folder of its own that `diffkit sample --model` loads, and --resume continues."""
    distill, sample = _readme_block("disback")
    assert distill[:2] == ["diffkit", "distill"] and sample[:2] == ["diffkit", "sample"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(ROOT / "assets")  # as in the repository root (the teacher is only read)
    tiny = ["--batch-size", "4", "--stage1-steps", "2", "--path-nodes", "2", "--steps-per-node", "1",
            "--stage1-eval-samples", "8", "--sample-every", "0", "--cpu", "--no-progress", "--final-fid-n", "20"]
    assert main(distill[1:] + tiny + ["--max-steps", "1"]) == 0
    assert "FID-digits (n = 20, seed 0, one step): " in capsys.readouterr().out   # beside G⁰'s, as the README says
    assert main(sample[1:]) == 0, capsys.readouterr().err
    assert "NFE 1" in capsys.readouterr().out
    out = Path(distill[distill.index("--output") + 1])
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "distill.json", "model_index.json", "scheduler",
                                                     "unet"]                      # only the pipeline
    run_dir = Path(json.loads((out / "distill.json").read_text())["run_dir"])
    assert (run_dir / "stage1" / "path.json").exists() and latest_checkpoint(run_dir).name == "step-0000001"
    assert main(distill[1:] + tiny + ["--max-steps", "2", "--resume"]) == 0
    assert json.loads((out / "distill.json").read_text())["generator_steps"] == 2
    assert [r["step"] for r in _read_csv_rows(run_dir / "log.csv")] == ["1", "2"]


def _read_csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- bad input
def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"steps_per_node \(generator steps per target node, K2\) must be >= 1"):
        small(steps_per_node=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        small(mode="dmd")
    with pytest.raises(ValueError, match="path_spacing must be one of"):
        small(path_spacing="cubic")
    with pytest.raises(ValueError, match=r"stage1_steps \(2\) must be >= path_nodes \(3\)"):
        small(stage1_steps=2)


def test_teacher_whose_prediction_type_differs_from_its_config_is_refused(teacher, tmp_path):
    v_config = {**SCHEDULER, "prediction_type": "v_prediction"}
    with pytest.raises(ValueError, match=r"prediction_type='v_prediction'.*match the input noise"):
        DisBackTrainer(teacher, v_config, small(), tmp_path, cpu=True)
    v_teacher = _train_tiny("v_prediction", steps=10, seed=1)
    with pytest.raises(ValueError, match=r"prediction_type='epsilon'.*not the input noise"):
        DisBackTrainer(v_teacher, SCHEDULER, small(), tmp_path, cpu=True)
    DisBackTrainer(v_teacher, v_config, small(), tmp_path, cpu=True)  # consistent: accepted


def test_stage2_with_missing_or_corrupt_stage1_path_fails_clearly(teacher, teacher_dir, shared_path, tmp_path,
                                                                  capsys):
    with pytest.raises(FileNotFoundError, match="Stage-1 path not found: .*path.json is missing"):
        trainer(teacher, tmp_path / "r0", tmp_path / "nowhere").fit()
    assert main(["distill", "--teacher", str(teacher_dir), "--output", str(tmp_path / "g"), "--stage", "2",
                 "--stage1-dir", str(tmp_path / "nowhere"), "--cpu", "--no-progress"]) == 1
    assert "Stage-1 path not found" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(shared_path, bad)
    (bad / "path.json").write_text((shared_path / "path.json").read_text()[:200])
    with pytest.raises(ValueError, match="is corrupt"):
        trainer(teacher, tmp_path / "r1", bad).fit()

    shutil.rmtree(bad)
    shutil.copytree(shared_path, bad)
    node = load_path_manifest(bad).node_file(2)
    data = bytearray(node.read_bytes())
    data[-5] ^= 0xFF
    node.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"node 2 file .* is corrupt \(sha256"):
        trainer(teacher, tmp_path / "r2", bad).fit()

    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.conv_out.bias.add_(0.01)
    with pytest.raises(ValueError, match="recorded from a different teacher"):
        trainer(other, tmp_path / "r3", shared_path).fit()
    with pytest.raises(ValueError, match="path_nodes=4"):
        trainer(teacher, tmp_path / "r4", shared_path, path_nodes=4).fit()

    from safetensors.torch import save_file
    save_file({"conv_in.weight": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="wrong.safetensors does not match UNet2DModel"):
        load_state_dict_strict(tiny_unet2d(num_classes=10), tmp_path / "wrong.safetensors")
