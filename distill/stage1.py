"""DisBack Stage 1, degradation recording (Zhang et al. 2024, arXiv 2408.15991, Alg. 1).

A copy of the teacher score network is fine-tuned with the teacher's own DDPM loss on fresh
samples of the *frozen* initial generator G⁰ (the teacher's one-step x̂0), on
:class:`diffkit.train.Trainer`; its snapshots become the path s'_1 … s'_N (node 0 = the
teacher). Where the snapshots are taken and which become nodes: :mod:`diffkit.distill.path`.
A killed Stage 1 resumes from its own checkpoint and ``progress.json`` (the candidates taken so
far), with the same settings, and records the same path bit for bit.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from diffkit.atomic import save_safetensors, write_text_atomically
from diffkit.distill.generator import GeneratorSource
from diffkit.distill.path import (PATH_FILE, PathManifest, load_path_manifest, select_nodes, stage1_boundaries)
from diffkit.run_state import latest_checkpoint, list_checkpoints
from diffkit.seeding import sample_seed
from diffkit.train import Trainer, TrainConfig
from diffkit.weights import file_sha256

__all__ = ["Stage1Recorder", "save_module", "derived_seed"]


def derived_seed(seed: int, name: str) -> int:
    """The seed of one named random stream of a run (Stage-1 loss, fake loss, grids, ...)."""
    return sample_seed(seed, 0, name)


def save_module(module_or_sd, path) -> None:
    """A module's (or a state dict's) tensors to a safetensors file, atomically."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in sd.items()}, path)


class Stage1Recorder:
    """Stage 1 of :class:`diffkit.distill.disback.DisBackTrainer` (a mixin: it uses the
    trainer's ``config``, ``accelerator``, ``teacher``, ``teacher_sha256``, ``stage1_dir``,
    ``shape``, ``n_classes``, ``generator_timestep``, ``_score_loss``, ``_g0`` and ``_say``)."""

    @torch.no_grad()
    def stage1_eval_loss(self, unet: nn.Module) -> float:
        """DSM loss of ``unet`` on a fixed batch of G⁰ samples with fixed t/ε/dropout draws."""
        cfg = self.config
        src = GeneratorSource(self._g0(), self.shape, self.n_classes, derived_seed(cfg.seed, "stage1-eval"),
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
        source = GeneratorSource(self._g0(), self.shape, self.n_classes, derived_seed(cfg.seed, "stage1"), "stage1",
                                 device=acc.device)
        tcfg = TrainConfig(max_steps=cfg.stage1_steps, batch_size=cfg.batch_size, lr=cfg.stage1_learning_rate,
                           betas=cfg.betas, weight_decay=cfg.weight_decay, warmup_steps=cfg.stage1_warmup_steps,
                           grad_clip=cfg.grad_clip, ema_decay=0.0, seed=cfg.seed, checkpoint_every=0,
                           keep_checkpoints=1, progress=cfg.progress)
        trainer = Trainer(fake, self._score_loss("stage1-loss"), source, tcfg, d, accelerator=acc,
                          meta={"what": "DisBack Stage 1 (degradation recording)",
                                "teacher_sha256": self.teacher_sha256})
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
        for b in stage1_boundaries(cfg.stage1_steps, cfg.path_nodes, cfg.path_spacing, cfg.progress_candidates):
            if b in done:
                continue
            if trainer.step > b:
                raise RuntimeError(f"Stage-1 run {d} is inconsistent (trained to step {trainer.step} but snapshot "
                                   f"{b} is missing); delete {d} and rerun Stage 1")
            if trainer.step < b:
                trainer.fit(stop_at=b)
            if acc.is_main_process:
                f = cand_dir / f"cand-{b:07d}.safetensors"
                save_module(trainer.unwrapped, f)
                record["candidates"].append({"step": b, "file": f.name,
                                             "eval_loss": self.stage1_eval_loss(trainer.unwrapped)})
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

    def _stage1_settings(self) -> dict:
        cfg = self.config
        return {"stage1_steps": cfg.stage1_steps, "path_nodes": cfg.path_nodes, "spacing": cfg.path_spacing,
                "progress_candidates": cfg.progress_candidates, "eval_samples": cfg.stage1_eval_samples,
                "batch_size": cfg.batch_size, "lr": cfg.stage1_learning_rate, "betas": list(cfg.betas),
                "weight_decay": cfg.weight_decay, "warmup_steps": cfg.stage1_warmup_steps, "grad_clip": cfg.grad_clip,
                "seed": cfg.seed, "t_range": list(cfg.t_range), "label_dropout": cfg.label_dropout,
                "generator_timestep": self.generator_timestep}

    def _write_path(self, record: dict, wall_time_s: float) -> None:
        d, cfg = self.stage1_dir, self.config
        chosen, fell_back = select_nodes(record["candidates"], record["eval_loss_0"], cfg.path_nodes, cfg.path_spacing)
        if fell_back:
            self._say("Stage 1: the DSM loss did not fall; spacing the path evenly instead of by progress")
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
