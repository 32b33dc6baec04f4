"""A small training loop on ``accelerate`` with exact resume and pluggable losses.

The loop knows nothing about diffusion. It asks three things of its caller:

* a **model** (any ``nn.Module``);
* a **batch source** ``source(indices, step) -> batch``: the training examples for the
  given *global sample indices* (``IndexedDataSource`` reads a fixed dataset; DisBack
  plugs in generator samples, a text model plugs in token sequences);
* a **loss** ``loss_fn(model, batch, indices, step) -> scalar`` (mean over the batch).
  ``DDPMEpsLoss`` is the ε-prediction DDPM loss.

Why global sample indices: step ``s`` of a run with batch size ``B`` consumes the global
samples ``s·B .. s·B + B - 1``; process ``r`` of ``P`` takes the contiguous slice
``r·B/P .. (r+1)·B/P - 1``. Every random draw (data order, timestep, noise, label
dropout) is a function of (seed, stream, index) through ``diffkit.seeding``, and the
gradient all-reduce averages equal-sized local means, so 1- and P-process runs follow the
same trajectory up to float summation order; and the data order is *stateless*, so
resuming needs no sampler state.

Checkpoints (``<run_dir>/checkpoints/step-NNNNNNN/``; the commands' default run folder,
:func:`default_run_dir`, is ``runs/<output name>``, never the exported model's folder) hold
the model and EMA weights (safetensors), the optimizer and LR-scheduler state, the step,
each process's RNG states (torch, numpy, python and every registered ``torch.Generator``)
and the ``state_dict`` of the source and loss when they have one. They are written to a
temporary folder and renamed into place (``os.replace``), so a kill leaves either the
previous complete checkpoint or the new one. Losses go to ``<run_dir>/loss_log.csv`` (one row per step) and
a summary to ``<run_dir>/train_summary.json``.

SIGINT (Ctrl-C) or SIGTERM during :meth:`Trainer.fit` does not kill the step in progress:
the step finishes, a checkpoint of it is written (every process stops at the same step) and
:class:`TrainingInterrupted` is raised, so ``--resume`` continues exactly where the signal
arrived (:class:`StopOnSignal`; ``DisBackTrainer`` uses it too).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .atomic import replace_dir, save_safetensors, write_text_atomically
from .distributed import destroying_created_group_at_exit
from .seeding import rand_for_indices, randint_for_indices, randn_for_indices, sample_generator

__all__ = ["TrainConfig", "EMA", "IndexedDataSource", "DDPMEpsLoss", "Trainer", "TrainResult",
           "latest_checkpoint", "list_checkpoints", "make_accelerator", "write_checkpoint_dir", "rng_state",
           "set_rng_state", "default_run_dir", "resolve_run_dir", "load_device", "StopOnSignal", "TrainingInterrupted"]

CHECKPOINT_PREFIX = "step-"


# ---------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    max_steps: int
    batch_size: int = 128          # global batch (all processes together)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100        # linear warm-up, then constant (so any step N is reproduced by --max-steps N)
    grad_clip: float = 1.0         # max global grad norm; 0 disables
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        self.betas = tuple(self.betas)


# ---------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Decay at update n (1-based) is ``min(decay, (1 + n) / (10 + n))``: the warm-up keeps the
    average from being dominated by the random initialisation in short runs.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = self.current_decay()
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def copy_to(self, model: nn.Module) -> nn.Module:
        sd = model.state_dict()
        for k, v in self.shadow.items():
            sd[k].copy_(v.to(sd[k].dtype))
        return model

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model (keys differ: {sorted(missing)[:5]})")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.num_updates = int(state["num_updates"])
        self.decay = float(state.get("decay", self.decay))


# ---------------------------------------------------------------------------- sources
class IndexedDataSource:
    """x0 from a fixed set of tensors; global sample index g -> item ``perm_e[g mod N]``, e = g // N.

    ``perm_e`` is a permutation drawn from (seed, "data-order", e): every epoch visits each
    item once, in an order that depends on nothing but the seed and the epoch.
    """

    def __init__(self, *tensors: torch.Tensor, seed: int = 0):
        if not tensors:
            raise ValueError("IndexedDataSource needs at least one tensor")
        n = len(tensors[0])
        if n == 0 or any(len(t) != n for t in tensors):
            raise ValueError(f"tensors must be non-empty and of equal length, got {[len(t) for t in tensors]}")
        self.tensors, self.n, self.seed = tensors, n, int(seed)
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = torch.randperm(self.n, generator=sample_generator(self.seed, epoch, "data-order"))
        return self._perms[epoch]

    def item_indices(self, indices: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long)
        epochs, pos = idx // self.n, idx % self.n
        out = torch.empty_like(idx)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.permutation(int(e))[pos[m]]
        return out

    def __call__(self, indices: torch.Tensor, step: int):
        items = self.item_indices(indices)
        out = tuple(t[items] for t in self.tensors)
        return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------- losses
class DDPMEpsLoss:
    """ε-prediction DDPM loss, L_simple of Ho et al. 2020 (Eq. 14): E‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖².

    Batches are ``x0`` or ``(x0, labels)``. With labels, each label is replaced by the null
    class with probability ``label_dropout`` (classifier-free guidance training; null class
    = ``num_class_embeds - 1``). t ~ U{0..T-1}, ε ~ N(0, I) and the dropout coin are drawn
    per global sample index. ``t_range=(lo, hi)`` restricts t to U{lo..hi} (DisBack/DMD2
    train their score networks on t ∈ {20..980}); the default is the full grid.
    """

    def __init__(self, scheduler_config, seed: int = 0, label_dropout: float = 0.1, null_class: Optional[int] = None,
                 t_range: Optional[tuple] = None):
        from .schedules import VPSchedule

        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.schedule = VPSchedule.from_config(scheduler_config)
        if self.schedule.prediction_type != "epsilon":
            raise ValueError(f"DDPMEpsLoss trains ε-prediction; the scheduler says {self.schedule.prediction_type!r}")
        self.seed, self.label_dropout, self.null_class = int(seed), float(label_dropout), null_class
        T = self.schedule.num_train_timesteps
        lo, hi = (0, T - 1) if t_range is None else (int(t_range[0]), int(t_range[1]))
        if not 0 <= lo <= hi <= T - 1:
            raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= {T - 1} (num_train_timesteps - 1), got {t_range}")
        self.t_range = (lo, hi)

    def noisy(self, x0: torch.Tensor, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, ε) for the given global sample indices."""
        lo, hi = self.t_range
        t = randint_for_indices(lo, hi + 1, indices, self.seed, stream="train-timestep")
        eps = randn_for_indices(x0.shape[1:], indices, self.seed, stream="train-noise", dtype=x0.dtype)
        ac = self.schedule.alphas_cumprod[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (ac.sqrt() * x0.cpu() + (1 - ac).sqrt() * eps).to(x0.device), t.to(x0.device), eps.to(x0.device)

    def drop_labels(self, labels: torch.Tensor, indices) -> torch.Tensor:
        if self.null_class is None or self.label_dropout == 0:
            return labels
        coin = rand_for_indices((), indices, self.seed, stream="train-label-dropout").to(labels.device)
        return torch.where(coin < self.label_dropout, torch.full_like(labels, self.null_class), labels)

    def __call__(self, model, batch, indices, step):
        x0, labels = (batch, None) if isinstance(batch, torch.Tensor) else batch
        z, t, eps = self.noisy(x0, indices)
        kw = {}
        if labels is not None:
            kw["class_labels"] = self.drop_labels(labels, indices)
        out = model(z, t, **kw)
        out = out.sample if hasattr(out, "sample") else out
        return torch.mean((out.float() - eps.float()) ** 2)


# ---------------------------------------------------------------------------- helpers
def make_accelerator(cpu: Optional[bool] = None):
    """An ``accelerate.Accelerator``; ``cpu=None`` means CPU unless CUDA is available.

    A process group it creates (under ``accelerate launch`` or torchrun) is destroyed when the
    interpreter exits (:mod:`diffkit.distributed`)."""
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    with destroying_created_group_at_exit():
        return Accelerator(cpu=cpu)


def default_run_dir(output) -> Path:
    """The run folder (checkpoints, logs) of a command that exports a model to ``output``:
    ``runs/<output name>`` relative to the current folder, or ``runs/<output name>-run`` when
    ``output`` is itself that folder (``--output runs/NAME``): never the model's own folder."""
    output = Path(output)
    run_dir = Path("runs") / output.name
    if _same_or_inside(run_dir, output):
        run_dir = Path("runs") / f"{output.name}-run"
    return run_dir


def _same_or_inside(path, folder) -> bool:
    p, f = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return p == f or f in p.parents


def resolve_run_dir(output, run_dir=None) -> Path:
    """``run_dir``, or :func:`default_run_dir` of ``output``. A run folder that is the output
    folder or lies inside it is refused: exporting replaces that folder as a whole."""
    run_dir = Path(run_dir) if run_dir else default_run_dir(output)
    if _same_or_inside(run_dir, output):
        raise ValueError(f"run_dir (--run-dir) {run_dir} is the output folder (--output) {output} or inside it: "
                         "the export replaces that folder, checkpoints included; choose a run folder outside it "
                         f"(default {default_run_dir(output)})")
    return run_dir


def load_device(accelerator) -> str:
    """Where to read a checkpoint's tensors: the process's device, but plain ``"cpu"`` for
    accelerate's multi-process CPU device ``cpu:0`` (which safetensors and torch.load refuse)."""
    dev = torch.device(accelerator.device)
    return "cpu" if dev.type == "cpu" else str(dev)


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def list_checkpoints(run_dir) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    out = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists()]
    return sorted(out, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(run_dir) -> Optional[Path]:
    cks = list_checkpoints(run_dir)
    return cks[-1] if cks else None


def rng_state(generators: dict) -> dict:
    """Every RNG a process may draw from, as tensors/ints only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)},
          "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
          "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, generators: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    missing = set(generators) - set(st.get("generators", {}))
    if missing:
        raise ValueError(f"checkpoint has no state for registered generator(s) {sorted(missing)}")
    for k, g in generators.items():
        g.set_state(st["generators"][k])


def write_checkpoint_dir(accelerator, run_dir, step: int, keep: int, write: Callable[[Path], None],
                         generators: Optional[dict] = None) -> Path:
    """``<run_dir>/checkpoints/step-NNNNNNN`` written atomically by every process together.

    Each process saves its RNG states (``rng-rank{r}.pt``: torch, numpy, python and the named
    ``generators``); the main process calls ``write(folder)`` for the rest, renames the folder
    into place, points ``checkpoints/latest`` at it and keeps the newest ``keep`` checkpoints.
    The staging folder has a fixed name (not a pid) so that all processes write into it."""
    acc = accelerator
    root = Path(run_dir) / "checkpoints"
    name = checkpoint_dir_name(step)
    final, tmp = root / name, root / f".tmp-{name}"
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    acc.wait_for_everyone()
    torch.save(rng_state(generators or {}), tmp / f"rng-rank{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        write(tmp)
        replace_dir(tmp, final)  # re-saving the same step (a resume with no new steps) replaces it
        write_text_atomically(root / "latest", name + "\n")
        for old in list_checkpoints(run_dir)[:-max(int(keep), 1)]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


class TrainingInterrupted(KeyboardInterrupt):
    """A fit loop stopped by SIGINT/SIGTERM after finishing step ``step``, whose checkpoint
    ``checkpoint`` was written: ``--resume`` (``fit(resume="latest")``) continues exactly.
    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps doing so."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        super().__init__(f"{signal.Signals(self.signum).name} after step {self.step}; checkpoint {checkpoint} "
                         "written (rerun with --resume to continue)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal:
    """While active (``with StopOnSignal(accelerator) as stop:`` around a fit loop), SIGINT and
    SIGTERM only record that a stop was asked for; the previous handlers come back on exit.
    The loop calls :meth:`requested` after each step: the signal number once any process got
    one (all processes agree, so they all stop at the same step), else 0. Further signals
    during the stop are ignored (torchrun forwards the terminal's Ctrl-C a second time).
    Handlers can only be installed from the main thread; elsewhere signals keep their effect."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.signum = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not self.signum:
            self.signum = int(signum)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()
        return False

    def requested(self) -> int:
        acc = self.accelerator
        if acc is None or acc.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=acc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


@dataclass
class TrainResult:
    step: int
    final_loss: Optional[float]      # mean loss of the last min(100, steps) steps of the log
    wall_time_s: float               # summed over all sessions of this run (resumes included)
    run_dir: str
    checkpoint: Optional[str]
    log: list = field(default_factory=list)


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Runs ``config.max_steps`` optimiser steps of ``loss_fn`` on batches from ``source``.

    ``register_generator(name, g)`` adds a ``torch.Generator`` the caller draws from (e.g.
    inside a custom source) to the checkpointed RNG state of each process.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, source: Callable, config: TrainConfig, run_dir,
                 accelerator=None, optimizer: Optional[torch.optim.Optimizer] = None, meta: Optional[dict] = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator or make_accelerator()
        acc = self.accelerator
        if config.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes "
                             f"({acc.num_processes}) so every process gets an equal share")
        self.loss_fn, self.source = loss_fn, source
        self.meta = dict(meta or {})
        self.generators: dict[str, torch.Generator] = {}
        model = model.to(acc.device).train()
        self.ema = EMA(model, config.ema_decay)
        opt = optimizer or torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                             weight_decay=config.weight_decay)
        warm = max(int(config.warmup_steps), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.model, self.optimizer = acc.prepare(model, opt)
        self.lr_scheduler = sched
        self.step = 0
        self.wall_time_s = 0.0
        self.log: list[dict] = []

    # ------------------------------------------------------------------ helpers
    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def register_generator(self, name: str, generator: torch.Generator) -> None:
        self.generators[name] = generator

    def ema_model(self) -> nn.Module:
        """A copy of the model carrying the EMA weights (eval mode, on the CPU)."""
        m = copy.deepcopy(self.unwrapped).cpu().eval()
        return self.ema.copy_to(m)

    def local_indices(self, step: int) -> torch.Tensor:
        B, P, r = self.config.batch_size, self.accelerator.num_processes, self.accelerator.process_index
        per = B // P
        start = step * B + r * per
        return torch.arange(start, start + per, dtype=torch.long)

    def _move(self, batch):
        dev = self.accelerator.device
        if isinstance(batch, torch.Tensor):
            return batch.to(dev)
        if isinstance(batch, (tuple, list)):
            return type(batch)(self._move(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        return batch

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNNN`` atomically (every process writes its RNG file)."""
        acc = self.accelerator

        def write(tmp: Path) -> None:
            sd = {k: v.detach().cpu().contiguous() for k, v in self.unwrapped.state_dict().items()}
            save_safetensors(sd, tmp / "model.safetensors")
            save_safetensors({k: v.contiguous() for k, v in self.ema.shadow.items()}, tmp / "ema.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()},
                       tmp / "optimizer.pt")
            extra = {k: obj.state_dict() for k, obj in (("source", self.source), ("loss", self.loss_fn))
                     if hasattr(obj, "state_dict")}
            if extra:
                torch.save(extra, tmp / "extra.pt")
            state = {"step": self.step, "ema_num_updates": self.ema.num_updates, "wall_time_s": self.wall_time_s,
                     "world_size": acc.num_processes, "config": asdict(self.config), "meta": self.meta}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))

        return write_checkpoint_dir(acc, self.run_dir, self.step, self.config.keep_checkpoints, write,
                                    self.generators)

    def load_checkpoint(self, path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        need = ["trainer_state.json", "model.safetensors", "ema.safetensors", "optimizer.pt"]
        missing = [n for n in need if not (path / n).exists()]
        if missing:
            raise FileNotFoundError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
        acc = self.accelerator
        state = json.loads((path / "trainer_state.json").read_text())
        # Sample indices (hence data order and every draw) depend on these: resuming with
        # other values would silently continue a different run.
        for key in ("batch_size", "seed"):
            saved = state.get("config", {}).get(key)
            if saved is not None and saved != getattr(self.config, key):
                raise ValueError(f"checkpoint {path} was written with {key}={saved}, this run has "
                                 f"{key}={getattr(self.config, key)}; resume with the same {key}")
        self.unwrapped.load_state_dict(load_file(str(path / "model.safetensors"), device=load_device(acc)))
        self.ema.load_state_dict({"shadow": load_file(str(path / "ema.safetensors")),
                                  "num_updates": state["ema_num_updates"], "decay": self.config.ema_decay})
        opt = torch.load(path / "optimizer.pt", map_location=load_device(acc), weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
        if (path / "extra.pt").exists():
            extra = torch.load(path / "extra.pt", weights_only=True)
            for k, obj in (("source", self.source), ("loss", self.loss_fn)):
                if k in extra and hasattr(obj, "load_state_dict"):
                    obj.load_state_dict(extra[k])
        rng = path / f"rng-rank{acc.process_index}.pt"
        if state.get("world_size") == acc.num_processes and rng.exists():
            set_rng_state(torch.load(rng, weights_only=True), self.generators)
        elif acc.is_main_process:
            print(f"note: checkpoint written by {state.get('world_size')} process(es), resumed on "
                  f"{acc.num_processes}: per-process RNG states not restored (sample-indexed draws are unaffected)",
                  file=sys.stderr)
        self.step = int(state["step"])
        self.wall_time_s = float(state.get("wall_time_s", 0.0))
        self.log = [r for r in self._read_log() if r["step"] <= self.step]

    def resolve_resume(self, resume) -> Optional[Path]:
        if resume in (None, False, ""):
            return None
        if resume in (True, "latest"):
            ck = latest_checkpoint(self.run_dir)
            if ck is None:
                raise FileNotFoundError(f"--resume: no checkpoint found under {self.run_dir / 'checkpoints'}")
            return ck
        p = Path(resume)
        if (p / "checkpoints").is_dir() and not (p / "trainer_state.json").exists():
            ck = latest_checkpoint(p)
            if ck is None:
                raise FileNotFoundError(f"--resume: no checkpoint found under {p / 'checkpoints'}")
            return ck
        if not p.is_dir():
            raise FileNotFoundError(f"--resume: checkpoint folder {p} does not exist")
        return p

    # ------------------------------------------------------------------ logs
    def _log_path(self) -> Path:
        return self.run_dir / "loss_log.csv"

    def _read_log(self) -> list[dict]:
        p = self._log_path()
        if not p.exists():
            return []
        with open(p, newline="") as f:
            return [{"step": int(r["step"]), "loss": float(r["loss"]), "grad_norm": float(r["grad_norm"]),
                     "lr": float(r["lr"]), "wall_time_s": float(r["wall_time_s"])} for r in csv.DictReader(f)]

    def _write_log(self) -> None:
        p = self._log_path()
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "grad_norm", "lr", "wall_time_s"])
            w.writeheader()
            for r in self.log:
                w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})  # exact round trip
        os.replace(tmp, p)

    def final_loss(self, window: int = 100) -> Optional[float]:
        tail = [r["loss"] for r in self.log[-window:]]
        return float(np.mean(tail)) if tail else None

    def _write_summary(self, checkpoint) -> None:
        summary = {"step": self.step, "final_loss": self.final_loss(), "final_loss_window": min(100, len(self.log)),
                   "wall_time_s": round(self.wall_time_s, 1), "world_size": self.accelerator.num_processes,
                   "parameters": sum(p.numel() for p in self.unwrapped.parameters()),
                   "checkpoint": str(checkpoint) if checkpoint else None, "config": asdict(self.config), "meta": self.meta}
        write_text_atomically(self.run_dir / "train_summary.json", json.dumps(summary, indent=1) + "\n")

    # ------------------------------------------------------------------ loop
    def fit(self, resume=None, stop_at: Optional[int] = None) -> TrainResult:
        """Train to ``config.max_steps`` (or ``stop_at``, for interrupting on purpose)."""
        acc, cfg = self.accelerator, self.config
        ck = self.resolve_resume(resume)
        if ck is not None:
            self.load_checkpoint(ck)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        pbar = None
        if cfg.progress and acc.is_main_process and self.step < end:
            from tqdm.auto import tqdm

            pbar = tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        last_ck, last_ck_step = ck, (self.step if ck is not None else None)
        t_session = time.perf_counter()
        t_base = self.wall_time_s
        self.model.train()
        try:
            with StopOnSignal(acc) as stop:  # SIGINT/SIGTERM: finish the step, checkpoint it, raise
                while self.step < end:
                    self._step()
                    self.wall_time_s = t_base + (time.perf_counter() - t_session)
                    self.log[-1]["wall_time_s"] = round(self.wall_time_s, 3)
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix(loss=f"{self.log[-1]['loss']:.4f}", refresh=False)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                        last_ck, last_ck_step = self._checkpoint(), self.step
                    if stop.requested():
                        break
                if last_ck_step != self.step:
                    last_ck = self._checkpoint()
                signum = stop.requested()
        finally:
            if pbar is not None:
                pbar.close()
        if signum:
            raise TrainingInterrupted(signum, self.step, last_ck)
        return TrainResult(self.step, self.final_loss(), self.wall_time_s, str(self.run_dir), str(last_ck), list(self.log))

    def _step(self) -> None:
        """One optimiser step on batch number ``self.step``; appends its row to the log."""
        acc, cfg = self.accelerator, self.config
        step = self.step
        idx = self.local_indices(step)
        batch = self._move(self.source(idx, step))
        loss = self.loss_fn(self.model, batch, idx, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}")
        acc.backward(loss)
        if cfg.grad_clip and cfg.grad_clip > 0:
            gnorm = float(acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        else:
            gnorm = float(torch.sqrt(sum((p.grad.detach().float() ** 2).sum() for p in self.model.parameters()
                                         if p.grad is not None)))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unwrapped)
        self.step += 1
        mean_loss = (float(acc.reduce(loss.detach().reshape(1), reduction="mean")) if acc.num_processes > 1
                     else float(loss.detach()))
        self.log.append({"step": self.step, "loss": mean_loss, "grad_norm": gnorm, "lr": lr, "wall_time_s": None})

    def _checkpoint(self) -> Path:
        ck = self.save_checkpoint()
        if self.accelerator.is_main_process:
            self._write_log()
            self._write_summary(ck)
        self.accelerator.wait_for_everyone()
        return ck
