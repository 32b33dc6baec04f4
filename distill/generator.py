"""The one-step generator of score distillation, and its export as a diffusers folder.

G(z[, c]) = x̂0 of a teacher-architecture UNet evaluated once on pure noise at the top
trained timestep (DMD/DMD2's ``D(σ_init·z; σ_init)`` with σ_init = the teacher's largest
``sigma_ve``). In VP coordinates the EDM input x̃ = σ_init·z is the latent
z_vp = √ᾱ·x̃ = √(1−ᾱ)·z, so the UNet sees std_vp(t_g)·z at timestep t_g. Initialised as a
copy of the teacher, G⁰ is the teacher's own one-step x̂0 prediction.

Conditioning (spec §8 item 7): for an ε-prediction UNet, x̂0 = (z − √(1−ᾱ)·ε̂)/√ᾱ
multiplies every error and every update of ε̂ by σ_init (≈ 157 at the top step of a
linear-β 1,000-step schedule). The digits teacher's G⁰ at t = 999 has x̂0 RMS ≈ 4 with
most pixels outside [-1, 1]; at ``timestep=399`` (σ_init ≈ 2, DMD2's SDXL choice) it is a
recognisable, blurry digit. The top timestep stays the default (the method's definition);
``timestep`` is the knob.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from diffkit.atomic import replace_dir, staging_dir
from diffkit.conditioning import Condition, Guidance
from diffkit.denoisers import EpsModel
from diffkit.weights import MANIFEST, write_manifest

__all__ = ["OneStepGenerator", "export_generator"]


def check_generator_timestep(timestep, num_train_timesteps: int) -> int:
    if timestep is None:
        return num_train_timesteps - 1
    t = int(timestep)
    if not 0 <= t <= num_train_timesteps - 1:
        raise ValueError(f"generator_timestep must be in [0, {num_train_timesteps - 1}] (the trained timesteps), "
                         f"got {timestep}")
    return t


class OneStepGenerator(nn.Module):
    """x = G(noise, class_labels) — differentiable; ``unet`` holds all trainable weights."""

    def __init__(self, unet: nn.Module, scheduler_config, timestep: Optional[int] = None):
        super().__init__()
        self.model = EpsModel(unet, scheduler_config)
        self.timestep = check_generator_timestep(timestep, self.model.schedule.num_train_timesteps)

    @classmethod
    def from_teacher(cls, teacher_unet: nn.Module, scheduler_config, timestep: Optional[int] = None):
        """A trainable copy of the teacher (G⁰)."""
        unet = copy.deepcopy(teacher_unet)
        unet.requires_grad_(True)
        return cls(unet, scheduler_config, timestep)

    @property
    def unet(self) -> nn.Module:
        return self.model.unet

    @property
    def sigma_init(self) -> float:
        """σ_init = sigma_ve at the generator timestep."""
        return float(self.model.schedule.sigma_ve(self.timestep))

    def forward(self, noise: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                condition: Optional[Condition] = None) -> torch.Tensor:
        if condition is None:
            condition = Condition(class_labels=class_labels)
        t = torch.full((noise.shape[0],), self.timestep, dtype=torch.long, device=noise.device)
        alpha, std = self.model.levels(t, noise)
        z = std.reshape(-1, *([1] * (noise.ndim - 1))) * noise
        return self.model.predict(z, t, Guidance(condition), alpha=alpha, std=std)[1]


def export_generator(unet: nn.Module, scheduler, output, timestep: Optional[int] = None,
                     facts: Optional[dict] = None) -> Path:
    """Write a ``OneStepPipeline`` folder (``unet/``, ``scheduler/``, ``model_index.json``) atomically.

    ``scheduler`` is the teacher's scheduler (it defines ᾱ for the x̂0 conversion);
    ``facts`` go to ``distill.json``. Loadable with ``diffkit.pipelines.load_pipeline``.
    """
    from diffkit.pipelines.one_step import OneStepPipeline

    tmp = staging_dir(output)
    unet = copy.deepcopy(unet).cpu().eval()
    OneStepPipeline(unet, scheduler, generator_timestep=timestep).save_pretrained(str(tmp), safe_serialization=True)
    if facts is not None:
        (tmp / "distill.json").write_text(json.dumps(facts, indent=1) + "\n")
    write_manifest(tmp)  # SHA256SUMS of the weights and configs, checked on load
    # a model card or sample PNGs written beside the export survive a re-export
    return replace_dir(tmp, output, produced=("unet", "scheduler", "model_index.json", "distill.json", MANIFEST))
