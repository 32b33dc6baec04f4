"""Image editing by inversion: invert under a source condition, regenerate under a target one.

    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.editing import edit

    pipe = load_pipeline("digits-unet")                       # class-conditional, pixel space
    out = edit(pipe, image, source=3, target=8, steps=50, strength=0.8, reconstruct=True)
    out.image, out.latent_error                               # edited image; round-trip error

    out = edit(sd_pipe, "cat.png", source="a photo of a cat", target="a photo of a dog")

Conditions are prompts for Stable-Diffusion-like pipelines (SD, SDXL; the negative prompt is
"" as in the official BDIA/EDICT editing code) and class labels for class-conditional UNets
(diffkit's convention: the null class is the last embedding). The image goes through the
pipeline's VAE when it has one (posterior **mean**, times ``scaling_factor``); pixel-space
models (the digits teacher) edit the image itself.

Methods come from the one table :data:`diffkit.samplers.inversion_methods.INVERSION_METHODS`
(all drive the model through :class:`diffkit.denoisers.EpsModel`, same guidance layout and casts
in both directions):

* ``"bdia"``: :mod:`diffkit.samplers.inversion` (exact; 1 NFE/step; option ``gamma``);
* ``"edict"``: :mod:`diffkit.samplers.edict` (exact; 2 NFE/step; options ``mix`` (p = 0.93),
  ``leapfrog``, ``state_dtype``);
* ``"ddim-inversion"``: :mod:`diffkit.samplers.ddim_inversion` (diffusers' ``DDIMInverseScheduler``;
  inexact; option ``state_dtype``).

:func:`invert_image` is the first half of :func:`edit` (load, encode, invert under the source);
``diffkit invert`` uses it too, so any pipeline ``edit`` takes (pixel or VAE latent) inverts.

With ``reconstruct=True`` the same inversion is also regenerated under the *source*
condition: for the exact methods the latent comes back to float64 round-off, so the pixel
error is the VAE's own (reported separately as ``vae_error``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from PIL import Image

from diffkit.conditioning import class_guidance, prompt_guidance
from diffkit.data import digits_tensors
from diffkit.denoisers import EpsModel
from diffkit.images import to_uint8
from diffkit.pipelines import load_pipeline
from diffkit.pipelines.one_step import require_diffusion_model
from diffkit.pipelines.prompted import condition_kind, require_latent_unet
from diffkit.samplers.inversion_base import InversionRecord, relative_error
from diffkit.samplers.inversion_methods import InversionMethod, get_inversion_method, inversion_method_names

__all__ = ["METHODS", "EditResult", "ImageInversion", "edit", "invert_image", "prepare_image", "encode_image",
           "decode_latent", "image_size", "condition_kind", "make_condition", "test_digit", "is_digits_shaped"]

#: the inversion methods' names (the table's keys)
METHODS = inversion_method_names()


@dataclass
class EditResult:
    """What :func:`edit` returns. Images are (B, C, H, W) float32 in [-1, 1]; latents float64."""

    image: torch.Tensor
    latent: torch.Tensor
    source_image: torch.Tensor
    source_latent: torch.Tensor
    method: str
    settings: dict = field(default_factory=dict)
    nfe: dict = field(default_factory=dict)          # {"inversion": n, "regeneration": m}
    seconds: dict = field(default_factory=dict)
    reconstruction: Optional[torch.Tensor] = None
    reconstruction_latent: Optional[torch.Tensor] = None
    latent_error: Optional[float] = None            # ‖ẑ − z‖/‖z‖ (the inversion's own error)
    pixel_error: Optional[float] = None             # ‖decode(ẑ) − image‖/‖image‖ (includes the VAE)
    vae_error: Optional[float] = None               # ‖decode(z) − image‖/‖image‖ (the VAE alone; 0 without one)

    def to_pil(self, which: str = "image"):
        """A list of PIL images of ``image``, ``source_image`` or ``reconstruction``."""
        x = getattr(self, which)
        if x is None:
            raise ValueError(f"{which} is not available (pass reconstruct=True to edit for the reconstruction)")
        arr = to_uint8(x)
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


# ---------------------------------------------------------------------- pipeline facts
def _vae(pipe):
    return getattr(pipe, "vae", None)


def image_size(pipe) -> tuple[int, int]:
    """(channels, side) of the images the pipeline edits."""
    unet = pipe.unet
    vae = _vae(pipe)
    if vae is None:
        return int(unet.config.in_channels), int(unet.config.sample_size)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.in_channels), int(unet.config.sample_size) * factor


# ---------------------------------------------------------------------- image in
def test_digit(index: int):
    """(image (1, 1, 8, 8) in [-1, 1], label) of the digits test split (``--digit K`` of the CLI)."""
    x, y = digits_tensors("test")
    if not 0 <= index < len(y):
        raise ValueError(f"digit index must be in [0, {len(y) - 1}] (test split), got {index}")
    return x[index:index + 1], int(y[index])


test_digit.__test__ = False  # not a pytest test, whatever imports it


def is_digits_shaped(pipe) -> bool:
    """Whether the pipeline edits 8x8 grey images (the digits models, which ``--digit`` feeds)."""
    return image_size(pipe) == (1, 8)


def prepare_image(image, channels: int, size: int, resize: bool = True) -> torch.Tensor:
    """Any of: a path, a PIL image, a tensor (C, H, W) or (B, C, H, W) in [-1, 1]
    -> (B, channels, size, size) float32 in [-1, 1].

    Files and PIL images are converted to the channel count (L or RGB) and resized (bilinear).
    Tensors must already have the right channel count (no guessing between grey and colour);
    a different height/width is resized (bilinear, antialiased) when ``resize`` else rejected.
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image: file not found: {image}")
        image = Image.open(image)
    if isinstance(image, Image.Image):
        img = image.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            if not resize:
                raise ValueError(f"image: size {img.size[0]}x{img.size[1]}, the pipeline edits {size}x{size} images "
                                 "(pass resize=True to resize)")
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        x = torch.from_numpy(arr.copy())
        x = x[None] if channels == 1 else x.permute(2, 0, 1)
        return x[None].contiguous()
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a file path, a PIL image or a tensor in [-1, 1], got {type(image).__name__}")
    x = image.detach()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"image: expected a tensor of shape (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"image: {x.shape[1]} channel(s), the pipeline edits {channels}-channel images "
                         f"(shape (B, {channels}, {size}, {size}), values in [-1, 1])")
    if not x.is_floating_point():
        raise ValueError(f"image: expected a floating-point tensor in [-1, 1], got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("image: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"image: values span [{lo:.3g}, {hi:.3g}]; tensors must be in [-1, 1] (x * 2 - 1 for [0, 1])")
    if tuple(x.shape[-2:]) != (size, size):
        if not resize:
            raise ValueError(f"image: size {x.shape[-2]}x{x.shape[-1]}, the pipeline edits {size}x{size} images "
                             "(pass resize=True to resize)")
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).clamp(-1, 1)
    return x.contiguous()


@torch.no_grad()
def encode_image(pipe, x: torch.Tensor) -> torch.Tensor:
    """The clean latent (float64): the VAE posterior mean × scaling_factor, or the image itself."""
    vae = _vae(pipe)
    if vae is None:
        return x.to(pipe.unet.device, torch.float64)
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    return (dist.mean * vae.config.scaling_factor).to(torch.float64)


@torch.no_grad()
def decode_latent(pipe, z: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] (float32)."""
    vae = _vae(pipe)
    if vae is None:
        return z.float().clamp(-1, 1)
    out = vae.decode((z / vae.config.scaling_factor).to(vae.device, vae.dtype)).sample
    return out.float().clamp(-1, 1)


# ---------------------------------------------------------------------- conditions
def make_condition(pipe, value, batch: int, guidance_scale: float, name: str = "condition"):
    """A :class:`diffkit.conditioning.Guidance` for ``value`` (class label(s) or prompt(s)),
    with errors naming the argument."""
    kind = condition_kind(pipe)
    if kind == "class":
        if value is None or isinstance(value, str) or isinstance(value, bool):
            raise ValueError(f"{name}: this pipeline is class-conditional; pass class label(s) "
                             f"0..{pipe.unet.config.num_class_embeds - 2}, got {value!r}")
        labels = torch.as_tensor(value).reshape(-1)
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"{name}: class labels must be integers, got {value!r}")
        labels = labels.long()
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"{name}: {labels.numel()} labels for {batch} image(s); pass one label or one per image")
        try:
            return class_guidance(pipe.unet, labels, guidance_scale, device=pipe.unet.device)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if kind == "prompt":
        is_list = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if not (isinstance(value, str) or is_list):
            raise ValueError(f"{name}: this pipeline is prompt-conditioned; pass a non-empty prompt string, "
                             f"got {value!r}")
        prompts = [value] * batch if isinstance(value, str) else list(value)
        if len(prompts) != batch:
            raise ValueError(f"{name}: {len(prompts)} prompts for {batch} image(s); pass one prompt or one per image")
        if any(not p.strip() for p in prompts):
            raise ValueError(f"{name}: an empty prompt; editing needs a non-empty source and target prompt "
                             "(the empty prompt is the unconditional branch of guidance)")
        _, side = image_size(pipe)
        return prompt_guidance(pipe, prompts, "", guidance_scale, height=side, width=side, device=pipe.unet.device)
    if value is not None:
        raise ValueError(f"{name}: this pipeline is unconditional and takes no condition, got {value!r}")
    if guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} needs a conditional pipeline")
    return None


# ---------------------------------------------------------------------- the call
@dataclass
class ImageInversion:
    """What :func:`invert_image` returns: the record, and what regenerating and scoring it need."""

    record: InversionRecord
    method: InversionMethod
    model: EpsModel
    image: torch.Tensor          # (B, C, H, W) float32 in [-1, 1], as prepared
    latent: torch.Tensor         # the clean latent that was inverted (float64)
    condition: object            # the source Guidance (or None for an unconditional pipeline)
    kind: str                    # 'class', 'prompt' or 'none'
    guidance_scale: float
    seconds: dict = field(default_factory=dict)

    def regenerate(self, condition=None) -> torch.Tensor:
        """Regenerate the record under ``condition`` (default: the source), float64 latents."""
        cond = self.condition if condition is None else condition
        return self.method.regenerate(self.model, self.record, cond).to(torch.float64)


def _pipeline(pipe, use: str):
    if isinstance(pipe, (str, os.PathLike)):
        pipe = load_pipeline(pipe)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise TypeError(f"pipe: expected a diffusers pipeline with a unet and a scheduler, got {type(pipe).__name__}")
    # module top once prompted.py stops importing this module (issue #18's cycle fix)

    require_diffusion_model(pipe, f"{use} (inversion and regeneration along a noise grid)")
    require_latent_unet(pipe, use)
    return pipe


def _invert(pipe, entry: InversionMethod, x, src, kind: str, scale: float, steps, strength, extra,
            options) -> ImageInversion:
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    t0 = time.perf_counter()
    z = encode_image(pipe, x)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    record = entry.invert(model, z, src, steps=steps, strength=strength, extra=extra,
                          scheduler_config=pipe.scheduler.config, **options)
    return ImageInversion(record, entry, model, x, z, src, kind, scale,
                          {"encode": t_enc, "inversion": time.perf_counter() - t0})


def _default_scale(kind: str, guidance_scale: Optional[float]) -> float:
    return float(guidance_scale) if guidance_scale is not None else (3.0 if kind == "prompt" else 1.0)


def invert_image(pipe, image, source=None, *, method: str = "bdia", steps: int = 50, strength: float = 0.8,
                 guidance_scale: Optional[float] = None, resize: bool = True, extra: Optional[dict] = None,
                 source_name: str = "source", **options) -> ImageInversion:
    """Load ``image``, encode it (VAE posterior mean, or the pixels themselves) and invert it under
    ``source`` with ``method`` (a name of :data:`~diffkit.samplers.inversion_methods.INVERSION_METHODS`).

    Arguments as :func:`edit`; ``options`` are the method's own (``gamma`` for bdia, ``mix`` for
    edict, ...: another is an error naming the accepted ones); ``extra`` is stored in the record's
    settings; ``source_name`` names the condition in errors (``--label``/``--prompt`` for the CLI).
    """
    entry = get_inversion_method(method)
    entry.check_options(options)
    pipe = _pipeline(pipe, "invert")
    kind = condition_kind(pipe)
    scale = _default_scale(kind, guidance_scale)
    channels, side = image_size(pipe)
    x = prepare_image(image, channels, side, resize=resize)
    src = make_condition(pipe, source, x.shape[0], scale, source_name)
    return _invert(pipe, entry, x, src, kind, scale, steps, strength, extra, options)


def edit(pipe, image, source=None, target=None, *, steps: int = 50, strength: float = 0.8,
         guidance_scale: Optional[float] = None, method: str = "bdia", reconstruct: bool = False,
         resize: bool = True, **options) -> EditResult:
    """Edit ``image``: invert it under ``source``, regenerate under ``target``.

    Args:
        pipe: a diffusers pipeline with a ``unet`` and ``scheduler`` (SD, SDXL, diffkit's
            class-conditional pipeline) or a name/folder for :func:`diffkit.pipelines.load_pipeline`.
        image: a path, a PIL image, or a tensor (C, H, W) / (B, C, H, W) in [-1, 1]; converted and
            resized to the pipeline's size (see :func:`prepare_image`).
        source, target: class label(s) (class-conditional) or prompt(s) (SD/SDXL); ``target``
            defaults to ``source`` (a reconstruction).
        steps: grid size; strength: fraction of it inverted (0, 1] (the pair sits at the top).
        guidance_scale: classifier-free guidance in both directions (default 3 for prompts, as the
            official BDIA/EDICT editing code; 1 for class labels).
        method: "bdia", "edict" or "ddim-inversion" (the table's names).
        reconstruct: also regenerate under ``source`` and report the round-trip errors.
        options: the method's own: ``gamma`` (bdia, default 0.94; inversion wants 0.92-1.0),
            ``mix`` (edict's p, default 0.93), ``leapfrog``, ``state_dtype``; another is an error.
    """
    entry = get_inversion_method(method)
    entry.check_options(options)
    pipe = _pipeline(pipe, "edit")
    kind = condition_kind(pipe)
    scale = _default_scale(kind, guidance_scale)
    if target is None:
        target = source
    channels, side = image_size(pipe)
    x = prepare_image(image, channels, side, resize=resize)
    src = make_condition(pipe, source, x.shape[0], scale, "source")
    tgt = make_condition(pipe, target, x.shape[0], scale, "target")

    inv = _invert(pipe, entry, x, src, kind, scale, steps, strength, None, options)
    t0 = time.perf_counter()
    z_edit = inv.regenerate(tgt)
    t_reg = time.perf_counter() - t0
    image_out = decode_latent(pipe, z_edit)
    record = inv.record
    settings = {"steps": steps, "strength": float(strength), "guidance_scale": scale, "kind": kind,
                "source": _jsonable(source), "target": _jsonable(target), "model_dtype": str(inv.model.dtype)}
    settings.update({k: record.settings[k] for k in entry.options if k in record.settings})
    res = EditResult(image_out, z_edit, x, inv.latent, method, settings,
                     {"inversion": record.settings["nfe"], "regeneration": record.regeneration_nfe},
                     {**inv.seconds, "regeneration": t_reg})
    if reconstruct:
        z_rec = z_edit if _same(source, target) else inv.regenerate()
        res.reconstruction_latent = z_rec
        res.reconstruction = decode_latent(pipe, z_rec)
        res.latent_error = relative_error(z_rec, inv.latent)
        res.pixel_error = relative_error(res.reconstruction, x)
        res.vae_error = relative_error(decode_latent(pipe, inv.latent), x) if _vae(pipe) is not None else 0.0
    return res


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v
