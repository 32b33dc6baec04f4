"""Shared test helpers: repository paths and small builders used by tests in several packages.

The test folders mirror the packages (tests/samplers, tests/pipelines, ...); every test module
imports from here (``from helpers import ROOT``; ``tests/`` is on ``sys.path`` through the
root ``conftest.py``) instead of computing paths from its own location.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from diffkit.data import digits_tensors
from diffkit.train import DDPMEpsLoss, IndexedDataSource, Trainer, TrainConfig

#: the repository root
ROOT = Path(__file__).resolve().parents[1]
#: the tests folder (``_dist_worker.py``, ``data/``)
TESTS = ROOT / "tests"
#: the shipped models
ASSETS = ROOT / "assets"
#: test fixtures committed with the tests
DATA = TESTS / "data"


def run_script(script, *args, timeout: float = 600, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run a repository script (``examples/x.py``, ``benchmarks/y.py``) with this interpreter, one
    torch thread, offline; returns the completed process (stdout/stderr as text)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)


# ---------------------------------------------------------------------------- builders
def small_cnn(channels=1, dim=8, seed=1):
    """A deterministic feature extractor (FID tests); d = dim, well below the n used there."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, dim)).eval()


def tiny_class_pipeline():
    """A ClassConditionalPipeline on a tiny random class UNet (10 classes) and a short DDIM schedule."""
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d

    return ClassConditionalPipeline(tiny_unet2d(num_classes=10), tiny_ddim_scheduler())


def tiny_trainer(run_dir, max_steps=6, batch_size=8, lr=2e-3, checkpoint_every=3, seed=0, init_seed=0, loss_wrap=None,
                 accelerator=None, warmup=0):
    """A teacher Trainer on the digits train split with the 'tiny' UNet (training and 2-process tests)."""
    from diffkit.commands.train_teacher import build_scheduler, build_unet

    x, y = digits_tensors("train")
    loss = DDPMEpsLoss(build_scheduler().config, seed=seed, label_dropout=0.1, null_class=10)
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, seed=seed,
                      checkpoint_every=checkpoint_every, progress=False)
    return Trainer(build_unet("tiny", seed=init_seed), loss_wrap(loss) if loss_wrap else loss,
                   IndexedDataSource(x, y, seed=seed), cfg, run_dir, accelerator=accelerator)


def trainer_state(tr):
    """A detached copy of a trainer's model weights."""
    return {k: v.detach().clone() for k, v in tr.unwrapped.state_dict().items()}
