"""diffkit.train: the loop learns, resumes bit for bit, and 1 vs 2 processes agree."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffkit.data import digits_tensors
from helpers import tiny_trainer, trainer_state

from diffkit.train import EMA, IndexedDataSource, TrainConfig, latest_checkpoint

# 1 vs 2 processes, 3 AdamW steps at lr 2e-3: only float summation order differs (per-process
# batch means, gradient all-reduce). Adam divides by √v, so a parameter whose gradient is
# ~0 can amplify a rounding difference into a visible update difference; hence two bounds:
# the whole update (θ_3 − θ_0) agrees to 1e-3 relative L2, and no parameter differs by more
# than 10% of one step's size (lr).
TWO_PROCESS_UPDATE_RTOL = 1e-3
TWO_PROCESS_MAX_ABS = 0.1 * 2e-3


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_data_order_is_a_permutation_per_epoch_and_independent_of_batching():
    x = torch.arange(10.0)
    src = IndexedDataSource(x, seed=3)
    first = src(torch.arange(0, 10), 0)
    assert sorted(first.tolist()) == list(range(10))          # an epoch visits every item once
    assert not torch.equal(src(torch.arange(10, 20), 0), first)  # a new order next epoch
    again = torch.cat([IndexedDataSource(x, seed=3)(torch.arange(i, i + 3), 0) for i in (0, 3, 6, 9, 12)])
    assert torch.equal(again[:10], first)                      # same order, whatever the slicing


def test_tiny_unet_loss_decreases(tmp_path):
    tr = tiny_trainer(tmp_path, max_steps=40, batch_size=32, lr=3e-3, checkpoint_every=0)
    x, y = digits_tensors("train")
    idx = torch.arange(10_000, 10_064)  # a fixed evaluation batch: same x0, t, ε before and after

    def eval_loss():
        tr.model.eval()
        with torch.no_grad():
            return float(tr.loss_fn(tr.unwrapped, (x[:64], y[:64]), idx, 0))

    before = eval_loss()
    res = tr.fit()
    after = eval_loss()
    assert res.step == 40 and len(res.log) == 40
    assert after < 0.7 * before, (before, after)
    log = (tmp_path / "loss_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,grad_norm,lr,wall_time_s" and len(log) == 41
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["step"] == 40 and summary["final_loss"] == pytest.approx(res.final_loss)


class _Crash(RuntimeError):
    pass


def _crash_at(step_to_crash):
    def wrap(loss):
        def f(model, batch, indices, step):
            out = loss(model, batch, indices, step)
            if step == step_to_crash:
                raise _Crash(f"simulated kill during step {step}")
            return out

        return f

    return wrap


class _JitterSource:
    """A source that draws from a registered torch.Generator (its state must survive resume)."""

    def __init__(self, base):
        self.base, self.gen = base, torch.Generator().manual_seed(123)

    def __call__(self, indices, step):
        x, y = self.base(indices, step)
        return x + 0.01 * torch.randn(x.shape, generator=self.gen), y


def test_kill_and_resume_is_bit_identical(tmp_path):
    # Uninterrupted run of 7 steps.
    a = tiny_trainer(tmp_path / "a", max_steps=7)
    a.source = _JitterSource(a.source)
    a.register_generator("jitter", a.source.gen)
    res_a = a.fit()
    # Same run, killed in step 5 (after the step-3 checkpoint), with a half-written
    # checkpoint folder left behind: neither may disturb the resumed run.
    b = tiny_trainer(tmp_path / "b", max_steps=7, loss_wrap=_crash_at(4))
    b.source = _JitterSource(b.source)
    b.register_generator("jitter", b.source.gen)
    with pytest.raises(_Crash):
        b.fit()
    partial = tmp_path / "b" / "checkpoints" / ".tmp-step-0000006"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path / "b").name == "step-0000003"
    # A fresh process: different initial weights, fresh generator; everything comes from the checkpoint.
    c = tiny_trainer(tmp_path / "b", max_steps=7, init_seed=99)
    c.source = _JitterSource(c.source)
    c.source.gen.manual_seed(999)
    c.register_generator("jitter", c.source.gen)
    res_c = c.fit(resume="latest")
    assert res_c.step == 7
    sa, sc = trainer_state(a), trainer_state(c)
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.equal(a.ema.shadow[k], c.ema.shadow[k]) for k in a.ema.shadow)
    oa, oc = a.optimizer.state_dict()["state"], c.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i][n], oc[i][n]) for i in oa for n in oa[i])
    assert [r["loss"] for r in res_a.log] == [r["loss"] for r in res_c.log]
    assert torch.equal(a.source.gen.get_state(), c.source.gen.get_state())


def _signal_at(step_to_signal, signum):
    def wrap(loss):
        def f(model, batch, indices, step):
            if step == step_to_signal:
                os.kill(os.getpid(), signum)  # arrives mid-step, as from a terminal or a job scheduler
            return loss(model, batch, indices, step)

        return f

    return wrap


class _Unhandled(Exception):
    pass


def _raise_unhandled(signum, frame):
    raise _Unhandled(f"signal {signum} reached the previous handler")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_checkpoints_that_step_and_resume_is_bit_identical(tmp_path, signum):
    a = tiny_trainer(tmp_path / "a", max_steps=7, checkpoint_every=0)
    res_a = a.fit()
    b = tiny_trainer(tmp_path / "b", max_steps=7, checkpoint_every=0, loss_wrap=_signal_at(3, signum))
    old = signal.signal(signum, _raise_unhandled)  # the handler before fit(): must come back after it
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            b.fit()
        assert signal.getsignal(signum) is _raise_unhandled
    finally:
        signal.signal(signum, old)
    assert (getattr(e.value, "signum", None), getattr(e.value, "step", None)) == (signum, 4)  # step 4 finished
    assert getattr(e.value, "exit_code", None) == 128 + signum
    assert latest_checkpoint(tmp_path / "b").name == "step-0000004" == Path(e.value.checkpoint).name
    c = tiny_trainer(tmp_path / "b", max_steps=7, init_seed=99)
    res_c = c.fit(resume="latest")
    assert res_c.step == 7
    sa, sc = trainer_state(a), trainer_state(c)
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.equal(a.ema.shadow[k], c.ema.shadow[k]) for k in a.ema.shadow)
    assert [r["loss"] for r in res_a.log] == [r["loss"] for r in res_c.log]


def test_ctrl_c_on_the_command_line_checkpoints_prints_one_line_and_resumes_exactly(tmp_path):
    """A real SIGINT to a `diffkit train-teacher` process: exit 130, one line naming the
    checkpoint, no traceback; resuming from it equals a run straight to the same step."""
    from safetensors.torch import load_file

    from diffkit.commands.train_teacher import train_teacher

    run, out = tmp_path / "run", tmp_path / "teacher"
    kw = dict(batch_size=8, preset="tiny", checkpoint_every=2, progress=False)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "diffkit.cli", "train-teacher", "--preset", "tiny", "--batch-size", "8",
                          "--checkpoint-every", "2", "--max-steps", "1000000", "--threads", "1", "--no-progress",
                          "--output", str(out), "--run-dir", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "latest").exists():  # mid-way: training is under way
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:]
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"diffkit train-teacher: interrupted by SIGINT after step (\d+); checkpoint (\S+) written "
                     r"\(rerun with --resume to continue\)", last)
    assert m, err[-2000:]
    step = int(m.group(1))
    assert latest_checkpoint(run).name == f"step-{step:07d}" and Path(m.group(2)) == latest_checkpoint(run)
    assert not out.exists()                              # an unfinished run exports nothing
    train_teacher(out, max_steps=step + 2, resume="latest", run_dir=run, **kw)
    train_teacher(tmp_path / "ref", max_steps=step + 2, run_dir=tmp_path / "ref-run", **kw)
    w = "unet/diffusion_pytorch_model.safetensors"
    ra, rb = load_file(str(out / w)), load_file(str(tmp_path / "ref" / w))
    assert set(ra) == set(rb) and all(torch.equal(ra[k], rb[k]) for k in ra)
    logs = [[ln.split(",")[:4] for ln in (d / "loss_log.csv").read_text().splitlines()]
            for d in (run, tmp_path / "ref-run")]
    assert logs[0] == logs[1] and len(logs[0]) == step + 3


def test_ctrl_c_in_any_command_is_one_line_and_status_130(monkeypatch, capsys):
    import diffkit.commands.sample as sample
    from diffkit.cli import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "run", interrupted)
    try:
        code = main(["sample", "--model", "digits-unet"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped diffkit.cli.main (a traceback for the user)")
    assert code == 130
    assert capsys.readouterr().err == "diffkit sample: interrupted\n"


def test_resume_errors_name_the_folder(tmp_path):
    tr = tiny_trainer(tmp_path / "none", max_steps=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint found under"):
        tr.fit(resume="latest")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        tr.fit(resume=str(tmp_path / "does-not-exist"))
    done = tiny_trainer(tmp_path / "done", max_steps=1, checkpoint_every=0)
    done.fit()
    with pytest.raises(ValueError, match="batch_size=8, this run has batch_size=16"):
        tiny_trainer(tmp_path / "done", max_steps=2, batch_size=16).fit(resume="latest")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(max_steps=1, batch_size=0)


def test_ema_warmup_and_copy():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)  # decay min(0.999, 2/11): mostly the new weights
    expect = (2 / 11) * (m.weight - 1) + (9 / 11) * m.weight
    assert torch.allclose(ema.shadow["weight"], expect)
    assert torch.allclose(ema.copy_to(torch.nn.Linear(2, 1)).weight, expect)


# ---------------------------------------------------------------------------- two processes
def test_two_processes_match_one_process(tmp_path):
    from _dist_worker import launch

    one = tiny_trainer(tmp_path / "run1", max_steps=3, batch_size=8, checkpoint_every=0)
    res1 = one.fit()
    r = launch("train", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == 2 and two["indices"] == [[0, 1, 2, 3]]  # rank 0 takes the first half of each batch
    s0, s1, s2 = trainer_state(tiny_trainer(tmp_path / "init", max_steps=0)), trainer_state(one), two["state"]
    d1 = torch.cat([(s1[k] - s0[k]).flatten() for k in s0])
    d2 = torch.cat([(s2[k] - s0[k]).flatten() for k in s0])
    assert d1.abs().max() > 2e-3  # the runs really trained (Adam moves a parameter by up to ~lr per step)
    rel = float((d1 - d2).norm() / d1.norm())
    print(f"2 vs 1 process: relative update difference {rel:.2e}, max abs {float((d1 - d2).abs().max()):.2e}")
    assert rel <= TWO_PROCESS_UPDATE_RTOL
    assert float((d1 - d2).abs().max()) <= TWO_PROCESS_MAX_ABS
    assert two["log"] == pytest.approx([r["loss"] for r in res1.log], rel=1e-5)
    # SIGTERM to rank 1 only, during step 2: both ranks stop after it, one checkpoint (the main
    # process's weights and every rank's RNG state), and resuming gives the uninterrupted weights
    assert [json.loads((tmp_path / f"stopped-rank{r}.json").read_text()) for r in (0, 1)] == [[15, 2], [15, 2]]
    assert two["listing"] == ["latest", "step-0000002"]
    assert two["files"] == ["ema.safetensors", "model.safetensors", "optimizer.pt", "rng-rank0.pt", "rng-rank1.pt",
                            "trainer_state.json"]
    assert all(torch.equal(two["resumed"][k], s2[k]) for k in s2)
