"""A diffusers pipeline for (class-conditional or unconditional) UNet2DModel teachers.

Unlike diffusers' ``DDIMPipeline`` (which silently converts any scheduler to DDIM), it
keeps the scheduler it is given, calls ``scale_model_input``/``init_noise_sigma`` (so
Euler-type schedulers work), applies classifier-free guidance with the null class, and
draws each sample's initial noise from (seed, global sample index).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..atomic import UmaskSaveMixin
from ..checks import check_count
from ..conditioning import Guidance, class_guidance, num_classes
from ..denoisers import EpsModel
from ..numerics import FiniteWatch
from ..seeding import randn_for_indices

__all__ = ["ClassConditionalPipeline", "ImagePipelineOutput", "check_output_type", "batch_of", "initial_noise",
           "to_output"]


@dataclass
class ImagePipelineOutput(BaseOutput):
    images: object  # tensor in [-1, 1] (output_type="pt"), numpy in [0, 1] ("np") or PIL list ("pil")
    nfe: int = 0


# The pieces every diffkit image pipeline shares (this one and OneStepPipeline).
def check_output_type(output_type: str) -> None:
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


def batch_of(class_labels, batch_size: Optional[int], latents: Optional[torch.Tensor], num_inference_steps):
    """(class labels as a 1-D long tensor or None, batch size), after the count checks every
    image pipeline applies: at least one label / a batch_size >= 1, num_inference_steps >= 1."""
    check_count(num_inference_steps, "num_inference_steps")
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if not len(class_labels):
            raise ValueError("class_labels: at least one label is needed, got 0")
        return class_labels, len(class_labels)
    if batch_size is None:
        batch_size = 1 if latents is None else latents.shape[0]
    return None, check_count(batch_size, "batch_size")


def initial_noise(unet, batch_size: int, seed: int, sample_indices=None, device=None) -> torch.Tensor:
    """N(0, I) of the UNet's sample shape, one draw per global sample index (default 0..B-1),
    so a sample does not depend on the batch it is generated in."""
    idx = list(sample_indices) if sample_indices is not None else list(range(batch_size))
    if len(idx) != batch_size:
        raise ValueError(f"sample_indices has {len(idx)} entries for a batch of {batch_size}")
    cfg = unet.config
    return randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), idx, seed,
                             dtype=torch.float32, device=device)


def to_output(images: torch.Tensor, output_type: str, nfe: int, return_dict: bool, numpy_to_pil):
    """[-1, 1] images -> the requested output type, wrapped as diffusers pipelines return it."""
    images = images.clamp(-1, 1)
    if output_type != "pt":
        images = ((images + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            images = numpy_to_pil(images)
    if not return_dict:
        return (images,)
    return ImagePipelineOutput(images=images, nfe=nfe)


class ClassConditionalPipeline(UmaskSaveMixin, DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def num_classes(self) -> int:
        return num_classes(self.unet)

    def guidance(self, class_labels, guidance_scale: float) -> Guidance:
        if class_labels is None:
            if self.num_classes:
                raise ValueError("class_labels is required for a class-conditional UNet "
                                 f"(accepted labels: 0..{self.num_classes - 1})")
            return Guidance()
        return class_guidance(self.unet, class_labels, guidance_scale, device=self.device)

    @torch.no_grad()
    def __call__(self, class_labels: Optional[Sequence[int] | torch.Tensor] = None, batch_size: Optional[int] = None,
                 num_inference_steps: int = 50, guidance_scale: float = 1.0, eta: float = 0.0, seed: int = 0,
                 sample_indices: Optional[Sequence[int]] = None, latents: Optional[torch.Tensor] = None,
                 output_type: str = "pil", return_dict: bool = True, progress: bool = True):
        check_output_type(output_type)
        class_labels, batch_size = batch_of(class_labels, batch_size, latents, num_inference_steps)
        guidance = self.guidance(class_labels, guidance_scale)
        model = EpsModel(self.unet, self.scheduler.config)
        if latents is None:
            latents = initial_noise(self.unet, batch_size, seed, sample_indices, self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        params = inspect.signature(self.scheduler.step).parameters
        extra = {"eta": eta} if "eta" in params else {}
        nfe, watch = 0, FiniteWatch("model output")  # NaN weights: an error naming the step, not an image
        for t in self.progress_bar(self.scheduler.timesteps) if progress else self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(latents, t)
            out = model.raw(inp, t, guidance)
            watch.update(out, nfe, t)
            nfe += 1
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
        watch.flush()
        return to_output(latents, output_type, nfe, return_dict, self.numpy_to_pil)
