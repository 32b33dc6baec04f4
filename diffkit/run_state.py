"""Run state on disk and in memory, shared by every trainer (:class:`diffkit.train.Trainer`,
:class:`diffkit.distill.disback.DisBackTrainer`): the EMA of the weights, the run and checkpoint
folders, each process's RNG state, and the accelerator.

Checkpoints are ``<run_dir>/checkpoints/step-NNNNNNN/``, written into a staging folder by every
process together and renamed into place (:func:`diffkit.atomic.replace_dir`), so a kill leaves
either the previous complete checkpoint or the new one; ``checkpoints/latest`` names the newest.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from diffkit.atomic import replace_dir, write_text_atomically
from diffkit.distributed import destroying_created_group_at_exit

__all__ = ["EMA", "CHECKPOINT_PREFIX", "make_accelerator", "default_run_dir", "resolve_run_dir", "load_device",
           "checkpoint_dir_name", "list_checkpoints", "latest_checkpoint", "rng_state", "set_rng_state",
           "write_checkpoint_dir"]

CHECKPOINT_PREFIX = "step-"


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
    out = [p for p in d.iterdir()
           if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists()]
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
