"""DisBack (Zhang et al. 2024, arXiv 2408.15991): score distillation along a recorded path.

**Stage 1 — degradation recording** (paper Alg. 1). A copy of the teacher score network is
fine-tuned with the teacher's own DDPM loss on fresh samples of the *frozen* initial
generator G⁰ (= the teacher's one-step x̂0). Its states form the path s'_0 = teacher,
s'_1, ..., s'_N ≈ score of p_{G⁰}; nodes 1..N are saved (N × model size on disk), evenly
spaced in steps or by measured DSM-loss progress on a fixed G⁰ batch.

**Stage 2 — distribution backtracking** (paper Alg. 2, Eq. 8). The fake score starts at the
last node s'_N; the generator is trained with the distribution-matching gradient against
the targets s'_{N−1}, ..., s'_0 (K2 generator steps each; node 0 is the teacher, which
stays the target for the rest of the run). The fake score is trained online with the same
DDPM loss on fresh generator samples (``fake_updates`` per generator step).

``mode`` changes only initialisation and targets (one code path, spec §8 item 3):

=============  ==================  ==============================
mode           fake score init     target
=============  ==================  ==============================
"vanilla"      teacher             teacher (Diff-Instruct / DMD2 without GAN)
"warm-critic"  last Stage-1 node   teacher
"disback"      last Stage-1 node   nodes N−1 … 0 (K2 steps each), then teacher
=============  ==================  ==============================

The released code's switch fires at most once and loads with ``strict=False`` into
mismatched keys (spec §3.3); here every switch loads its node with ``strict=True`` after
checking the file against the SHA-256 recorded by Stage 1, and refuses a switch that
leaves the weights unchanged.

Reproducibility: every random draw is keyed to (seed, stream, global sample index) via
``diffkit.seeding``, so 1- and P-process runs follow the same trajectory up to float
summation order, and a resumed run equals an uninterrupted one bit for bit on the CPU.
Stage 1 runs on :class:`diffkit.train.Trainer`; Stage 2 has two networks and optimizers
and its own loop, with checkpoints in the same layout (``checkpoints/step-NNNNNNN``,
written to a temporary folder and renamed into place).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from diffkit.conditioning import class_guidance, num_classes
from diffkit.denoisers import EpsModel
from diffkit.schedules import VPSchedule, config_to_dict
from diffkit.seeding import randint_for_indices, randn_for_indices, sample_seed
from diffkit.atomic import save_safetensors, write_text_atomically
from diffkit.weights import file_sha256  # re-exported: the one sha256 helper
from diffkit.train import (EMA, StopOnSignal, Trainer, TrainConfig, TrainingInterrupted, checkpoint_dir_name,
                           latest_checkpoint, list_checkpoints, load_device, resolve_run_dir, set_rng_state,
                           write_checkpoint_dir)

from .generator import OneStepGenerator, check_generator_timestep, export_generator
from .losses import DEFAULT_T_RANGE, WEIGHTINGS, DistributionMatchingLoss, check_t_range, score_loss

__all__ = ["MODES", "SPACINGS", "DisBackConfig", "DisBackTrainer", "PathManifest", "load_path_manifest",
           "probe_prediction_type", "check_teacher", "state_fingerprint", "file_sha256", "fid_digits_evaluator"]

MODES = ("disback", "vanilla", "warm-critic")
SPACINGS = ("even", "progress")
PATH_FILE = "path.json"
LOG_FIELDS = ["step", "target_node", "loss_fake", "loss_gen", "mismatch", "grad_rms", "grad_norm_gen",
              "grad_norm_fake", "lr_gen", "lr_fake", "wall_time_s"]
#: settings a resumed Stage 2 must share with the checkpoint it continues
_RESUME_KEYS = ("mode", "batch_size", "fake_updates", "seed", "path_nodes", "steps_per_node", "weighting",
                "t_range", "generator_timestep", "label_dropout", "target_guidance")


# ---------------------------------------------------------------------------- config
@dataclass
class DisBackConfig:
    mode: str = "disback"
    max_steps: int = 2000               # Stage-2 generator steps
    batch_size: int = 32                # global batch (all processes)
    # Stage 1
    stage1_steps: int = 1000            # K1
    path_nodes: int = 10                # N saved nodes (node 0 = the teacher is not stored again)
    path_spacing: str = "even"          # "even" | "progress" (DSM-loss progress on a fixed G⁰ batch)
    progress_candidates: int = 4        # candidate snapshots per node for "progress" spacing
    stage1_eval_samples: int = 256
    stage1_warmup_steps: int = 0
    # Stage 2
    steps_per_node: int = 200           # K2
    fake_updates: int = 1               # fake-score updates per generator step (DI 1, DMD2 5)
    lr_generator: float = 1e-5
    lr_fake: float = 1e-4               # also Stage 1's learning rate
    betas: tuple = (0.0, 0.999)         # Adam β (DI/SiD use β1 = 0)
    weight_decay: float = 0.0
    warmup_steps: int = 100             # linear LR warm-up of both optimizers (generator steps)
    grad_clip: float = 10.0
    ema_decay: float = 0.999            # generator EMA, used for every evaluation and the export
    weighting: str = "dmd2"             # "dmd2" normaliser | "di" (Diff-Instruct, w = 1 in x̂0 space)
    target_guidance: float = 1.0
    label_dropout: float = 0.1
    t_range: tuple = DEFAULT_T_RANGE
    generator_timestep: Optional[int] = None   # None: top trained timestep (σ_init = max sigma_ve)
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0               # sample grids of the EMA generator (0: only at the end)
    eval_every: int = 0                 # evaluator calls (e.g. FID-digits; 0: only at the end)
    mixed_precision: str = "no"         # accelerate: "no" | "fp16" | "bf16"
    verify_teacher: bool = True         # probe that the teacher's outputs match its prediction_type
    progress: bool = True

    def __post_init__(self):
        self.betas, self.t_range = tuple(self.betas), tuple(int(t) for t in self.t_range)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.path_spacing not in SPACINGS:
            raise ValueError(f"path_spacing must be one of {SPACINGS}, got {self.path_spacing!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        for name in ("steps_per_node", "path_nodes", "fake_updates", "batch_size", "progress_candidates",
                     "stage1_eval_samples"):
            if int(getattr(self, name)) < 1:
                what = " (generator steps per target node, K2)" if name == "steps_per_node" else ""
                raise ValueError(f"{name}{what} must be >= 1, got {getattr(self, name)}")
        if self.mode != "vanilla" and self.stage1_steps < self.path_nodes:
            raise ValueError(f"stage1_steps ({self.stage1_steps}) must be >= path_nodes ({self.path_nodes}): "
                             "each recorded node needs at least one Stage-1 step")
        for name in ("max_steps", "stage1_steps", "warmup_steps", "stage1_warmup_steps", "checkpoint_every",
                     "sample_every", "eval_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr_generator > 0 and self.lr_fake > 0):
            raise ValueError(f"lr_generator and lr_fake must be > 0, got {self.lr_generator}, {self.lr_fake}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    @property
    def needs_path(self) -> bool:
        return self.mode != "vanilla"

    def target_node(self, step: int) -> int:
        """Path node that is the target at generator step ``step`` (0-based); 0 = the teacher."""
        if self.mode != "disback":
            return 0
        return max(self.path_nodes - 1 - step // self.steps_per_node, 0)


# ---------------------------------------------------------------------------- helpers
def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state_dict (sorted keys, names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _derived_seed(seed: int, name: str) -> int:
    return sample_seed(seed, 0, name)


@torch.no_grad()
def probe_prediction_type(unet: nn.Module, scheduler_config, n: int = 32, seed: int = 0) -> float:
    """Mean cosine between the UNet's output and its input noise at the top trained timestep.

    There x_t is almost pure noise, so an ε-model returns ≈ its input (cosine ≈ 1) while a
    v-model returns ≈ −x̂0 and an x0-model ≈ x̂0 (cosine ≈ 0): a cheap check that the
    scheduler config's ``prediction_type`` describes the network.
    """
    schedule = VPSchedule.from_config(scheduler_config)
    cfg = unet.config
    T = schedule.num_train_timesteps
    z = randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), range(n), seed, "probe-noise")
    z = z.to(unet.device, unet.dtype)
    kw = {}
    c = num_classes(unet)
    if c:
        kw["class_labels"] = (torch.arange(n) % c).to(unet.device)
    out = unet(z, torch.full((n,), T - 1, device=unet.device, dtype=torch.long), **kw).sample
    return float(torch.nn.functional.cosine_similarity(out.flatten(1).float(), z.flatten(1).float(), dim=1).mean())


def check_teacher(unet: nn.Module, scheduler_config) -> None:
    """Raise if the teacher's outputs contradict its config's prediction_type (see probe_prediction_type)."""
    pt = VPSchedule.from_config(scheduler_config).prediction_type
    cos = probe_prediction_type(unet, scheduler_config)
    looks_eps = cos > 0.5
    if (pt == "epsilon") != looks_eps:
        seen = "the input noise (an ε-prediction model)" if looks_eps else "not the input noise (a v- or x0-prediction model, or an untrained network)"
        raise ValueError(
            f"teacher: its scheduler config says prediction_type={pt!r}, but at the top timestep its outputs match "
            f"{seen}: cosine(output, noise) = {cos:.3f} (ε-models give ≈1, v/x0-models ≈0). Set the scheduler "
            f"config's prediction_type to what the network was trained for (accepted: 'epsilon', 'v_prediction', "
            f"'sample'), or pass verify_teacher=False (--no-verify-teacher) to skip this check.")


def _strip_module_prefix(sd: dict) -> dict:
    """Weights saved from a DDP wrapper carry ``module.`` on every key (spec §3.3 item 2)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_strict(module: nn.Module, path, what: str) -> None:
    """Load safetensors weights into ``module`` with strict key matching and a clear error."""
    from safetensors.torch import load_file

    try:
        sd = _strip_module_prefix(load_file(str(path), device="cpu"))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise ValueError(f"{what}: cannot read {path} ({type(e).__name__}: {e}); the file is corrupt") from None
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad_shape = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or bad_shape:
        raise ValueError(f"{what}: {path} does not match the model (missing keys {missing[:3]}, unexpected keys "
                         f"{unexpected[:3]}, shape mismatches {bad_shape[:3]}); was it recorded from another teacher?")
    module.load_state_dict(sd, strict=True)


def _save_safetensors(module_or_sd, path) -> None:
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in sd.items()}, path)


# ---------------------------------------------------------------------------- the path
@dataclass
class PathManifest:
    """``stage1/path.json``: the recorded degradation path (node 0 = the teacher, not stored)."""

    directory: Path
    nodes: list            # [{"index", "step", "file", "sha256", "eval_loss", "bytes"}], index 0 .. N
    teacher_sha256: str
    info: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        """N, the number of stored nodes (node 0, the teacher, excluded)."""
        return len(self.nodes) - 1

    def node_file(self, i: int) -> Path:
        if not 1 <= i <= self.num_nodes:
            raise ValueError(f"path node must be in 1..{self.num_nodes}, got {i}")
        return self.directory / self.nodes[i]["file"]

    @property
    def disk_bytes(self) -> int:
        return sum(int(n.get("bytes") or 0) for n in self.nodes[1:])


def load_path_manifest(stage1_dir, teacher_sha256: Optional[str] = None, expect_nodes: Optional[int] = None,
                       verify_files: bool = True) -> PathManifest:
    """Read and check a Stage-1 path: present, parseable, same teacher, every node file intact."""
    d = Path(stage1_dir)
    p = d / PATH_FILE
    if not p.exists():
        hint = " (the folder does not exist)" if not d.exists() else ""
        raise FileNotFoundError(
            f"Stage-1 path not found: {p} is missing{hint}. Record it first (mode 'disback' or 'warm-critic' runs "
            f"Stage 1 into <run-dir>/stage1 automatically; `diffkit distill --stage 1` runs only Stage 1), or point "
            f"--stage1-dir at a finished Stage-1 folder.")
    try:
        raw = json.loads(p.read_text())
        nodes = raw["nodes"]
        if not isinstance(nodes, list) or len(nodes) < 2 or [n["index"] for n in nodes] != list(range(len(nodes))):
            raise ValueError("node list malformed")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Stage-1 path {p} is corrupt ({e}); delete {d} and rerun Stage 1") from None
    m = PathManifest(d, nodes, raw.get("teacher_sha256", ""), raw.get("info", {}))
    if teacher_sha256 is not None and m.teacher_sha256 != teacher_sha256:
        raise ValueError(f"Stage-1 path {d} was recorded from a different teacher (teacher sha256 "
                         f"{m.teacher_sha256[:12]}… vs {teacher_sha256[:12]}…); rerun Stage 1 for this teacher")
    if expect_nodes is not None and m.num_nodes != expect_nodes:
        raise ValueError(f"Stage-1 path {d} has {m.num_nodes} nodes but path_nodes={expect_nodes}; "
                         f"use --path-nodes {m.num_nodes} or rerun Stage 1")
    if verify_files:
        for i in range(1, m.num_nodes + 1):
            f = m.node_file(i)
            if not f.exists():
                raise FileNotFoundError(f"Stage-1 path {d}: node {i} file {f} is missing; rerun Stage 1")
            if file_sha256(f) != m.nodes[i]["sha256"]:
                raise ValueError(f"Stage-1 path {d}: node {i} file {f} is corrupt (sha256 differs from {PATH_FILE}); "
                                 "rerun Stage 1")
    return m


# ---------------------------------------------------------------------------- sources
class GeneratorSource:
    """``(indices, step) -> (x, labels)`` (or ``x``): fresh samples of a generator, no gradient.

    Noise and labels are drawn per global index from streams ``<name>-noise`` / ``<name>-label``.
    """

    def __init__(self, generator: Callable, shape, n_classes: int, seed: int, name: str, device=None):
        self.generator, self.shape, self.n_classes = generator, tuple(shape), int(n_classes)
        self.seed, self.name, self.device = int(seed), name, device

    def draw(self, indices):
        z = randn_for_indices(self.shape, indices, self.seed, f"{self.name}-noise", device=self.device)
        labels = (randint_for_indices(0, self.n_classes, indices, self.seed, f"{self.name}-label", device=self.device)
                  if self.n_classes else None)
        return z, labels

    @torch.no_grad()
    def __call__(self, indices, step=None):
        z, labels = self.draw(indices)
        x = self.generator(z, labels).detach()
        return x if labels is None else (x, labels)


# ---------------------------------------------------------------------------- trainer
class DisBackTrainer:
    """Two-stage DisBack (or its vanilla / warm-critic baselines) on ``accelerate``.

    ``teacher_unet``: a diffusers ``UNet2DModel`` (class-conditional with the null class last,
    or unconditional); ``scheduler_config``: its noise schedule (prediction_type included).
    ``run_dir`` receives ``stage1/`` (unless ``stage1_dir`` points elsewhere, e.g. a path
    shared by several runs), ``checkpoints/``, ``log.csv``, ``summary.json``, ``samples/``.
    ``evaluator(pipe, step) -> dict`` is called with a :class:`OneStepPipeline` holding the
    EMA generator every ``eval_every`` steps and at the end.
    """

    def __init__(self, teacher_unet: nn.Module, scheduler_config, config: DisBackConfig, run_dir,
                 stage1_dir=None, accelerator=None, evaluator: Optional[Callable] = None, cpu: Optional[bool] = None):
        from diffusers import UNet2DModel

        if not isinstance(teacher_unet, UNet2DModel):
            raise TypeError(f"teacher_unet: expected a diffusers UNet2DModel (class-conditional or unconditional), "
                            f"got {type(teacher_unet).__name__}; text-conditional teachers are not supported yet")
        self.config = config
        self.scheduler_config = config_to_dict(scheduler_config)
        self.schedule = VPSchedule.from_config(self.scheduler_config)
        T = self.schedule.num_train_timesteps
        check_t_range(config.t_range, T)
        self.generator_timestep = check_generator_timestep(config.generator_timestep, T)
        self.n_classes = num_classes(teacher_unet)
        if config.target_guidance != 1.0 and not self.n_classes:
            raise ValueError(f"target_guidance={config.target_guidance} needs a class-conditional teacher "
                             "(an unconditional one has no null branch); use 1.0")
        self.run_dir = Path(run_dir)
        # An explicit stage1_dir is an existing path to use (never recorded implicitly); the default
        # <run_dir>/stage1 is recorded on the first fit() if it is not there yet.
        self.stage1_external = stage1_dir is not None
        self.stage1_dir = Path(stage1_dir) if stage1_dir else self.run_dir / "stage1"
        if accelerator is None:
            from accelerate import Accelerator

            if cpu is None:
                cpu = not torch.cuda.is_available()
            accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)
        self.accelerator = acc = accelerator
        if config.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes "
                             f"({acc.num_processes}) so every process gets an equal share")
        sigma_init = float(self.schedule.sigma_ve(self.generator_timestep))
        if config.mixed_precision != "no" and sigma_init > 10:
            import warnings

            # x̂0 = (z − √(1−ᾱ)·ε̂)/√ᾱ multiplies the ε̂ error by σ_init; bf16's ~3 significant digits
            # then give x̂0 errors of order σ_init·4e-3 at the generator's timestep.
            warnings.warn(f"mixed_precision={config.mixed_precision!r} with σ_init = {sigma_init:.0f}: the generator's "
                          f"x̂0 amplifies the half-precision ε error {sigma_init:.0f}×; prefer 'no' (fp32) or a lower "
                          "generator_timestep", stacklevel=2)
        self.teacher = teacher_unet.to(acc.device).eval().requires_grad_(False)
        if config.verify_teacher:
            check_teacher(self.teacher, self.scheduler_config)
        self.teacher_sha256 = state_fingerprint(self.teacher)
        self.evaluator = evaluator
        self.shape = (teacher_unet.config.in_channels, teacher_unet.config.sample_size, teacher_unet.config.sample_size)
        self.null_class = self.n_classes if self.n_classes else None
        self.manifest: Optional[PathManifest] = None
        self.step = 0
        self.wall_time_s = 0.0
        self.log: list[dict] = []
        self.evals: list[dict] = []
        self.switches: list[dict] = []
        self._stage2_ready = False
        self._started = False

    # ------------------------------------------------------------------ shared pieces
    def _score_loss(self, name: str):
        return score_loss(self.scheduler_config, seed=_derived_seed(self.config.seed, name),
                          label_dropout=self.config.label_dropout, null_class=self.null_class,
                          t_range=self.config.t_range)

    def _local_indices(self, k: int) -> torch.Tensor:
        """Global indices of this process's share of batch number ``k``."""
        B, P, r = self.config.batch_size, self.accelerator.num_processes, self.accelerator.process_index
        per = B // P
        return torch.arange(k * B + r * per, k * B + (r + 1) * per, dtype=torch.long)

    def _g0(self) -> OneStepGenerator:
        """The frozen initial generator: the teacher's one-step x̂0 (shares the teacher's weights)."""
        return OneStepGenerator(self.teacher, self.scheduler_config, self.generator_timestep)

    def _say(self, msg: str) -> None:
        if self.accelerator.is_main_process and self.config.progress:
            print(msg, file=sys.stderr)

    # ------------------------------------------------------------------ Stage 1
    def stage1_boundaries(self) -> list[int]:
        """Steps at which Stage 1 snapshots the network (every node, or every candidate)."""
        cfg = self.config
        c = cfg.path_nodes * (cfg.progress_candidates if cfg.path_spacing == "progress" else 1)
        c = min(c, cfg.stage1_steps)
        return sorted({max(1, round(j * cfg.stage1_steps / c)) for j in range(1, c + 1)})

    @torch.no_grad()
    def stage1_eval_loss(self, unet: nn.Module) -> float:
        """DSM loss of ``unet`` on a fixed batch of G⁰ samples with fixed t/ε/dropout draws."""
        cfg = self.config
        src = GeneratorSource(self._g0(), self.shape, self.n_classes, _derived_seed(cfg.seed, "stage1-eval"),
                              "stage1-eval", device=self.accelerator.device)
        loss = self._score_loss("stage1-eval-loss")
        total, n, chunk = 0.0, cfg.stage1_eval_samples, 256
        was_training = unet.training
        unet.eval()
        for lo in range(0, n, chunk):
            idx = torch.arange(lo, min(lo + chunk, n))
            total += float(loss(unet, src(idx), idx, 0)) * len(idx)
        unet.train(was_training)
        return total / n

    def run_stage1(self) -> PathManifest:
        """Record (or finish recording, after a kill) the degradation path; returns its manifest."""
        cfg, acc = self.config, self.accelerator
        d = self.stage1_dir
        if (d / PATH_FILE).exists():
            self.manifest = load_path_manifest(d, self.teacher_sha256, cfg.path_nodes)
            return self.manifest
        fake = copy.deepcopy(self.teacher).requires_grad_(True).train()
        source = GeneratorSource(self._g0(), self.shape, self.n_classes, _derived_seed(cfg.seed, "stage1"), "stage1",
                                 device=acc.device)
        tcfg = TrainConfig(max_steps=cfg.stage1_steps, batch_size=cfg.batch_size, lr=cfg.lr_fake, betas=cfg.betas,
                           weight_decay=cfg.weight_decay, warmup_steps=cfg.stage1_warmup_steps,
                           grad_clip=cfg.grad_clip, ema_decay=0.0, seed=cfg.seed, checkpoint_every=0,
                           keep_checkpoints=1, progress=cfg.progress)
        trainer = Trainer(fake, self._score_loss("stage1-loss"), source, tcfg, d, accelerator=acc,
                          meta={"what": "DisBack Stage 1 (degradation recording)", "teacher_sha256": self.teacher_sha256})
        progress_file = d / "progress.json"
        settings = self._stage1_settings()
        record = {"teacher_sha256": self.teacher_sha256, "settings": settings, "candidates": [], "eval_loss_0": None}
        if latest_checkpoint(d) is not None:
            if progress_file.exists():
                record = json.loads(progress_file.read_text())
            if record.get("teacher_sha256") != self.teacher_sha256:
                raise ValueError(f"{d} holds an unfinished Stage-1 run of a different teacher; delete it or choose "
                                 "another --stage1-dir")
            if record.get("settings") != settings:
                diff = sorted(k for k in settings if record.get("settings", {}).get(k) != settings[k])
                raise ValueError(f"{d} holds an unfinished Stage-1 run with other settings ({', '.join(diff)}); "
                                 "resume it with the same settings, or delete it")
            trainer.load_checkpoint(latest_checkpoint(d))
        cand_dir = d / "path"
        if acc.is_main_process:
            cand_dir.mkdir(parents=True, exist_ok=True)
            if record["eval_loss_0"] is None:
                record["eval_loss_0"] = self.stage1_eval_loss(self.teacher)
        done = {c["step"] for c in record["candidates"]}
        for b in self.stage1_boundaries():
            if b in done:
                continue
            if trainer.step > b:
                raise RuntimeError(f"Stage-1 run {d} is inconsistent (trained to step {trainer.step} but snapshot "
                                   f"{b} is missing); delete {d} and rerun Stage 1")
            if trainer.step < b:
                trainer.fit(stop_at=b)
            if acc.is_main_process:
                f = cand_dir / f"cand-{b:07d}.safetensors"
                _save_safetensors(trainer.unwrapped, f)
                record["candidates"].append({"step": b, "file": f.name, "eval_loss": self.stage1_eval_loss(trainer.unwrapped)})
                write_text_atomically(progress_file, json.dumps(record, indent=1))
            acc.wait_for_everyone()
        if acc.is_main_process:
            self._write_path(record, trainer.wall_time_s)
        acc.wait_for_everyone()
        # drop accelerate's references to the Stage-1 network and optimizer (free_memory() would also
        # forget nothing else here, but runs a full gc.collect)
        for registry, obj in ((getattr(acc, "_models", None), trainer.model),
                              (getattr(acc, "_optimizers", None), trainer.optimizer)):
            if isinstance(registry, list) and any(o is obj for o in registry):
                registry[:] = [o for o in registry if o is not obj]
        del trainer, fake
        self.manifest = load_path_manifest(d, self.teacher_sha256, cfg.path_nodes)
        self._say(f"Stage 1: {self.manifest.num_nodes} nodes, {self.manifest.disk_bytes / 2**20:.1f} MiB on disk "
                  f"({self.manifest.num_nodes} × {self.manifest.nodes[1]['bytes'] / 2**20:.1f} MiB) in {d / 'path'}")
        return self.manifest

    def _select_nodes(self, record: dict) -> list[dict]:
        """The N candidates that become nodes 1..N (the last one is always the final state)."""
        cfg = self.config
        cands = sorted(record["candidates"], key=lambda c: c["step"])
        N = cfg.path_nodes
        if cfg.path_spacing == "even" or len(cands) == N:
            return cands[-N:] if len(cands) > N else cands
        l0, lN = record["eval_loss_0"], cands[-1]["eval_loss"]
        if not l0 - lN > 0:
            self._say("Stage 1: the DSM loss did not fall; spacing the path evenly instead of by progress")
            return [cands[round((i + 1) * len(cands) / N) - 1] for i in range(N)]
        chosen, j = [], -1
        for i in range(1, N):
            # first candidate past the previous node whose progress reaches i/N, leaving room for the rest
            limit = len(cands) - 1 - (N - i)
            j = next((k for k in range(j + 1, limit + 1) if (l0 - cands[k]["eval_loss"]) / (l0 - lN) >= i / N), limit)
            chosen.append(cands[j])
        return chosen + [cands[-1]]

    def _stage1_settings(self) -> dict:
        cfg = self.config
        return {"stage1_steps": cfg.stage1_steps, "path_nodes": cfg.path_nodes, "spacing": cfg.path_spacing,
                "progress_candidates": cfg.progress_candidates, "eval_samples": cfg.stage1_eval_samples,
                "batch_size": cfg.batch_size, "lr": cfg.lr_fake, "betas": list(cfg.betas),
                "weight_decay": cfg.weight_decay, "warmup_steps": cfg.stage1_warmup_steps, "grad_clip": cfg.grad_clip,
                "seed": cfg.seed, "t_range": list(cfg.t_range), "label_dropout": cfg.label_dropout,
                "generator_timestep": self.generator_timestep}

    def _write_path(self, record: dict, wall_time_s: float) -> None:
        d, cfg = self.stage1_dir, self.config
        chosen = self._select_nodes(record)
        nodes = [{"index": 0, "step": 0, "file": None, "sha256": self.teacher_sha256,
                  "eval_loss": record["eval_loss_0"], "bytes": 0}]
        for i, c in enumerate(chosen, start=1):
            name = f"path/{c['file']}"  # files keep their snapshot names: nothing to rename, nothing to lose
            nodes.append({"index": i, "step": c["step"], "file": name, "sha256": file_sha256(d / name),
                          "eval_loss": c["eval_loss"], "bytes": (d / name).stat().st_size})
        info = {**self._stage1_settings(), "wall_time_s": round(wall_time_s, 2),
                "processes": self.accelerator.num_processes, "disk_bytes": sum(n["bytes"] for n in nodes),
                "candidates": record["candidates"]}
        raw = {"version": 1, "teacher_sha256": self.teacher_sha256, "nodes": nodes, "info": info}
        write_text_atomically(d / PATH_FILE, json.dumps(raw, indent=1) + "\n")
        keep = {Path(n["file"]).name for n in nodes[1:]}
        for f in (d / "path").iterdir():  # unchosen candidates, once the manifest no longer needs them
            if f.name not in keep:
                f.unlink()
        for ck in list_checkpoints(d):  # the Stage-1 optimiser state is not needed once the path exists
            shutil.rmtree(ck, ignore_errors=True)

    # ------------------------------------------------------------------ Stage 2 setup
    def _setup_stage2(self) -> None:
        if self._stage2_ready:
            return
        cfg, acc = self.config, self.accelerator
        if cfg.needs_path:
            if self.manifest is None:
                self.manifest = load_path_manifest(self.stage1_dir, self.teacher_sha256, cfg.path_nodes)
        generator = OneStepGenerator.from_teacher(self.teacher, self.scheduler_config, self.generator_timestep).train()
        fake = copy.deepcopy(self.teacher).requires_grad_(True)
        if cfg.needs_path:  # warm critic: the fake score starts fitted to p_{G⁰} (the last node)
            load_strict(fake, self.manifest.node_file(self.manifest.num_nodes), f"Stage-1 node {self.manifest.num_nodes}")
        fake.train()
        opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr_generator, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay)
        opt_f = torch.optim.AdamW(fake.parameters(), lr=cfg.lr_fake, betas=cfg.betas, weight_decay=cfg.weight_decay)
        # Two separate wraps (DDP each): the generator and the fake score (spec §8 item 13).
        self.generator, self.fake, self.opt_g, self.opt_f = acc.prepare(generator.to(acc.device), fake.to(acc.device),
                                                                        opt_g, opt_f)
        self.ema = EMA(self.gen_unwrapped.unet, cfg.ema_decay)
        self.fake_model = EpsModel(self.fake_unwrapped, self.schedule)  # x̂0 view of the fake score (no grad)
        self.fake_loss = self._score_loss("fake-loss")
        self.dm_loss = DistributionMatchingLoss(self.schedule, seed=_derived_seed(cfg.seed, "dm"), t_range=cfg.t_range,
                                                weighting=cfg.weighting)
        self.gen_source = GeneratorSource(self.gen_unwrapped, self.shape, self.n_classes,
                                          _derived_seed(cfg.seed, "generator"), "gen", device=acc.device)
        self.fake_source = GeneratorSource(self.gen_unwrapped, self.shape, self.n_classes,
                                           _derived_seed(cfg.seed, "generator"), "fake", device=acc.device)
        self._target_module = None   # a teacher-shaped module holding the current path node
        self.target_index: Optional[int] = None
        self.target_unet: Optional[nn.Module] = None
        self.target_model: Optional[EpsModel] = None
        self._stage2_ready = True

    @property
    def gen_unwrapped(self) -> OneStepGenerator:
        return self.accelerator.unwrap_model(self.generator)

    @property
    def fake_unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.fake)

    def set_target(self, node: int, step: Optional[int] = None) -> None:
        """Make path node ``node`` the target (0 = teacher); strict load, verified file, weights must change."""
        if node == self.target_index:
            return
        previous = None if self.target_unet is None else state_fingerprint(self.target_unet)
        if node == 0:
            self.target_unet = self.teacher
            self._target_module = None  # free the node copy
            sha = self.teacher_sha256
            fingerprint = self.teacher_sha256
        else:
            f = self.manifest.node_file(node)
            sha = file_sha256(f)
            if sha != self.manifest.nodes[node]["sha256"]:
                raise ValueError(f"Stage-1 node {node} file {f} is corrupt (sha256 differs from {PATH_FILE})")
            if self._target_module is None:
                self._target_module = copy.deepcopy(self.teacher)
            load_strict(self._target_module, f, f"Stage-1 node {node}")
            self._target_module.to(self.accelerator.device).eval().requires_grad_(False)
            self.target_unet = self._target_module
            fingerprint = state_fingerprint(self.target_unet)
        if previous is not None and fingerprint == previous:
            raise RuntimeError(f"target switch to node {node} left the target's weights unchanged (nodes "
                               f"{self.target_index} and {node} are identical); the Stage-1 path is degenerate")
        self.target_index = node
        self.target_model = EpsModel(self.target_unet, self.schedule)
        if not self.switches or self.switches[-1]["node"] != node:  # a reload after resume is not a switch
            self.switches.append({"step": self.step if step is None else step, "node": node, "sha256": sha,
                                  "fingerprint": fingerprint})

    def _warm(self, step: int) -> float:
        w = self.config.warmup_steps
        return min(1.0, (step + 1) / w) if w else 1.0

    # ------------------------------------------------------------------ Stage 2 step
    def _guidance(self, labels, scale: float):
        if labels is None:
            return None
        return class_guidance(self.teacher, labels, scale, device=self.accelerator.device)

    def train_step(self) -> dict:
        """One generator step (after ``fake_updates`` fake-score updates); returns its log row."""
        cfg, acc, s = self.config, self.accelerator, self.step
        lr_g, lr_f = cfg.lr_generator * self._warm(s), cfg.lr_fake * self._warm(s)
        for g in self.opt_g.param_groups:
            g["lr"] = lr_g
        for g in self.opt_f.param_groups:
            g["lr"] = lr_f
        # -- fake score: the teacher's DDPM loss on fresh samples of the current generator
        fake_losses, fake_norms = [], []
        self.fake.train()
        for j in range(cfg.fake_updates):
            k = s * cfg.fake_updates + j
            idx = self._local_indices(k)
            batch = self.fake_source(idx)
            with acc.autocast():
                loss_f = self.fake_loss(self.fake, batch, idx, k)
            if not torch.isfinite(loss_f):
                raise FloatingPointError(f"fake-score loss is {loss_f.item()} at step {s}")
            acc.backward(loss_f)
            fake_norms.append(float(acc.clip_grad_norm_(self.fake.parameters(), cfg.grad_clip or math.inf)))
            self.opt_f.step()
            self.opt_f.zero_grad(set_to_none=True)
            fake_losses.append(float(loss_f.detach()))
        # -- generator: distribution matching against the current target
        self.set_target(cfg.target_node(s), s)
        idx = self._local_indices(s)
        z, labels = self.gen_source.draw(idx)
        with acc.autocast():
            x = self.generator(z, labels)
            loss_g, stats = self.dm_loss(x, self.fake_model, self.target_model, idx, self._guidance(labels, 1.0),
                                         self._guidance(labels, cfg.target_guidance))
        if not torch.isfinite(loss_g):
            raise FloatingPointError(f"generator loss is {loss_g.item()} at step {s}")
        acc.backward(loss_g)
        gnorm = float(acc.clip_grad_norm_(self.generator.parameters(), cfg.grad_clip or math.inf))
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_f.zero_grad(set_to_none=True)  # nothing should have reached the fake score; keep it so
        self.ema.update(self.gen_unwrapped.unet)
        vals = torch.tensor([sum(fake_losses) / len(fake_losses), float(loss_g.detach()), stats.mismatch,
                             stats.grad_rms], dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            vals = acc.reduce(vals, reduction="mean")
        vals = vals.tolist()
        self.step += 1
        return {"step": self.step, "target_node": self.target_index, "loss_fake": vals[0], "loss_gen": vals[1],
                "mismatch": vals[2], "grad_rms": vals[3], "grad_norm_gen": gnorm,
                "grad_norm_fake": sum(fake_norms) / len(fake_norms), "lr_gen": lr_g, "lr_fake": lr_f}

    # ------------------------------------------------------------------ Stage 2 loop
    def fit(self, resume=None, stop_at: Optional[int] = None):
        """Run Stage 2 to ``config.max_steps`` generator steps (Stage 1 first if the mode needs it).

        ``resume`` (first call only): None or ``"latest"``/True (continue from the latest
        checkpoint if there is one), False (refuse to touch an existing run), or a checkpoint
        folder. An unfinished Stage 1 always resumes. Later calls continue from memory.
        ``stop_at`` interrupts on purpose. SIGINT/SIGTERM during Stage 1 or Stage 2 finish the
        step in progress (its samples and evaluation included), write its checkpoint and raise
        :class:`diffkit.train.TrainingInterrupted`; resuming continues exactly.
        """
        cfg, acc = self.config, self.accelerator
        ck = None
        if not self._started:
            if cfg.needs_path:
                if self.stage1_external:
                    self.manifest = load_path_manifest(self.stage1_dir, self.teacher_sha256, cfg.path_nodes)
                else:
                    self.run_stage1()
            self._setup_stage2()
            ck = self._resolve_resume(resume)
            if ck is not None:
                self.load_checkpoint(ck)
            self._started = True
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        pbar = None
        if cfg.progress and acc.is_main_process and self.step < end:
            from tqdm.auto import tqdm

            pbar = tqdm(total=end, initial=self.step, desc=f"distill ({cfg.mode})", dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        last_ck_step = self.step if ck is not None else None
        start = self.step
        if self.step == 0 and end > 0:  # the curves start at G⁰
            if cfg.sample_every:
                self.save_samples()
            if cfg.eval_every and not any(e["step"] == 0 for e in self.evals):
                self.evaluate()
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
                        pbar.set_postfix(node=row["target_node"], fake=f"{row['loss_fake']:.4f}",
                                         mismatch=f"{row['mismatch']:.4f}", refresh=False)
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        self.save_samples()
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        self.evaluate()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                        self.save_checkpoint()
                        last_ck_step = self.step
                    if stop.requested():
                        break
                if pbar is not None:
                    pbar.close()
                    pbar = None
                if self.step == cfg.max_steps and self.step > start:
                    if not cfg.sample_every or self.step % cfg.sample_every:
                        self.save_samples()
                    if self.evaluator is not None and (not cfg.eval_every or self.step % cfg.eval_every):
                        self.evaluate()
                if last_ck_step != self.step:
                    self.save_checkpoint()
                signum = stop.requested()
        finally:
            if pbar is not None:
                pbar.close()
        if signum:
            raise TrainingInterrupted(signum, self.step, self.run_dir / "checkpoints" / checkpoint_dir_name(self.step))
        return self.log

    def train(self, output=None, resume=None):
        """Stage 1 (if needed), Stage 2, and the export of the EMA generator to ``output``."""
        self.fit(resume=resume)
        if output is not None and self.accelerator.is_main_process:
            self.export(output)
        self.accelerator.wait_for_everyone()
        return self.log

    # ------------------------------------------------------------------ evaluation / export
    def ema_unet(self) -> nn.Module:
        """A CPU copy of the generator UNet carrying the EMA weights."""
        unet = copy.deepcopy(self.gen_unwrapped.unet).cpu().eval()
        return self.ema.copy_to(unet)

    def pipeline(self):
        """A :class:`OneStepPipeline` of the EMA generator (on the training device)."""
        from diffusers import DDIMScheduler

        from diffkit.pipelines.one_step import OneStepPipeline

        sched = DDIMScheduler.from_config(self.scheduler_config)
        pipe = OneStepPipeline(self.ema_unet().to(self.accelerator.device), sched, self.generator_timestep)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_samples(self, n: int = 64) -> Optional[Path]:
        if not self.accelerator.is_main_process:
            return None
        from diffkit.images import save_grid

        pipe = self.pipeline()
        labels = [k % self.n_classes for k in range(n)] if self.n_classes else None
        out = pipe(class_labels=labels, batch_size=None if labels else n, seed=_derived_seed(self.config.seed, "grid"),
                   output_type="pt")
        path = self.run_dir / "samples" / f"step-{self.step:07d}.png"
        save_grid(out.images, str(path), nrow=self.n_classes or None, upscale=4)
        return path

    def evaluate(self) -> Optional[dict]:
        if self.evaluator is None:
            return None
        res = None
        if self.accelerator.is_main_process:
            res = {"step": self.step, **self.evaluator(self.pipeline(), self.step)}
            self.evals.append(res)
            self._write_evals()
            self._say(f"eval at step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                                              if isinstance(v, float)))
        self.accelerator.wait_for_everyone()
        return res

    def export(self, output, extra_facts: Optional[dict] = None) -> Path:
        """Save the EMA generator as a diffusers ``OneStepPipeline`` folder (never the run folder
        or a folder holding it: the export replaces ``output`` as a whole)."""
        from diffusers import DDIMScheduler

        resolve_run_dir(output, self.run_dir)  # raises if the run folder is output or inside it
        cfg = self.config
        facts = {"method": f"DisBack score distillation (mode {cfg.mode!r})", "generator_steps": self.step,
                 "generator_timestep": self.generator_timestep,
                 "sigma_init": float(self.schedule.sigma_ve(self.generator_timestep)),
                 "teacher_sha256": self.teacher_sha256, "config": asdict(cfg),
                 "wall_time_s": round(self.wall_time_s, 1), "processes": self.accelerator.num_processes,
                 "stage1": None if self.manifest is None else {"dir": str(self.manifest.directory),
                                                               "nodes": self.manifest.num_nodes,
                                                               **{k: v for k, v in self.manifest.info.items()
                                                                  if k != "candidates"}},
                 "evals": self.evals[-1:] if self.evals else []}
        facts.update(extra_facts or {})
        return export_generator(self.ema_unet(), DDIMScheduler.from_config(self.scheduler_config), output,
                                self.generator_timestep, facts)

    # ------------------------------------------------------------------ checkpoints
    def _resolve_resume(self, resume) -> Optional[Path]:
        if resume is False:
            if latest_checkpoint(self.run_dir) is not None:
                raise ValueError(f"{self.run_dir} already holds a Stage-2 checkpoint: resume it (--resume) or "
                                 "choose another run folder (--run-dir)")
            return None
        if resume in (None, True, "latest", ""):
            ck = latest_checkpoint(self.run_dir)
            if ck is None and resume in (True, "latest"):  # e.g. killed during Stage 1: that part resumed above
                self._say(f"resume: no Stage-2 checkpoint under {self.run_dir / 'checkpoints'} yet; Stage 2 starts "
                          "from step 0")
            return ck
        p = Path(resume)
        if not (p / "trainer_state.json").exists():
            raise FileNotFoundError(f"--resume: {p} is not a Stage-2 checkpoint folder (no trainer_state.json)")
        return p

    def save_checkpoint(self) -> Path:
        acc = self.accelerator

        def write(tmp: Path) -> None:
            _save_safetensors(self.gen_unwrapped.unet, tmp / "generator.safetensors")
            _save_safetensors(self.ema.shadow, tmp / "generator_ema.safetensors")
            _save_safetensors(self.fake_unwrapped, tmp / "fake.safetensors")
            torch.save({"opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict()}, tmp / "optimizer.pt")
            state = {"step": self.step, "ema_num_updates": self.ema.num_updates, "wall_time_s": self.wall_time_s,
                     "world_size": acc.num_processes, "config": asdict(self.config),
                     "teacher_sha256": self.teacher_sha256, "target_node": self.target_index,
                     "stage1_dir": str(self.stage1_dir) if self.config.needs_path else None,
                     "switches": self.switches, "evals": self.evals}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))

        final = write_checkpoint_dir(acc, self.run_dir, self.step, self.config.keep_checkpoints, write)
        if acc.is_main_process:
            self._write_log()
            self._write_summary(final)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path) -> None:
        from safetensors.torch import load_file

        path, acc = Path(path), self.accelerator
        need = ["trainer_state.json", "generator.safetensors", "generator_ema.safetensors", "fake.safetensors",
                "optimizer.pt"]
        missing = [n for n in need if not (path / n).exists()]
        if missing:
            raise FileNotFoundError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("teacher_sha256") != self.teacher_sha256:
            raise ValueError(f"checkpoint {path} was trained from a different teacher")
        theirs, ours = state.get("config", {}), asdict(self.config)
        diff = [k for k in _RESUME_KEYS if k in theirs and _norm(theirs[k]) != _norm(ours[k])]
        if diff:
            raise ValueError("cannot resume: the checkpoint was written with different settings: " +
                             ", ".join(f"{k}={theirs[k]!r} (now {ours[k]!r})" for k in diff))
        load_strict(self.gen_unwrapped.unet, path / "generator.safetensors", "checkpoint generator")
        load_strict(self.fake_unwrapped, path / "fake.safetensors", "checkpoint fake score")
        self.ema.load_state_dict({"shadow": load_file(str(path / "generator_ema.safetensors")),
                                  "num_updates": state["ema_num_updates"], "decay": self.config.ema_decay})
        opt = torch.load(path / "optimizer.pt", map_location=load_device(acc), weights_only=True)
        self.opt_g.load_state_dict(opt["opt_g"])
        self.opt_f.load_state_dict(opt["opt_f"])
        rng = path / f"rng-rank{acc.process_index}.pt"
        if state.get("world_size") == acc.num_processes and rng.exists():
            set_rng_state(torch.load(rng, weights_only=True), {})
        self.step = int(state["step"])
        self.wall_time_s = float(state.get("wall_time_s", 0.0))
        self.switches = [s for s in state.get("switches", []) if s["step"] <= self.step]
        self.evals = [e for e in state.get("evals", []) if e["step"] <= self.step]
        self.log = [r for r in self._read_log() if r["step"] <= self.step]
        self.target_index, self.target_unet, self.target_model = None, None, None
        self.set_target(self.config.target_node(self.step), self.step)

    # ------------------------------------------------------------------ logs
    def _read_log(self) -> list[dict]:
        p = self.run_dir / "log.csv"
        if not p.exists():
            return []
        with open(p, newline="") as f:
            return [{k: (int(v) if k in ("step", "target_node") else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(f)]

    def _write_log(self) -> None:
        p = self.run_dir / "log.csv"
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            for r in self.log:
                w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        os.replace(tmp, p)

    def _write_evals(self) -> None:
        write_text_atomically(self.run_dir / "evals.json", json.dumps(self.evals, indent=1) + "\n")

    def _write_summary(self, checkpoint) -> None:
        tail = self.log[-100:]
        mean = (lambda k: sum(r[k] for r in tail) / len(tail)) if tail else (lambda k: None)  # noqa: E731
        summary = {"step": self.step, "mode": self.config.mode, "wall_time_s": round(self.wall_time_s, 1),
                   "processes": self.accelerator.num_processes, "checkpoint": str(checkpoint),
                   "last_100": {k: mean(k) for k in ("loss_fake", "mismatch", "grad_rms")},
                   "switches": self.switches, "evals": self.evals,
                   "stage1": None if self.manifest is None else {
                       "dir": str(self.manifest.directory), "nodes": self.manifest.num_nodes,
                       "node_steps": [n["step"] for n in self.manifest.nodes],
                       "node_eval_loss": [n["eval_loss"] for n in self.manifest.nodes],
                       "disk_bytes": self.manifest.disk_bytes, "wall_time_s": self.manifest.info.get("wall_time_s")},
                   "config": asdict(self.config)}
        write_text_atomically(self.run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def fid_digits_evaluator(n: int = 1000, seed: int = 0) -> Callable:
    """``evaluator(pipe, step) -> {"fid", "kid", "top1"}``: FID-digits of ``n`` class-balanced
    one-step samples (noise from ``seed``, sample k ← index k) and the feature net's top-1.

    Loads the feature network and reference statistics now, so a missing asset fails before
    training starts.
    """
    from diffkit.metrics.digits import balanced_labels, fid_digits, load_reference_stats, sample_digits, top1_accuracy
    from diffkit.models.digits_features import load_feature_net

    net, ref = load_feature_net("digits-features"), load_reference_stats()
    labels = balanced_labels(n)

    def evaluate(pipe, step):
        images = sample_digits(pipe, labels, seed=seed, steps=1)
        r = fid_digits(images, net, ref)
        return {"fid": float(r.fid), "kid": float(r.kid), "top1": top1_accuracy(images, labels, net), "n": n}

    return evaluate
