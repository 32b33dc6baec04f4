"""The one-step generator of score distillation, its fresh samples, and the teacher check.

G(z[, c]) = x̂0 of a teacher-architecture UNet evaluated once on pure noise at the top
trained timestep (DMD/DMD2's ``D(σ_init·z; σ_init)`` with σ_init = the teacher's largest
``sigma_ve``). In VP coordinates the EDM input x̃ = σ_init·z is the latent
z_vp = √ᾱ·x̃ = √(1−ᾱ)·z, so the UNet sees std_vp(t_g)·z at timestep t_g. Initialised as a
copy of the teacher, G⁰ is the teacher's own one-step x̂0 prediction.

Conditioning: for an ε-prediction UNet, x̂0 = (z − √(1−ᾱ)·ε̂)/√ᾱ
multiplies every error and every update of ε̂ by σ_init (≈ 157 at the top step of a
linear-β 1,000-step schedule). The digits teacher's G⁰ at t = 999 has x̂0 RMS ≈ 4 with
most pixels outside [-1, 1]; at ``timestep=399`` (σ_init ≈ 2, DMD2's SDXL choice) it is a
recognisable, blurry digit. The top timestep stays the default (the method's definition);
``timestep`` is the knob. (The export of a generator as a diffusers folder is
:func:`diffkit.pipelines.one_step.export_generator`: pipelines build on this module, never the
reverse.)
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

from diffkit.conditioning import Condition, Guidance, num_classes
from diffkit.denoisers import EpsModel
from diffkit.schedules import VPSchedule
from diffkit.seeding import randint_for_indices, randn_for_indices

__all__ = ["OneStepGenerator", "GeneratorSource", "check_generator_timestep", "probe_prediction_type",
           "check_teacher"]


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
        seen = ("the input noise (an ε-prediction model)" if looks_eps
                else "not the input noise (a v- or x0-prediction model, or an untrained network)")
        raise ValueError(
            f"teacher: its scheduler config says prediction_type={pt!r}, but at the top timestep its outputs match "
            f"{seen}: cosine(output, noise) = {cos:.3f} (ε-models give ≈1, v/x0-models ≈0). Set the scheduler "
            f"config's prediction_type to what the network was trained for (accepted: 'epsilon', 'v_prediction', "
            f"'sample'), or pass verify_teacher=False (--no-verify-teacher) to skip this check.")
