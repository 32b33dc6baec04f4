"""Saved diffusers Stable Diffusion (XL) pipelines in diffkit's commands.

``load_pipeline`` opens SD 1.x/2.x and SDXL folders (text-to-image, img2img, inpainting; see
``diffkit.pipelines.DIFFUSERS_PIPELINES``). The commands take prompts for them where they take
class labels for diffkit's class-conditional UNets; this module holds what they share:

* :func:`check_condition_args`: the right kind of condition for the pipeline, or an error
  naming the flag;
* :func:`require_latent_unet`: inversion, editing and sampling need a UNet that denoises the
  VAE latent alone (an inpainting UNet also takes a mask and a masked image: 9 channels);
* :func:`sample_prompt`: the pipeline's own text-to-image call (img2img / inpainting folders
  through ``AutoPipelineForText2Image.from_pipe``, same modules), with each sample's initial
  latent drawn from (seed, sample index) as diffkit's own pipelines draw it and any step noise
  (eta > 0) from per-sample generators keyed the same way.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from diffkit.conditioning import num_classes
from diffkit.seeding import randn_for_indices, sample_generator

__all__ = ["condition_kind", "check_condition_args", "require_latent_unet", "text_to_image", "sample_prompt",
           "TEXT_TO_IMAGE"]

TEXT_TO_IMAGE = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def condition_kind(pipe) -> str:
    """'class' (class-conditional UNet), 'prompt' (SD/SDXL) or 'none' (unconditional)."""
    if num_classes(pipe.unet) > 0:
        return "class"
    if getattr(pipe, "text_encoder", None) is not None or getattr(pipe, "text_encoder_2", None) is not None:
        return "prompt"
    return "none"


def check_condition_args(pipe, labels=None, prompt=None, label_flag: str = "--labels",
                         prompt_flag: str = "--prompt") -> str:
    """The pipeline's condition kind ('class', 'prompt' or 'none') after refusing class labels for
    a prompt-conditioned pipeline, a prompt for any other, and a missing prompt."""
    kind = condition_kind(pipe)
    name = type(pipe).__name__
    if kind == "prompt":
        if labels is not None:
            raise ValueError(f"{label_flag}: {name} is prompt-conditioned (a text encoder, no class labels); "
                             f"pass {prompt_flag} \"...\" instead")
        if prompt is None:
            raise ValueError(f"{prompt_flag} is required: {name} is prompt-conditioned (a text encoder)")
    elif prompt is not None:
        what = (f"class-conditional (labels 0..{pipe.unet.config.num_class_embeds - 2}); pass {label_flag}"
                if kind == "class" else "unconditional and takes no prompt")
        raise ValueError(f"{prompt_flag}: this model ({name}) is {what}")
    return kind


def require_latent_unet(pipe, use: str) -> None:
    """Refuse a pipeline whose UNet input is not the VAE latent alone (inpainting UNets)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    c_in, c_lat = int(pipe.unet.config.in_channels), int(vae.config.latent_channels)
    if c_in != c_lat:
        raise ValueError(f"{use}: the {type(pipe).__name__} UNet takes {c_in} input channels (an inpainting UNet: "
                         f"latents, mask and masked-image latents), not the VAE's {c_lat} latent channels; {use} needs "
                         "a UNet that denoises the latent alone (a text-to-image or img2img checkpoint)")


def text_to_image(pipe):
    """``pipe`` itself for SD/SDXL text-to-image, else the text-to-image pipeline on its modules."""
    require_latent_unet(pipe, "sampling")
    if type(pipe).__name__ in TEXT_TO_IMAGE:
        return pipe
    from diffusers import AutoPipelineForText2Image

    t2i = AutoPipelineForText2Image.from_pipe(pipe)
    t2i.set_progress_bar_config(disable=True)
    return t2i


@torch.no_grad()
def sample_prompt(pipe, prompt, n: int, steps: int, guidance_scale: Optional[float] = None, eta: float = 0.0,
                  seed: int = 0, sample_indices: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, int]:
    """(images (n, 3, H, W) float32 in [-1, 1], NFE): ``n`` samples of ``prompt`` (one string, or one
    per sample) from the pipeline's own call. ``guidance_scale`` None: the pipeline's default."""
    t2i = text_to_image(pipe)
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    if len(prompts) != n:
        raise ValueError(f"prompt: {len(prompts)} prompts for {n} images; pass one prompt or one per image")
    idx = list(range(n)) if sample_indices is None else list(sample_indices)
    cfg = t2i.unet.config
    latents = randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), idx, seed,
                                device=t2i._execution_device, dtype=t2i.unet.dtype)
    kw = {} if guidance_scale is None else {"guidance_scale": float(guidance_scale)}
    out = t2i(prompts, num_inference_steps=steps, latents=latents, eta=eta, output_type="pt",
              generator=[sample_generator(seed, k, "step") for k in idx], **kw)
    return out.images.float() * 2 - 1, len(t2i.scheduler.timesteps)
