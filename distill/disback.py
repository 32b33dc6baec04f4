"""DisBack (Zhang et al. 2024, "Distribution Backtracking Builds A Faster Convergence Trajectory
for Diffusion Distillation", arXiv 2408.15991): score distillation along a recorded path.

**Stage 1 — degradation recording** (paper Alg. 1; :mod:`diffkit.distill.stage1`): a copy of
the teacher score network, fine-tuned on samples of the frozen initial generator G⁰, is
snapshotted into the path s'_0 = teacher, s'_1, ..., s'_N ≈ score of p_{G⁰}.

**Stage 2 — distribution backtracking** (paper Alg. 2, Eq. 8; :class:`DisBackTrainer`): the
fake score starts at the last node s'_N; the generator is trained with the
distribution-matching gradient against the targets s'_{N−1}, ..., s'_0 (K2 generator steps
each; node 0 is the teacher, which stays the target for the rest of the run). The fake score
is trained online with the same DDPM loss on fresh generator samples (``fake_updates`` per
generator step).

``mode`` changes only initialisation and targets (one code path; :data:`diffkit.distill.config.MODES`):

=================  ==================  ==============================================
mode               fake score init     target
=================  ==================  ==============================================
"vanilla"          teacher             teacher (Diff-Instruct / DMD2 without GAN)
"warm-critic"      last Stage-1 node   teacher
"disback"          last Stage-1 node   nodes N−1 … 1 (K2 steps each), then teacher
"delayed-teacher"  last Stage-1 node   node N for the same (N−1)·K2 steps, then teacher
=================  ==================  ==============================================

Every target switch loads its node with strict key matching after checking the file against
the SHA-256 recorded by Stage 1, and refuses a switch that leaves the weights unchanged (the
released code's switch fires at most once and loads into mismatched keys without complaint;
docs/methods/disback.md).

Every random draw is keyed to (seed, stream, global sample index) (``diffkit.seeding``): 1- and
P-process runs agree up to summation order; a resumed run equals an uninterrupted one bit for bit
on the CPU. Loop, resume, cadence, log, summary and SIGINT checkpoints are
:class:`diffkit.run_loop.RunLoop`'s; this module supplies the step, the state and the hooks.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, UNet2DModel
from safetensors.torch import load_file
from torch import nn

from diffkit.atomic import write_text_atomically
from diffkit.conditioning import class_guidance, num_classes
from diffkit.denoisers import EpsModel
from diffkit.distill.config import MODES, SPACINGS, DisBackConfig, resume_mismatch
from diffkit.distill.generator import GeneratorSource, OneStepGenerator, check_generator_timestep, check_teacher
from diffkit.distill.losses import DistributionMatchingLoss, check_t_range, score_loss
from diffkit.distill.path import PATH_FILE, PathManifest, load_path_manifest, state_fingerprint
from diffkit.distill.stage1 import Stage1Recorder, derived_seed, save_module
from diffkit.images import save_grid
from diffkit.pipelines.one_step import OneStepPipeline, export_generator
from diffkit.run_loop import RunLoop
from diffkit.run_state import EMA, load_device, resolve_run_dir, set_rng_state, write_checkpoint_dir
from diffkit.schedules import VPSchedule, config_to_dict
from diffkit.weights import file_sha256, load_state_dict_strict

__all__ = ["MODES", "SPACINGS", "DisBackConfig", "DisBackTrainer", "PathManifest", "load_path_manifest",
           "state_fingerprint"]

LOG_FIELDS = ["step", "target_node", "loss_fake", "loss_gen", "mismatch", "grad_rms", "grad_norm_gen",
              "grad_norm_fake", "lr_gen", "lr_fake", "wall_time_s"]


class DisBackTrainer(Stage1Recorder, RunLoop):
    """Two-stage DisBack (or its vanilla / warm-critic / delayed-teacher baselines) on ``accelerate``.

    ``teacher_unet``: a diffusers ``UNet2DModel`` (class-conditional with the null class last,
    or unconditional); ``scheduler_config``: its noise schedule (prediction_type included).
    ``run_dir`` receives ``stage1/`` (unless ``stage1_dir`` points elsewhere, e.g. a path
    shared by several runs), ``checkpoints/``, ``log.csv``, ``summary.json``, ``samples/``.

    Evaluation hooks (the trainer imports no metric; the command wires them in):

    * ``evaluator(pipe, step) -> dict`` is called with a :class:`OneStepPipeline` holding the
      EMA generator every ``eval_every`` steps and at the end (e.g.
      :func:`diffkit.metrics.evaluators.fid_digits_evaluator`); results go to ``evals.json``
      and the summary.
    * ``after_stage1(manifest) -> dict`` is called once, when the Stage-1 path is available
      (recorded or given) and before the first Stage-2 step, with its :class:`PathManifest`
      (e.g. a check of the recorded path); its result is kept in the checkpoints (a resumed run
      does not call it again) and recorded under ``"stage1_check"`` in ``summary.json``. A hook
      that refuses the path raises; an exception carrying a ``record`` dict (e.g.
      :class:`diffkit.metrics.path_check.PathCheckError`) has it written to the summary first.

    :meth:`fit` (:meth:`diffkit.run_loop.RunLoop.fit`) runs Stage 1 if the mode needs it (an
    unfinished Stage 1 always resumes), then Stage 2 to ``config.max_steps`` generator steps, and
    returns the log rows; ``resume`` has the one meaning of every trainer (a run killed during
    Stage 1 has no Stage-2 checkpoint yet, and ``resume="latest"`` then starts Stage 2 at step
    0). SIGINT/SIGTERM in either stage finish the step in progress (its samples and evaluation
    included), write its checkpoint and raise :class:`diffkit.run_loop.TrainingInterrupted`.
    """

    log_file = "log.csv"
    log_fields = LOG_FIELDS
    int_log_fields = ("step", "target_node")
    summary_file = "summary.json"

    def __init__(self, teacher_unet: nn.Module, scheduler_config, config: DisBackConfig, run_dir,
                 stage1_dir=None, accelerator=None, evaluator: Optional[Callable] = None, cpu: Optional[bool] = None,
                 after_stage1: Optional[Callable] = None):
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
            if cpu is None:
                cpu = not torch.cuda.is_available()
            accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)
        self.accelerator = acc = accelerator
        if config.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes "
                             f"({acc.num_processes}) so every process gets an equal share")
        sigma_init = float(self.schedule.sigma_ve(self.generator_timestep))
        if config.mixed_precision != "no" and sigma_init > 10:
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
        self.after_stage1 = after_stage1
        self.stage1_check: Optional[dict] = None
        self.shape = (teacher_unet.config.in_channels, teacher_unet.config.sample_size, teacher_unet.config.sample_size)
        self.null_class = self.n_classes if self.n_classes else None
        self.manifest: Optional[PathManifest] = None
        self._init_run()
        self.progress_desc = f"distill ({config.mode})"
        self.evals: list[dict] = []
        self.switches: list[dict] = []
        self._stage2_ready = False

    # ------------------------------------------------------------------ shared pieces
    def _score_loss(self, name: str):
        return score_loss(self.scheduler_config, seed=derived_seed(self.config.seed, name),
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
            load_state_dict_strict(fake, self.manifest.node_file(self.manifest.num_nodes))
        fake.train()
        opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr_generator, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay)
        opt_f = torch.optim.AdamW(fake.parameters(), lr=cfg.lr_fake, betas=cfg.betas, weight_decay=cfg.weight_decay)
        # Two separate wraps (DDP each): the generator and the fake score.
        self.generator, self.fake, self.opt_g, self.opt_f = acc.prepare(generator.to(acc.device), fake.to(acc.device),
                                                                        opt_g, opt_f)
        self.ema = EMA(self.gen_unwrapped.unet, cfg.ema_decay)
        self.fake_model = EpsModel(self.fake_unwrapped, self.schedule)  # x̂0 view of the fake score (no grad)
        self.fake_loss = self._score_loss("fake-loss")
        self.dm_loss = DistributionMatchingLoss(self.schedule, seed=derived_seed(cfg.seed, "dm"), t_range=cfg.t_range,
                                                weighting=cfg.weighting)
        self.gen_source = GeneratorSource(self.gen_unwrapped, self.shape, self.n_classes,
                                          derived_seed(cfg.seed, "generator"), "gen", device=acc.device)
        self.fake_source = GeneratorSource(self.gen_unwrapped, self.shape, self.n_classes,
                                           derived_seed(cfg.seed, "generator"), "fake", device=acc.device)
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
            load_state_dict_strict(self._target_module, f)
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

    # ------------------------------------------------------------------ loop hooks
    def prepare(self) -> None:
        """Stage 1 (recorded, finished after a kill, or read from ``stage1_dir``), then Stage-2 setup."""
        if self.config.needs_path:
            if self.stage1_external:
                self.manifest = load_path_manifest(self.stage1_dir, self.teacher_sha256, self.config.path_nodes)
            else:
                self.run_stage1()
        self._setup_stage2()

    def has_unfinished_work(self) -> bool:
        """A run killed during Stage 1 has no Stage-2 checkpoint yet: ``--resume`` is still right."""
        return self.config.needs_path and not self.stage1_external and self.stage1_dir.is_dir()

    def before_loop(self) -> None:
        cfg = self.config
        if self.after_stage1 is not None and self.manifest is not None and self.stage1_check is None:
            self.run_after_stage1()
        if self.step == 0 and self.step < cfg.max_steps:  # the curves start at G⁰
            if cfg.sample_every:
                self.save_samples()
            if cfg.eval_every and not any(e["step"] == 0 for e in self.evals):
                self.evaluate()

    def postfix(self, row: dict) -> dict:
        return {"node": row["target_node"], "fake": f"{row['loss_fake']:.4f}", "mismatch": f"{row['mismatch']:.4f}"}

    def after_step(self) -> None:
        cfg = self.config
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            self.save_samples()
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            self.evaluate()

    def on_finish(self, start: int) -> None:
        cfg = self.config
        if not cfg.sample_every or self.step % cfg.sample_every:
            self.save_samples()
        if self.evaluator is not None and (not cfg.eval_every or self.step % cfg.eval_every):
            self.evaluate()

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

    def pipeline(self) -> OneStepPipeline:
        """A :class:`OneStepPipeline` of the EMA generator (on the training device)."""
        sched = DDIMScheduler.from_config(self.scheduler_config)
        pipe = OneStepPipeline(self.ema_unet().to(self.accelerator.device), sched, self.generator_timestep)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_samples(self, n: int = 64) -> Optional[Path]:
        if not self.accelerator.is_main_process:
            return None
        pipe = self.pipeline()
        labels = [k % self.n_classes for k in range(n)] if self.n_classes else None
        out = pipe(class_labels=labels, batch_size=None if labels else n, seed=derived_seed(self.config.seed, "grid"),
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

    def run_after_stage1(self) -> Optional[dict]:
        """Call the ``after_stage1`` hook with the path's manifest (main process) and record its result."""
        if self.accelerator.is_main_process:
            try:
                self.stage1_check = dict(self.after_stage1(self.manifest))
            except Exception as e:  # a check that refuses the path: its record still goes to the summary
                if isinstance(getattr(e, "record", None), dict):
                    self.stage1_check = dict(e.record)
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    self.write_summary(None)
                raise
            self._say("after Stage 1: " + ", ".join(f"{k}={v}" for k, v in self.stage1_check.items()
                                                     if isinstance(v, (bool, int, float, str))))
        self.accelerator.wait_for_everyone()
        return self.stage1_check

    def export(self, output, extra_facts: Optional[dict] = None) -> Path:
        """Save the EMA generator as a diffusers ``OneStepPipeline`` folder (never the run folder
        or a folder holding it: the export replaces ``output`` as a whole)."""
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
                 "evals": self.evals[-1:] if self.evals else [], "stage1_check": self.stage1_check}
        facts.update(extra_facts or {})
        return export_generator(self.ema_unet(), DDIMScheduler.from_config(self.scheduler_config), output,
                                self.generator_timestep, facts)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        acc = self.accelerator

        def write(tmp: Path) -> None:
            save_module(self.gen_unwrapped.unet, tmp / "generator.safetensors")
            save_module(self.ema.shadow, tmp / "generator_ema.safetensors")
            save_module(self.fake_unwrapped, tmp / "fake.safetensors")
            torch.save({"opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict()}, tmp / "optimizer.pt")
            state = {"step": self.step, "ema_num_updates": self.ema.num_updates, "wall_time_s": self.wall_time_s,
                     "world_size": acc.num_processes, "config": asdict(self.config),
                     "teacher_sha256": self.teacher_sha256, "target_node": self.target_index,
                     "stage1_dir": str(self.stage1_dir) if self.config.needs_path else None,
                     "switches": self.switches, "evals": self.evals, "stage1_check": self.stage1_check}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))

        return write_checkpoint_dir(acc, self.run_dir, self.step, self.config.keep_checkpoints, write)

    def load_checkpoint(self, path) -> None:
        path, acc = Path(path), self.accelerator
        need = ["trainer_state.json", "generator.safetensors", "generator_ema.safetensors", "fake.safetensors",
                "optimizer.pt"]
        missing = [n for n in need if not (path / n).exists()]
        if missing:
            raise FileNotFoundError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("teacher_sha256") != self.teacher_sha256:
            raise ValueError(f"checkpoint {path} was trained from a different teacher")
        resume_mismatch(state.get("config", {}), self.config)  # raises, naming the settings
        load_state_dict_strict(self.gen_unwrapped.unet, path / "generator.safetensors")
        load_state_dict_strict(self.fake_unwrapped, path / "fake.safetensors")
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
        self.stage1_check = state.get("stage1_check", self.stage1_check)
        self.log = [r for r in self.read_log() if r["step"] <= self.step]
        self._started = True
        self.target_index, self.target_unet, self.target_model = None, None, None
        self.set_target(self.config.target_node(self.step), self.step)

    # ------------------------------------------------------------------ logs
    def _write_evals(self) -> None:
        write_text_atomically(self.run_dir / "evals.json", json.dumps(self.evals, indent=1) + "\n")

    def summary(self, checkpoint) -> dict:
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
                   "stage1_check": self.stage1_check, "config": asdict(self.config)}
        return summary
