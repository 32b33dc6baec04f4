"""A diffusers pipeline for one-step generators (``diffkit distill`` output): one UNet
evaluation per image, x = x̂0(std_vp(t_g)·z, t_g) (see ``diffkit.distill.generator``).

It takes the same call as :class:`ClassConditionalPipeline` so ``diffkit sample`` and the
FID tools can drive it with its own sampler; ``num_inference_steps`` (checked >= 1) and
``eta`` do not apply and are ignored, and the scheduler only supplies the ᾱ table. Noise is
drawn exactly as the class-conditional pipeline draws it: per global sample index from ``seed``,
or from ``generator`` with diffusers' semantics.

A one-step generator is not a diffusion model: the samplers, inversion and editing that
evaluate a denoiser along a noise grid refuse it (:func:`require_diffusion_model`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from torch import nn

from diffkit.atomic import UmaskSaveMixin, replace_dir, staging_dir
from diffkit.conditioning import num_classes
from diffkit.distill.generator import OneStepGenerator
from diffkit.numerics import FiniteWatch
from diffkit.pipelines._local import LocalFolderPipelineMixin
from diffkit.pipelines.class_conditional import (RANDOMNESS_DOC, batch_of, check_output_type, check_randomness,
                                                 draw_noise, to_output)
from diffkit.weights import MANIFEST, write_manifest

__all__ = ["OneStepPipeline", "require_diffusion_model", "export_generator"]


def require_diffusion_model(pipe, use: str) -> None:
    """Refuse a one-step generator where ``use`` (a named sampler, sample-edm, invert, edit, a
    distillation teacher) needs a diffusion model's denoiser along a noise grid: a ValueError
    saying what the generator supports. The one place that decides it (``pipe.one_step``)."""
    if not getattr(pipe, "one_step", False):
        return
    config = getattr(pipe, "config", {})
    name = Path(str(config.get("_name_or_path") or "")).name or "this pipeline"
    raise ValueError(f"{name} is a one-step generator ({type(pipe).__name__}): it supports `diffkit sample` and "
                     f"`diffkit fid` with its own sampler (no --sampler; in Python the pipeline call, sample_digits "
                     f"or ModelSamples without a sampler), one evaluation per image; {use} needs a diffusion model "
                     f"such as digits-unet")


class OneStepPipeline(UmaskSaveMixin, LocalFolderPipelineMixin, DiffusionPipeline):
    model_cpu_offload_seq = "unet"
    #: no sampler drives it but its own call (see :func:`require_diffusion_model`)
    one_step = True

    def __init__(self, unet, scheduler, generator_timestep: Optional[int] = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(generator_timestep=generator_timestep)

    @classmethod
    def initial(cls, teacher_pipe, generator_timestep: Optional[int] = None) -> "OneStepPipeline":
        """G⁰, the generator distillation starts from: the teacher's own one-step x̂0 at
        ``generator_timestep`` (shares the teacher's UNet; a DDIM scheduler built from its config)."""
        return cls(teacher_pipe.unet, DDIMScheduler.from_config(teacher_pipe.scheduler.config), generator_timestep)

    @property
    def num_classes(self) -> int:
        return num_classes(self.unet)

    def generator(self) -> OneStepGenerator:
        return OneStepGenerator(self.unet, self.scheduler.config, self.config.generator_timestep)

    @torch.no_grad()
    def __call__(self, class_labels: Optional[Sequence[int] | torch.Tensor] = None, batch_size: Optional[int] = None,
                 num_inference_steps: int = 1, guidance_scale: float = 1.0, eta: float = 0.0,
                 seed: Optional[int] = None, sample_indices: Optional[Sequence[int]] = None,
                 generator: Union[None, torch.Generator, list] = None, latents: Optional[torch.Tensor] = None,
                 output_type: str = "pil", return_dict: bool = True, progress: bool = True):
        """One image per entry of ``class_labels`` (or ``batch_size`` unconditional ones), one
        UNet evaluation each; ``latents``: the noise z (then nothing is drawn).
        """
        check_output_type(output_type)
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale: a one-step generator samples its distilled distribution; only 1.0 "
                             f"is accepted, got {guidance_scale}")
        n = self.num_classes
        if class_labels is not None and not n:
            raise ValueError("class_labels were given but the generator is not class-conditional")
        if class_labels is None and n:
            raise ValueError(f"class_labels is required for a class-conditional generator "
                             f"(accepted labels: 0..{n - 1})")
        class_labels, batch_size = batch_of(class_labels, batch_size, latents, num_inference_steps)
        seed = check_randomness(seed, sample_indices, generator, batch_size)
        if class_labels is not None:
            bad = class_labels[(class_labels < 0) | (class_labels >= n)]
            if bad.numel():
                raise ValueError(f"class label(s) {sorted(set(bad.tolist()))} out of range: accepted labels are "
                                 f"0..{n - 1}")
            class_labels = class_labels.to(self.device)
        if latents is None:
            latents = draw_noise(self.unet, batch_size, seed, sample_indices, generator, self.device)
        one_step = self.generator()
        images = one_step(latents.to(self.device), class_labels)
        FiniteWatch("one-step generator output").update(images, 0, one_step.timestep, flush=True)
        return to_output(images, output_type, 1, return_dict, self.numpy_to_pil)

    __call__.__doc__ += RANDOMNESS_DOC


def export_generator(unet: nn.Module, scheduler, output, timestep: Optional[int] = None,
                     facts: Optional[dict] = None) -> Path:
    """Write a ``OneStepPipeline`` folder (``unet/``, ``scheduler/``, ``model_index.json``) atomically.

    ``scheduler`` is the teacher's scheduler (it defines ᾱ for the x̂0 conversion);
    ``facts`` go to ``distill.json``. Loadable with ``diffkit.pipelines.load_pipeline``.
    """
    tmp = staging_dir(output)
    unet = copy.deepcopy(unet).cpu().eval()
    OneStepPipeline(unet, scheduler, generator_timestep=timestep).save_pretrained(str(tmp), safe_serialization=True)
    if facts is not None:
        (tmp / "distill.json").write_text(json.dumps(facts, indent=1) + "\n")
    write_manifest(tmp)  # SHA256SUMS of the weights and configs, checked on load
    # a model card or sample PNGs written beside the export survive a re-export
    return replace_dir(tmp, output, produced=("unet", "scheduler", "model_index.json", "distill.json", MANIFEST))
