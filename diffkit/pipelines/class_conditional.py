"""A diffusers pipeline for (class-conditional or unconditional) UNet2DModel teachers.

Unlike diffusers' ``DDIMPipeline`` (which silently converts any scheduler to DDIM), it
keeps the scheduler it is given, calls ``scale_model_input``/``init_noise_sigma`` (so
Euler-type schedulers work), applies classifier-free guidance with the null class, and
draws each sample's initial noise from (seed, global sample index).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from diffkit.atomic import UmaskSaveMixin
from diffkit.checks import check_count
from diffkit.conditioning import Guidance, class_guidance, num_classes
from diffkit.denoisers import EpsModel
from diffkit.numerics import FiniteWatch
from diffkit.seeding import randn_for_indices, sample_generator
from ._local import LocalFolderPipelineMixin

__all__ = ["ClassConditionalPipeline", "ImagePipelineOutput", "check_output_type", "batch_of", "initial_noise",
           "check_randomness", "draw_noise", "step_generator", "to_output", "RANDOMNESS_DOC"]

#: How every diffkit image pipeline draws its randomness (quoted in their ``__call__`` docstrings).
RANDOMNESS_DOC = """
        Randomness: give ``seed`` (default 0) or ``generator``, not both.

        * ``seed`` (+ ``sample_indices``, one global index per sample, default 0..B-1): sample k's
          noise comes from (seed, k) alone (:mod:`diffkit.seeding`), whatever batch it is drawn in,
          so shards of a set (``sample_indices=range(start, start + b)``) reproduce one batch. Repeated
          calls with the same seed and indices repeat the noise: to draw a fresh batch, pass the next
          ``sample_indices`` or a ``generator``.
        * ``generator``: diffusers' semantics. A torch.Generator (or a list of one per sample) draws
          the initial noise with diffusers' ``randn_tensor`` (float32) and any noise the scheduler's
          step takes; it advances, so repeated calls give new samples.
"""


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


def check_randomness(seed: Optional[int], sample_indices, generator, batch_size: int) -> int:
    """The seed to use (0 by default) after refusing seed/sample_indices together with generator."""
    if generator is None:
        return 0 if seed is None else seed
    if seed is not None:
        raise ValueError(f"seed and generator: pass one of them, not both (got seed={seed!r} and a generator): seed "
                         "keys each sample's noise to (seed, sample index), generator draws it as diffusers does")
    if sample_indices is not None:
        raise ValueError("sample_indices and generator: pass one of them, not both: sample_indices only keys the "
                         "per-sample noise drawn from seed")
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError(f"generator: expected a torch.Generator or a list of them (one per sample), got {generator!r}")
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(f"generator: a list of {len(generator)} generator(s) for {batch_size} samples; pass one "
                         "generator per sample or a single generator")
    return 0


def draw_noise(unet, batch_size: int, seed: int, sample_indices=None, generator=None, device=None) -> torch.Tensor:
    """The initial noise: per-index from ``seed`` (:func:`initial_noise`), or diffusers'
    ``randn_tensor`` with ``generator`` (float32, on the generator's device, then moved)."""
    if generator is None:
        return initial_noise(unet, batch_size, seed, sample_indices, device)
    cfg = unet.config
    shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    return randn_tensor(shape, generator=list(generator) if isinstance(generator, tuple) else generator,
                        device=torch.device(device) if device is not None else None, dtype=torch.float32)


def step_generator(seed: int, sample_indices, batch_size: int, generator=None):
    """What the scheduler's ``step`` draws its noise from (eta > 0, ancestral samplers): the given
    ``generator``, else one CPU generator per sample keyed by (seed, sample index, "step")."""
    if generator is not None:
        return list(generator) if isinstance(generator, tuple) else generator
    idx = list(sample_indices) if sample_indices is not None else list(range(batch_size))
    return [sample_generator(seed, k, "step") for k in idx]


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


class ClassConditionalPipeline(UmaskSaveMixin, LocalFolderPipelineMixin, DiffusionPipeline):
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
                 num_inference_steps: int = 50, guidance_scale: float = 1.0, eta: float = 0.0,
                 seed: Optional[int] = None, sample_indices: Optional[Sequence[int]] = None,
                 generator: Union[None, torch.Generator, list] = None, latents: Optional[torch.Tensor] = None,
                 output_type: str = "pil", return_dict: bool = True, progress: bool = True):
        """Sample one image per entry of ``class_labels`` (a class-conditional UNet) or
        ``batch_size`` unconditional images, with the scheduler as given and classifier-free
        guidance (``guidance_scale``) against the null class. ``latents``: the initial noise
        (then nothing is drawn for it).
        """
        check_output_type(output_type)
        class_labels, batch_size = batch_of(class_labels, batch_size, latents, num_inference_steps)
        seed = check_randomness(seed, sample_indices, generator, batch_size)
        guidance = self.guidance(class_labels, guidance_scale)
        model = EpsModel(self.unet, self.scheduler.config)
        if latents is None:
            latents = draw_noise(self.unet, batch_size, seed, sample_indices, generator, self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        params = inspect.signature(self.scheduler.step).parameters
        extra = {"eta": eta} if "eta" in params else {}
        if "generator" in params:  # as diffusers' prepare_extra_step_kwargs
            extra["generator"] = step_generator(seed, sample_indices, batch_size, generator)
        nfe, watch = 0, FiniteWatch("model output")  # NaN weights: an error naming the step, not an image
        for t in self.progress_bar(self.scheduler.timesteps) if progress else self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(latents, t)
            out = model.raw(inp, t, guidance)
            watch.update(out, nfe, t)
            nfe += 1
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
        watch.flush()
        return to_output(latents, output_type, nfe, return_dict, self.numpy_to_pil)

    __call__.__doc__ += RANDOMNESS_DOC
