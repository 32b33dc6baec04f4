"""diffkit invert: invert an image (exactly with BDIA-DDIM, the default, or EDICT; approximately
with DDIM inversion) and save the record to disk.

``diffkit sample --from-inversion FILE`` regenerates from the file (optionally with other
class labels or another prompt: an edit). Works with the models ``load_pipeline`` opens: diffkit
class-conditional or unconditional UNet2DModel pipelines (e.g. the shipped digits teacher,
conditioned with ``--label``) and saved Stable Diffusion (XL) pipeline folders (``--prompt``).
The image is loaded, encoded and inverted by :func:`diffkit.pipelines.editing.invert_image`,
as in ``diffkit edit`` (VAE posterior mean for latent models); ``--method`` is a name of the
one inversion table (:mod:`diffkit.samplers.inversion_methods`).
"""

from __future__ import annotations

import os
import time

from diffkit.checks import count_arg
from diffkit.commands._outputs import check_output_file
from diffkit.samplers.inversion_methods import get_inversion_method, inversion_method_names

NAME = "invert"
HELP = "invert an image (BDIA-DDIM exactly, EDICT, DDIM inversion) and save the record (--model DIR --output FILE)"
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
                   help="class label to condition on, class-conditional models (default: the digit's own label, "
                        "else 0)")
    p.add_argument("--prompt", default=None, help="prompt to condition on, Stable Diffusion (XL) pipeline folders")
    p.add_argument("--steps", type=count_arg(2), default=50, help="grid size (the latent pair needs >= 2)")
    p.add_argument("--strength", type=float, default=1.0, help="fraction of the grid to invert (0, 1]")
    p.add_argument("--method", default="bdia", choices=inversion_method_names(),
                   help="inversion method (default bdia: exact, 1 NFE per step)")
    p.add_argument("--gamma", type=float, default=None, help="BDIA gamma (--method bdia; default 0.94, inversion "
                   "wants 0.92-1.0)")
    p.add_argument("--mix", type=float, default=None, help="EDICT's mixing weight p (--method edict; default 0.93)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale against the null "
                   "class or the empty prompt (default: 1 for labels, 3 for prompts as `diffkit edit`)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype (the inversion state is float64)")
    p.add_argument("--seed", type=int, default=0, help="seed for --from-sample")
    p.add_argument("--output", default="inversion.safetensors")
    p.add_argument("--no-check", action="store_true", help="skip the regeneration check (saves one pass)")


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def sample_from_model(pipe, label, seed: int, prompt=None):
    """A 50-step sample of the model itself (its own scheduler), (1, C, H, W) in [-1, 1]."""
    if prompt is not None:
        from diffkit.pipelines.prompted import sample_prompt

        return sample_prompt(pipe, prompt, 1, 50, seed=seed)[0]
    out = pipe(class_labels=[label] if label is not None else None, batch_size=1, num_inference_steps=50,
               seed=seed, output_type="pt", progress=False)
    return out.images


def prepare(pipe, args):
    """(image: a file path for :func:`~diffkit.pipelines.editing.invert_image` to load, or a tensor in
    [-1, 1]; label or None; description)."""
    from diffkit.pipelines.editing import image_size, is_digits_shaped, test_digit

    channels, side = image_size(pipe)
    n_cls = getattr(pipe, "num_classes", 0)
    label = args.label
    if args.image:
        x, what = args.image, args.image
    elif args.from_sample or (args.digit is None and not is_digits_shaped(pipe)):
        label = (label if label is not None else 0) if n_cls else None
        x = sample_from_model(pipe, label, args.seed, args.prompt)
        what = f"a 50-step sample of the model (seed {args.seed})"
    else:
        x, y = test_digit(args.digit or 0)
        if not is_digits_shaped(pipe):
            raise ValueError(f"--digit needs a 1-channel {x.shape[-1]}x{x.shape[-1]} model, this one makes "
                             f"{channels}x{side}x{side} images; pass --image")
        label = label if label is not None else y
        what = f"test digit #{args.digit or 0} (label {y})"
    if n_cls:
        label = 0 if label is None else label
    else:
        label = None
    return x, label, what


def run(args):
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.editing import invert_image
    from diffkit.pipelines.one_step import require_diffusion_model
    from diffkit.pipelines.prompted import check_condition_args, require_latent_unet
    from diffkit.samplers.inversion_base import relative_error

    check_output_file(args.output, "--output")
    options = get_inversion_method(args.method, "--method").flag_options(gamma=args.gamma, mix=args.mix)
    pipe = load_pipeline(args.model)
    require_diffusion_model(pipe, f"invert ({args.method} inversion)")
    kind = check_condition_args(pipe, labels=args.label, prompt=args.prompt, label_flag="--label")
    require_latent_unet(pipe, "invert")
    pipe.set_progress_bar_config(disable=True)
    if kind == "none" and args.guidance not in (None, 1.0):
        raise ValueError("--guidance needs a class-conditional model")
    x, label, what = prepare(pipe, args)
    if pipe.unet.dtype != _dtype(args.dtype):
        pipe.unet.to(_dtype(args.dtype))
    extra = {"model": str(args.model), "labels": None if label is None else [label], "source": what}
    if kind == "prompt":
        extra["prompt"] = args.prompt
    source = args.prompt if kind == "prompt" else label
    t0 = time.perf_counter()
    inv = invert_image(pipe, x, source, method=args.method, steps=args.steps, strength=args.strength,
                       guidance_scale=args.guidance, extra=extra,
                       source_name="--prompt" if kind == "prompt" else "--label", **options)
    dt = time.perf_counter() - t0
    result = inv.record
    path = result.save(args.output)
    how = ", ".join(f"{k} {v}" for k, v in result.settings.items() if k in inv.method.options and k != "state_dtype")
    print(f"inverted {what} with {inv.method.title} ({how + ', ' if how else ''}{args.steps} steps, strength "
          f"{args.strength}, NFE {result.settings['nfe']}, {dt:.2f} s) -> {path}")
    if not args.no_check:
        err = relative_error(inv.regenerate(), inv.latent)
        what = "latent" if getattr(pipe, "vae", None) is not None else "regenerate vs input"
        print(f"round-trip relative error ({what}): {err:.3e}")


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
    from diffkit.pipelines.editing import is_digits_shaped, test_digit
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
    try:
        if not is_digits_shaped(pipe):
            raise ValueError("model is not 8x8 grey")
        x, label = test_digit(0)
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
