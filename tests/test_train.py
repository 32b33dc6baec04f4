"""diffkit.train: the loop learns, resumes bit for bit, and 1 vs 2 processes agree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffkit.commands.train_teacher import build_scheduler, build_unet
from diffkit.data import digits_tensors
from diffkit.train import DDPMEpsLoss, EMA, IndexedDataSource, Trainer, TrainConfig, latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# 1 vs 2 processes, 3 AdamW steps at lr 2e-3: only float summation order differs (per-process
# batch means, gradient all-reduce). Adam divides by √v, so a parameter whose gradient is
# ~0 can amplify a rounding difference into a visible update difference; hence two bounds:
# the whole update (θ_3 − θ_0) agrees to 1e-3 relative L2, and no parameter differs by more
# than 10% of one step's size (lr).
TWO_PROCESS_UPDATE_RTOL = 1e-3
TWO_PROCESS_MAX_ABS = 0.1 * 2e-3


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _setup(run_dir, max_steps=6, batch_size=8, lr=2e-3, checkpoint_every=3, seed=0, init_seed=0, loss_wrap=None,
           accelerator=None, warmup=0):
    x, y = digits_tensors("train")
    loss = DDPMEpsLoss(build_scheduler().config, seed=seed, label_dropout=0.1, null_class=10)
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, seed=seed,
                      checkpoint_every=checkpoint_every, progress=False)
    return Trainer(build_unet("tiny", seed=init_seed), loss_wrap(loss) if loss_wrap else loss,
                   IndexedDataSource(x, y, seed=seed), cfg, run_dir, accelerator=accelerator)


def _state(tr):
    return {k: v.detach().clone() for k, v in tr.unwrapped.state_dict().items()}


def test_data_order_is_a_permutation_per_epoch_and_independent_of_batching():
    x = torch.arange(10.0)
    src = IndexedDataSource(x, seed=3)
    first = src(torch.arange(0, 10), 0)
    assert sorted(first.tolist()) == list(range(10))          # an epoch visits every item once
    assert not torch.equal(src(torch.arange(10, 20), 0), first)  # a new order next epoch
    again = torch.cat([IndexedDataSource(x, seed=3)(torch.arange(i, i + 3), 0) for i in (0, 3, 6, 9, 12)])
    assert torch.equal(again[:10], first)                      # same order, whatever the slicing


def test_tiny_unet_loss_decreases(tmp_path):
    tr = _setup(tmp_path, max_steps=40, batch_size=32, lr=3e-3, checkpoint_every=0)
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
    a = _setup(tmp_path / "a", max_steps=7)
    a.source = _JitterSource(a.source)
    a.register_generator("jitter", a.source.gen)
    res_a = a.fit()
    # Same run, killed in step 5 (after the step-3 checkpoint), with a half-written
    # checkpoint folder left behind: neither may disturb the resumed run.
    b = _setup(tmp_path / "b", max_steps=7, loss_wrap=_crash_at(4))
    b.source = _JitterSource(b.source)
    b.register_generator("jitter", b.source.gen)
    with pytest.raises(_Crash):
        b.fit()
    partial = tmp_path / "b" / "checkpoints" / ".tmp-step-0000006"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path / "b").name == "step-0000003"
    # A fresh process: different initial weights, fresh generator; everything comes from the checkpoint.
    c = _setup(tmp_path / "b", max_steps=7, init_seed=99)
    c.source = _JitterSource(c.source)
    c.source.gen.manual_seed(999)
    c.register_generator("jitter", c.source.gen)
    res_c = c.fit(resume="latest")
    assert res_c.step == 7
    sa, sc = _state(a), _state(c)
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.equal(a.ema.shadow[k], c.ema.shadow[k]) for k in a.ema.shadow)
    oa, oc = a.optimizer.state_dict()["state"], c.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i][n], oc[i][n]) for i in oa for n in oa[i])
    assert [r["loss"] for r in res_a.log] == [r["loss"] for r in res_c.log]
    assert torch.equal(a.source.gen.get_state(), c.source.gen.get_state())


def test_resume_errors_name_the_folder(tmp_path):
    tr = _setup(tmp_path / "none", max_steps=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint found under"):
        tr.fit(resume="latest")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        tr.fit(resume=str(tmp_path / "does-not-exist"))
    done = _setup(tmp_path / "done", max_steps=1, checkpoint_every=0)
    done.fit()
    with pytest.raises(ValueError, match="batch_size=8, this run has batch_size=16"):
        _setup(tmp_path / "done", max_steps=2, batch_size=16).fit(resume="latest")
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

    one = _setup(tmp_path / "run1", max_steps=3, batch_size=8, checkpoint_every=0)
    res1 = one.fit()
    r = launch("train", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == 2 and two["indices"] == [[0, 1, 2, 3]]  # rank 0 takes the first half of each batch
    s0, s1, s2 = _state(_setup(tmp_path / "init", max_steps=0)), _state(one), two["state"]
    d1 = torch.cat([(s1[k] - s0[k]).flatten() for k in s0])
    d2 = torch.cat([(s2[k] - s0[k]).flatten() for k in s0])
    assert d1.abs().max() > 2e-3  # the runs really trained (Adam moves a parameter by up to ~lr per step)
    rel = float((d1 - d2).norm() / d1.norm())
    print(f"2 vs 1 process: relative update difference {rel:.2e}, max abs {float((d1 - d2).abs().max()):.2e}")
    assert rel <= TWO_PROCESS_UPDATE_RTOL
    assert float((d1 - d2).abs().max()) <= TWO_PROCESS_MAX_ABS
    assert two["log"] == pytest.approx([r["loss"] for r in res1.log], rel=1e-5)


# ---------------------------------------------------------------------------- example
def test_example_script_runs(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_digits_teacher.py"), "--steps", "4",
                          "--batch-size", "16", "--output", str(tmp_path / "teacher"), "--preset", "tiny"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from diffkit.pipelines import load_pipeline

    pipe = load_pipeline(str(tmp_path / "teacher"))
    assert pipe.num_classes == 10
    assert (tmp_path / "teacher" / "samples.png").exists()
