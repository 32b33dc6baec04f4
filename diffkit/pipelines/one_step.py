"""A diffusers pipeline for one-step generators (``diffkit distill`` output): one UNet
evaluation per image, x = x̂0(std_vp(t_g)·z, t_g) (see ``diffkit.distill.generator``).

It takes the same call as :class:`ClassConditionalPipeline` so ``diffkit sample`` and the
FID tools can drive it; ``num_inference_steps`` and ``eta`` do not apply and are ignored,
and the scheduler only supplies the ᾱ table (a swapped-in scheduler with the same betas
changes nothing). Noise is drawn per global sample index from ``seed`` exactly as the
class-conditional pipeline draws it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers import DiffusionPipeline

from ..conditioning import num_classes
from ..numerics import FiniteWatch
from .class_conditional import check_output_type, initial_noise, to_output

__all__ = ["OneStepPipeline"]


class OneStepPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"
    #: ``diffkit sample`` keeps this pipeline's scheduler instead of swapping in --sampler.
    one_step = True

    def __init__(self, unet, scheduler, generator_timestep: Optional[int] = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(generator_timestep=generator_timestep)

    @property
    def num_classes(self) -> int:
        return num_classes(self.unet)

    def generator(self):
        from ..distill.generator import OneStepGenerator

        return OneStepGenerator(self.unet, self.scheduler.config, self.config.generator_timestep)

    @torch.no_grad()
    def __call__(self, class_labels: Optional[Sequence[int] | torch.Tensor] = None, batch_size: Optional[int] = None,
                 num_inference_steps: int = 1, guidance_scale: float = 1.0, eta: float = 0.0, seed: int = 0,
                 sample_indices: Optional[Sequence[int]] = None, latents: Optional[torch.Tensor] = None,
                 output_type: str = "pil", return_dict: bool = True, progress: bool = True):
        check_output_type(output_type)
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale: a one-step generator samples its distilled distribution; only 1.0 "
                             f"is accepted, got {guidance_scale}")
        n = self.num_classes
        if class_labels is not None:
            if not n:
                raise ValueError("class_labels were given but the generator is not class-conditional")
            class_labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            bad = class_labels[(class_labels < 0) | (class_labels >= n)]
            if bad.numel():
                raise ValueError(f"class label(s) {sorted(set(bad.tolist()))} out of range: accepted labels are 0..{n - 1}")
            batch_size = len(class_labels)
            class_labels = class_labels.to(self.device)
        elif n:
            raise ValueError(f"class_labels is required for a class-conditional generator (accepted labels: 0..{n - 1})")
        elif batch_size is None:
            batch_size = 1 if latents is None else latents.shape[0]
        if latents is None:
            latents = initial_noise(self.unet, batch_size, seed, sample_indices, self.device)
        generator = self.generator()
        images = generator(latents.to(self.device), class_labels)
        FiniteWatch("one-step generator output").update(images, 0, generator.timestep, flush=True)
        return to_output(images, output_type, 1, return_dict, self.numpy_to_pil)
