"""DisBack's settings (:class:`DisBackConfig`) and the rule that picks the target node.

Torch-free, so that ``diffkit distill --help`` (and ``diffkit --help``) stay light. The
reasoning behind the modes and the schedule is in docs/methods/disback.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["MODES", "SPACINGS", "WEIGHTINGS", "DEFAULT_T_RANGE", "DisBackConfig", "target_node", "resume_mismatch"]

#: ``mode`` changes only initialisation and targets (one code path; the "warm critic" arm separates
#: DisBack's two changes, a fake score fitted to G⁰ and the walked path):
#: "vanilla" (fake = teacher, target = teacher: Diff-Instruct / DMD2 without GAN),
#: "warm-critic" (fake = last Stage-1 node, target = teacher),
#: "disback" (fake = last Stage-1 node, targets N−1 … 1, then the teacher; Zhang et al. 2024, Alg. 2),
#: "delayed-teacher" (fake = last Stage-1 node, target = that same node s'_N for the (N−1)·K2 steps DisBack
#: spends on its path, then the teacher: a control that gives the critic and optimiser DisBack's warm-up
#: without the walk, so an experiment can tell "the path helps" from "a warmed-up critic helps").
MODES = ("disback", "vanilla", "warm-critic", "delayed-teacher")
#: where Stage 1 snapshots the path (:func:`diffkit.distill.path.stage1_boundaries`): "even" (N nodes at
#: equal steps), "progress" (candidates at equal steps, nodes at equal DSM-loss progress), "log" (N nodes at
#: log-spaced steps), "log-progress" (log-spaced candidates, nodes at equal DSM-loss progress: fine early,
#: where the loss falls fastest)
SPACINGS = ("even", "progress", "log", "log-progress")
#: generator weightings: DMD2's normaliser (Yin et al. 2024) or Diff-Instruct's w = 1 in x̂0 space
WEIGHTINGS = ("dmd2", "di")
#: DMD2's timestep range for both the generator gradient and the score networks (0.02T..0.98T).
DEFAULT_T_RANGE = (20, 980)


def target_node(mode: str, step: int, path_nodes: int, steps_per_node: int) -> int:
    """Path node that is the target at generator step ``step`` (0-based); 0 = the teacher.

    DisBack (Zhang et al. 2024, arXiv 2408.15991, Alg. 2) walks the recorded path backwards:
    node N−1 for the first K2 = ``steps_per_node`` steps, then N−2, …, and the teacher (node 0)
    from step (N−1)·K2 on. "delayed-teacher" holds the last node N for those same (N−1)·K2 steps,
    then the teacher. The other modes always target the teacher.
    """
    if mode == "disback":
        return max(path_nodes - 1 - step // steps_per_node, 0)
    if mode == "delayed-teacher":
        return path_nodes if step < (path_nodes - 1) * steps_per_node else 0
    return 0


@dataclass
class DisBackConfig:
    mode: str = "disback"
    # Defaults: the settings of the four-arm convergence experiment, phase 1 (benchmarks/disback_convergence.py),
    # whose Stage-1 path passes the path check (benchmarks/results/disback_path.json, "lr1e-5-log-progress").
    max_steps: int = 1000               # Stage-2 generator steps
    batch_size: int = 32                # global batch (all processes)
    # Stage 1
    stage1_steps: int = 400             # K1
    path_nodes: int = 5                 # N saved nodes (node 0 = the teacher is not stored again)
    path_spacing: str = "log-progress"  # one of SPACINGS ("progress": DSM-loss progress on a fixed G⁰ batch)
    progress_candidates: int = 8        # candidate snapshots per node for "progress" / "log-progress" spacing
    stage1_lr: Optional[float] = 1e-5   # Stage 1's learning rate (None: lr_fake; 1e-4 gave a degenerate path)
    stage1_eval_samples: int = 256
    stage1_warmup_steps: int = 0
    # Stage 2
    steps_per_node: int = 50            # K2
    fake_updates: int = 1               # fake-score updates per generator step (DI 1, DMD2 5)
    lr_generator: float = 3e-5
    lr_fake: float = 1e-4               # also Stage 1's learning rate unless stage1_lr is set
    betas: tuple = (0.0, 0.999)         # Adam β (DI/SiD use β1 = 0)
    weight_decay: float = 0.0
    warmup_steps: int = 50              # linear LR warm-up of both optimizers (generator steps)
    grad_clip: float = 10.0
    ema_decay: float = 0.99             # generator EMA, used for every evaluation and the export
    weighting: str = "dmd2"             # "dmd2" normaliser | "di" (Diff-Instruct, w = 1 in x̂0 space)
    target_guidance: float = 1.0
    label_dropout: float = 0.1
    t_range: tuple = DEFAULT_T_RANGE
    # 399, not the top trained timestep 999 (pure noise): on the digits teacher the pure-noise input does not
    # distil within this budget (it ended in noise); t_g = 399 (as DisBack's SDXL recipe) takes G⁰'s FID-digits
    # from ≈ 2.2 to ≈ 0.2 in 1,000 steps. None: the top trained timestep (σ_init = max sigma_ve).
    generator_timestep: Optional[int] = 399
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
        if self.stage1_lr is not None and not self.stage1_lr > 0:
            raise ValueError(f"stage1_lr must be > 0 (or None: lr_fake), got {self.stage1_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    @property
    def needs_path(self) -> bool:
        return self.mode != "vanilla"

    @property
    def stage1_learning_rate(self) -> float:
        """Stage 1's learning rate: ``stage1_lr``, or ``lr_fake`` when it is not set."""
        return self.lr_fake if self.stage1_lr is None else float(self.stage1_lr)

    def target_node(self, step: int) -> int:
        """Path node that is the target at generator step ``step`` (0-based); 0 = the teacher."""
        return target_node(self.mode, step, self.path_nodes, self.steps_per_node)


#: settings a resumed Stage 2 must share with the checkpoint it continues (they fix its draws and targets)
RESUME_KEYS = ("mode", "batch_size", "fake_updates", "seed", "path_nodes", "steps_per_node", "weighting",
               "t_range", "generator_timestep", "label_dropout", "target_guidance")


def resume_mismatch(saved: dict, config: DisBackConfig) -> None:
    """Raise a ValueError naming every :data:`RESUME_KEYS` setting in which the checkpoint's
    ``saved`` config differs from ``config``."""
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731 (JSON has no tuples)
    ours = asdict(config)
    diff = [k for k in RESUME_KEYS if k in saved and norm(saved[k]) != norm(ours[k])]
    if diff:
        raise ValueError("cannot resume: the checkpoint was written with different settings: " +
                         ", ".join(f"{k}={saved[k]!r} (now {ours[k]!r})" for k in diff))
