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
staging folder and renamed into place, so a kill leaves either the previous complete
checkpoint or the new one. Losses go to ``<run_dir>/loss_log.csv`` (one row per step) and a
summary to ``<run_dir>/train_summary.json``.

The loop itself — resume (one meaning: see :mod:`diffkit.run_loop`), checkpoint cadence,
progress, log, summary, SIGINT/SIGTERM checkpoints — is :class:`diffkit.run_loop.RunLoop`,
shared with ``DisBackTrainer``; the run state on disk is :mod:`diffkit.run_state`. Their
public names stay importable from here, as does the loss, :class:`DDPMEpsLoss`
(:mod:`diffkit.distill.losses`).
"""


from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from diffkit.atomic import save_safetensors
from diffkit.distill.losses import DDPMEpsLoss
from diffkit.run_loop import RunLoop, StopOnSignal, TrainingInterrupted
from diffkit.run_state import (CHECKPOINT_PREFIX, EMA, checkpoint_dir_name, default_run_dir, latest_checkpoint,
                               list_checkpoints, load_device, make_accelerator, resolve_run_dir, rng_state,
                               set_rng_state, write_checkpoint_dir)
from diffkit.seeding import sample_generator

__all__ = ["TrainConfig", "EMA", "IndexedDataSource", "DDPMEpsLoss", "Trainer", "TrainResult", "RunLoop",
           "latest_checkpoint", "list_checkpoints", "make_accelerator", "write_checkpoint_dir", "rng_state",
           "set_rng_state", "default_run_dir", "resolve_run_dir", "load_device", "StopOnSignal", "TrainingInterrupted",
           "checkpoint_dir_name", "CHECKPOINT_PREFIX"]


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


@dataclass
class TrainResult:
    step: int
    final_loss: Optional[float]      # mean loss of the last min(100, steps) steps of the log
    wall_time_s: float               # summed over all sessions of this run (resumes included)
    run_dir: str
    checkpoint: Optional[str]
    log: list = field(default_factory=list)


# ---------------------------------------------------------------------------- trainer
class Trainer(RunLoop):
    """Runs ``config.max_steps`` optimiser steps of ``loss_fn`` on batches from ``source``
    (the loop, resume and checkpoint cadence: :class:`~diffkit.run_loop.RunLoop`).

    ``register_generator(name, g)`` adds a ``torch.Generator`` the caller draws from (e.g.
    inside a custom source) to the checkpointed RNG state of each process.

    ``evaluator(model, step) -> dict`` (optional; the trainer imports no metric, the command
    wires one in) is called on the main process with :meth:`ema_model` every ``eval_every``
    steps and at the end; its results are kept in the checkpoints and listed under ``"evals"``
    in ``train_summary.json``.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, source: Callable, config: TrainConfig, run_dir,
                 accelerator=None, optimizer: Optional[torch.optim.Optimizer] = None, meta: Optional[dict] = None,
                 evaluator: Optional[Callable] = None, eval_every: int = 0):
        if eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = only at the end), got {eval_every}")
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
        self.evaluator, self.eval_every = evaluator, int(eval_every)
        self.evals: list[dict] = []
        self._init_run()

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
            if self.evals:
                state["evals"] = self.evals
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))

        return write_checkpoint_dir(acc, self.run_dir, self.step, self.config.keep_checkpoints, write,
                                    self.generators)

    def load_checkpoint(self, path) -> None:
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
        self.evals = [e for e in state.get("evals", []) if e["step"] <= self.step]
        self.log = [r for r in self.read_log() if r["step"] <= self.step]
        self._started = True

    def evaluate(self) -> Optional[dict]:
        """Run the evaluator on the EMA model (main process) and record the result."""
        res = None
        if self.evaluator is not None and self.accelerator.is_main_process:
            res = {"step": self.step, **self.evaluator(self.ema_model(), self.step)}
            self.evals.append(res)
        self.accelerator.wait_for_everyone()
        return res

    def final_loss(self, window: int = 100) -> Optional[float]:
        tail = [r["loss"] for r in self.log[-window:]]
        return float(np.mean(tail)) if tail else None

    def summary(self, checkpoint) -> dict:
        return {"step": self.step, "final_loss": self.final_loss(), "final_loss_window": min(100, len(self.log)),
                "wall_time_s": round(self.wall_time_s, 1), "world_size": self.accelerator.num_processes,
                "parameters": sum(p.numel() for p in self.unwrapped.parameters()),
                "checkpoint": str(checkpoint) if checkpoint else None, "config": asdict(self.config),
                "meta": self.meta, **({"evals": self.evals} if self.evals else {})}

    # ------------------------------------------------------------------ loop hooks
    def before_loop(self) -> None:
        self.model.train()

    def after_step(self) -> None:
        if self.evaluator is not None and self.eval_every and self.step % self.eval_every == 0:
            self.evaluate()

    def on_finish(self, start: int) -> None:
        if self.evaluator is not None and (not self.eval_every or self.step % self.eval_every):
            self.evaluate()

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{row['loss']:.4f}"}

    def result(self, checkpoint) -> TrainResult:
        return TrainResult(self.step, self.final_loss(), self.wall_time_s, str(self.run_dir), str(checkpoint),
                           list(self.log))

    def train_step(self) -> dict:
        """One optimiser step on batch number ``self.step``; returns its log row."""
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
        return {"step": self.step, "loss": mean_loss, "grad_norm": gnorm, "lr": lr}
