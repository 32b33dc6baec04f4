"""The run machinery shared by every trainer: resume, the step loop, checkpoint cadence,
progress bar, CSV log, JSON summary, and SIGINT/SIGTERM checkpoints.

A trainer subclasses :class:`RunLoop` and supplies its step and its state (the hooks below);
:class:`diffkit.train.Trainer` (one model, one loss) and
:class:`diffkit.distill.disback.DisBackTrainer` (a generator and a fake score) both do.

**Resume has one meaning** in every trainer and every training command (``fit(resume=...)``,
``--resume``), considered on the first :meth:`RunLoop.fit` only (later calls continue from memory):

* ``None`` or ``False`` (no ``--resume``): start at step 0; a run folder that already holds a
  checkpoint is refused (resume it, or choose another run folder) rather than overwritten;
* ``"latest"`` or ``True`` (``--resume``): continue from the newest checkpoint of the run
  folder; none there is an error (unless the trainer has unfinished work of its own to resume,
  e.g. DisBack's Stage 1);
* a path (``--resume CKPT``): that checkpoint folder, or the newest checkpoint of that run folder.

SIGINT (Ctrl-C) or SIGTERM during :meth:`RunLoop.fit` does not kill the step in progress: the
step finishes (its samples and evaluations included), a checkpoint of it is written (every
process stops at the same step) and :class:`TrainingInterrupted` is raised, so ``--resume``
continues exactly where the signal arrived.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from diffkit.atomic import write_text_atomically
from diffkit.run_state import checkpoint_dir_name, latest_checkpoint

__all__ = ["RunLoop", "StopOnSignal", "TrainingInterrupted", "read_csv_log", "write_csv_log"]


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


def read_csv_log(path, int_fields=("step",)) -> list[dict]:
    """Rows of a CSV log written by :func:`write_csv_log` (floats round-trip exactly)."""
    p = Path(path)
    if not p.exists():
        return []
    with open(p, newline="") as f:
        return [{k: (int(v) if k in int_fields else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def write_csv_log(path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` atomically; floats as ``repr`` (an exact round trip)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomically(path, buf.getvalue())


class RunLoop:
    """The loop around a trainer's step. A subclass sets ``config`` (``max_steps``,
    ``checkpoint_every``, ``progress``), ``run_dir`` and ``accelerator``, calls
    :meth:`_init_run`, and supplies:

    * :meth:`train_step` — one step; advances ``self.step`` and returns its log row;
    * :meth:`save_checkpoint` / :meth:`load_checkpoint` — its state;
    * :meth:`summary` — the contents of ``summary_file``;
    * optional hooks: :meth:`prepare` (once, before resuming), :meth:`before_loop`,
      :meth:`after_step` (samples, evaluations), :meth:`on_finish` (the run reached
      ``max_steps`` in this call), :meth:`postfix` (progress bar), :meth:`result`.
    """

    log_file = "loss_log.csv"
    log_fields: list = ["step", "loss", "grad_norm", "lr", "wall_time_s"]
    int_log_fields: tuple = ("step",)
    summary_file = "train_summary.json"
    progress_desc = "train"

    def _init_run(self) -> None:
        self.step = 0
        self.wall_time_s = 0.0
        self.log: list[dict] = []
        self._started = False

    # ------------------------------------------------------------------ hooks
    def train_step(self) -> dict:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        raise NotImplementedError

    def load_checkpoint(self, path) -> None:
        raise NotImplementedError

    def summary(self, checkpoint) -> dict:
        raise NotImplementedError

    def prepare(self) -> None:
        """Called once, on the first :meth:`fit`, before the checkpoint to resume is looked up."""

    def before_loop(self) -> None:
        """Called by every :meth:`fit` before its first step."""

    def after_step(self) -> None:
        """Called after every step (before the checkpoint cadence)."""

    def on_finish(self, start: int) -> None:
        """Called when this :meth:`fit` (which began at step ``start``) reached ``max_steps``."""

    def postfix(self, row: dict) -> dict:
        return {}

    def has_unfinished_work(self) -> bool:
        """True when ``resume="latest"`` has something to continue besides a checkpoint."""
        return False

    def result(self, checkpoint):
        return self.log

    # ------------------------------------------------------------------ resume
    def resolve_resume(self, resume) -> Optional[Path]:
        """The checkpoint ``resume`` names (see the module docstring), or None to start fresh."""
        if resume in (None, False, ""):
            ck = latest_checkpoint(self.run_dir)
            if ck is not None:
                raise ValueError(f"{self.run_dir} already holds a checkpoint ({ck.name}): resume it (--resume, "
                                 "resume='latest') or choose another run folder (--run-dir)")
            return None
        if resume in (True, "latest"):
            ck = latest_checkpoint(self.run_dir)
            if ck is None and not self.has_unfinished_work():
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
        if not (p / "trainer_state.json").exists():
            raise FileNotFoundError(f"--resume: {p} is not a checkpoint folder (no trainer_state.json)")
        return p

    def resume(self, resume) -> Optional[Path]:
        """Look up and load the checkpoint ``resume`` names (first call only); returns it."""
        if self._started:
            return None
        ck = self.resolve_resume(resume)
        if ck is not None:
            self.load_checkpoint(ck)
        self._started = True
        return ck

    # ------------------------------------------------------------------ logs
    def read_log(self) -> list[dict]:
        return read_csv_log(self.run_dir / self.log_file, self.int_log_fields)

    def write_log(self) -> None:
        write_csv_log(self.run_dir / self.log_file, self.log, self.log_fields)

    def write_summary(self, checkpoint) -> None:
        write_text_atomically(self.run_dir / self.summary_file, json.dumps(self.summary(checkpoint), indent=1) + "\n")

    def checkpoint(self) -> Path:
        """Save the state, then the log and the summary (main process); every process returns the folder."""
        ck = self.save_checkpoint()
        if self.accelerator.is_main_process:
            self.write_log()
            self.write_summary(ck)
        self.accelerator.wait_for_everyone()
        return ck

    # ------------------------------------------------------------------ loop
    def fit(self, resume=None, stop_at: Optional[int] = None):
        """Train to ``config.max_steps`` (or ``stop_at``, for interrupting on purpose)."""
        acc, cfg = self.accelerator, self.config
        if not self._started:
            self.prepare()
        ck = self.resume(resume)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        pbar = None
        if cfg.progress and acc.is_main_process and self.step < end:
            from tqdm.auto import tqdm

            pbar = tqdm(total=end, initial=self.step, desc=self.progress_desc, dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        last_ck, last_ck_step = ck, (self.step if ck is not None else None)
        start = self.step
        self.before_loop()
        t_session, t_base = time.perf_counter(), self.wall_time_s
        try:
            with StopOnSignal(acc) as stop:  # SIGINT/SIGTERM: finish the step, checkpoint it, raise
                while self.step < end:
                    row = self.train_step()
                    self.wall_time_s = t_base + (time.perf_counter() - t_session)
                    row["wall_time_s"] = round(self.wall_time_s, 3)
                    self.log.append(row)
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix(**self.postfix(row), refresh=False)
                    self.after_step()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                        last_ck, last_ck_step = self.checkpoint(), self.step
                    if stop.requested():
                        break
                if pbar is not None:
                    pbar.close()
                    pbar = None
                if self.step == cfg.max_steps and self.step > start:
                    self.on_finish(start)
                if last_ck_step != self.step:
                    last_ck = self.checkpoint()
                signum = stop.requested()
        finally:
            if pbar is not None:
                pbar.close()
        if signum:
            raise TrainingInterrupted(signum, self.step, last_ck or self.run_dir / "checkpoints" /
                                      checkpoint_dir_name(self.step))
        return self.result(last_ck)
