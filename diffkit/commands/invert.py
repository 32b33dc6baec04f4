"""diffkit invert: exact BDIA-DDIM inversion of an image into a latent pair saved to disk.

``diffkit sample --from-inversion FILE`` regenerates from the file (optionally with other
class labels: an edit). Works with the models ``load_pipeline`` opens (diffkit class-conditional
or unconditional UNet2DModel pipelines, e.g. the shipped digits teacher).
"""

from __future__ import annotations

import os
import time

from diffkit.checks import count_arg

from ._outputs import check_output_file

NAME = "invert"
HELP = "exactly invert an image with BDIA-DDIM and save the latent pair (--model DIR --output FILE)"
DEMO_ORDER = 20

DTYPES = ("float32", "bfloat16", "float16", "float64")


def add_arguments(p):
    p.add_argument("--model", required=True, help="model folder (diffkit pipeline or UNet2DModel) or asset name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", default=None, help="image file to invert (resized to the model's sample size)")
    src.add_argument("--digit", type=int, default=None,
                     help="invert image K of the digits test split (diffkit.data); the default for 8x8 grey models")
    src.add_argument("--from-sample", action="store_true", help="invert a DDIM-50 sample of the model itself")
    p.add_argument("--label", type=int, default=None,
                   help="class label to condition on (default: the digit's own label, else 0)")
    p.add_argument("--steps", type=count_arg(2), default=50, help="grid size (the latent pair needs >= 2)")
    p.add_argument("--strength", type=float, default=1.0, help="fraction of the grid to invert (0, 1]")
    p.add_argument("--gamma", type=float, default=0.94, help="BDIA gamma; inversion wants 0.92-1.0")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (null class)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype (the BDIA state is float64)")
    p.add_argument("--seed", type=int, default=0, help="seed for --from-sample")
    p.add_argument("--output", default="inversion.safetensors")
    p.add_argument("--no-check", action="store_true", help="skip the regeneration check (saves one pass)")


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def load_image(path: str, channels: int, size: int):
    """An image file as a (1, C, size, size) tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    img = Image.open(path).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    x = torch.from_numpy(arr)
    x = x[None] if channels == 1 else x.permute(2, 0, 1)
    if x.shape[0] != channels:
        raise ValueError(f"the model takes {channels} channels; cannot convert {path}")
    return x[None]


def digit_from_data(index: int):
    """(image (1, 1, 8, 8), label) from the digits test split."""
    from diffkit.data import digits_tensors

    x, y = digits_tensors("test")
    if not 0 <= index < len(y):
        raise ValueError(f"digit index must be in [0, {len(y) - 1}] (test split), got {index}")
    return x[index:index + 1], int(y[index])


def sample_from_model(pipe, label, seed: int):
    out = pipe(class_labels=[label] if label is not None else None, batch_size=1, num_inference_steps=50,
               seed=seed, output_type="pt", progress=False)
    return out.images


def prepare(pipe, args):
    """(clean image tensor, label or None, description)."""
    cfg = pipe.unet.config
    n_cls = getattr(pipe, "num_classes", 0)
    label = args.label
    if args.image:
        x, what = load_image(args.image, cfg.in_channels, cfg.sample_size), args.image
    elif args.from_sample or (args.digit is None and not _digits_shaped(cfg)):
        label = (label if label is not None else 0) if n_cls else None
        x, what = sample_from_model(pipe, label, args.seed), f"a DDIM-50 sample (seed {args.seed})"
    else:
        x, y = digit_from_data(args.digit or 0)
        if (cfg.in_channels, cfg.sample_size) != (1, x.shape[-1]):
            raise ValueError(f"--digit needs a 1-channel {x.shape[-1]}x{x.shape[-1]} model, this one is "
                             f"{cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size}")
        label = label if label is not None else y
        what = f"test digit #{args.digit or 0} (label {y})"
    if n_cls:
        label = 0 if label is None else label
    else:
        label = None
    return x, label, what


def _digits_shaped(cfg) -> bool:
    return cfg.in_channels == 1 and cfg.sample_size == 8


def run(args):
    import torch

    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import EpsModel
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.one_step import require_diffusion_model
    from diffkit.samplers.inversion import invert, regenerate, relative_error

    check_output_file(args.output, "--output")
    pipe = load_pipeline(args.model)
    require_diffusion_model(pipe, "invert (BDIA-DDIM inversion)")
    pipe.set_progress_bar_config(disable=True)
    x, label, what = prepare(pipe, args)
    if pipe.unet.dtype != _dtype(args.dtype):
        pipe.unet.to(_dtype(args.dtype))
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    cond = class_guidance(pipe.unet, [label], args.guidance) if label is not None else None
    if cond is None and args.guidance != 1.0:
        raise ValueError("--guidance needs a class-conditional model")
    extra = {"model": str(args.model), "labels": None if label is None else [label], "source": what}
    t0 = time.perf_counter()
    result = invert(model, x, cond, steps=args.steps, strength=args.strength, gamma=args.gamma, extra=extra)
    dt = time.perf_counter() - t0
    path = result.save(args.output)
    print(f"inverted {what} with BDIA-DDIM (gamma {args.gamma}, {args.steps} steps, strength {args.strength}, "
          f"NFE {result.settings['nfe']}, {dt:.2f} s) -> {path}")
    if not args.no_check:
        err = relative_error(regenerate(model, result, cond), x)
        print(f"round-trip relative error (regenerate vs input): {err:.3e}")


# ---------------------------------------------------------------------- demo
def demo_step(ctx):
    """Invert a digit exactly, regenerate it, and edit it by regenerating with another label."""
    import torch
    from diffusers import DDIMScheduler

    from diffkit.assets import AssetError
    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import EpsModel
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.samplers.inversion import invert, regenerate, relative_error

    try:
        pipe = load_pipeline("digits-unet")
        what = "the shipped digits teacher"
    except (AssetError, OSError, ValueError) as e:  # missing, or unreadable while being rebuilt
        from diffkit.pipelines.class_conditional import ClassConditionalPipeline
        from diffkit.testing import tiny_unet2d

        pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10), DDIMScheduler(clip_sample=False))
        missing = isinstance(e, AssetError) and "not found" in str(e)
        what = ("a tiny random-weight UNet (assets/digits-unet " + ("not available yet)" if missing else
                                                                   f"unreadable: {e})"))
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.unet.config
    try:
        if not _digits_shaped(cfg):
            raise ValueError("model is not 8x8 grey")
        x, label = digit_from_data(0)
        source = f"test digit #0 (label {label})"
    except (ImportError, ValueError):
        label = 3
        x = sample_from_model(pipe, label, seed=0)
        source = f"a DDIM-50 sample of class {label}"
    steps = 20 if ctx.quick else 50
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    cond = class_guidance(pipe.unet, [label], 1.0)
    t0 = time.perf_counter()
    result = invert(model, x, cond, steps=steps, gamma=0.94)
    t_inv = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon = regenerate(model, result, cond)
    t_reg = time.perf_counter() - t0
    err = relative_error(recon, x)
    edit_label = (label + 5) % 10
    edited = regenerate(model, result, class_guidance(pipe.unet, [edit_label], 1.0))
    path = save_grid(torch.cat([x.to(recon.device, torch.float64), recon, edited]).float(),
                     ctx.path("inversion_bdia.png"), nrow=3, upscale=8)
    dtype = str(model.dtype).replace("torch.", "")
    ctx.say(f"- Exact inversion (BDIA-DDIM, gamma 0.94, {steps} steps, float64 state, {dtype} model) of "
            f"{source} on {what}: round-trip relative error {err:.2e} (inversion {t_inv:.2f} s, "
            f"regeneration {t_reg:.2f} s); regenerated as label {edit_label} for an edit -> "
            f"`{os.path.basename(path)}` (input | reconstruction | edit)")
