"""diffkit edit: invert an image under a source condition, regenerate it under a target one.

    diffkit edit --model digits-unet --digit 13 --source 3 --target 8 --output edit.png   # test digit #13 is a 3
    diffkit edit --model path/to/sd --image cat.png --source "a photo of a cat" --target "a photo of a dog"

Writes a before/after PNG (input | edit, plus the reconstruction with --reconstruct).
"""

from __future__ import annotations

import os
import time

from diffkit.checks import IMAGE_OUTPUT_HELP, count_arg, image_path_arg
from diffkit.commands._outputs import check_output_file
from diffkit.samplers.inversion_methods import get_inversion_method, inversion_method_names

NAME = "edit"
HELP = "edit an image by exact inversion (--model --image/--digit --source --target; BDIA, EDICT or DDIM inversion)"
DEMO_ORDER = 25


def add_arguments(p):
    p.add_argument("--model", default="digits-unet", help="pipeline folder or asset name (default: digits-unet)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", default=None, help="image file (converted and resized to the pipeline's size)")
    src.add_argument("--digit", type=int, default=None, help="image K of the digits test split (8x8 grey models)")
    p.add_argument("--source", default=None,
                   help="source condition: class label (class-conditional models; default: the digit's label) "
                   "or prompt")
    p.add_argument("--target", default=None, help="target condition (class label or prompt); default: the source")
    p.add_argument("--method", default="bdia", choices=inversion_method_names(),
                   help="inversion method (default bdia: exact, 1 NFE per step)")
    p.add_argument("--steps", type=count_arg(2), default=50, help="grid size (the latent pair needs >= 2)")
    p.add_argument("--strength", type=float, default=0.8, help="fraction of the grid to invert (0, 1]")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: 3 for prompts, 1 for labels)")
    p.add_argument("--gamma", type=float, default=None, help="BDIA gamma (--method bdia; default 0.94, inversion "
                   "wants 0.92-1.0)")
    p.add_argument("--mix", type=float, default=None, help="EDICT's mixing weight p (--method edict; default 0.93)")
    p.add_argument("--reconstruct", action="store_true", help="also regenerate under the source and print the errors")
    p.add_argument("--output", default="edit.png", type=image_path_arg, help=IMAGE_OUTPUT_HELP)
    p.add_argument("--upscale", type=count_arg(1), default=None,
                   help="image upscale factor (default: 8 for images <= 64 px)")


def _condition(pipe, value):
    from diffkit.pipelines.prompted import condition_kind

    if value is None or condition_kind(pipe) != "class":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"this model is class-conditional: --source/--target take an integer class label, "
                         f"got {value!r}") from None


def run(args):
    import torch

    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.editing import edit, image_size, is_digits_shaped, test_digit

    check_output_file(args.output, "--output")
    options = get_inversion_method(args.method, "--method").flag_options(gamma=args.gamma, mix=args.mix)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    source = _condition(pipe, args.source)
    if args.image:
        image, what = args.image, args.image
    else:
        if not is_digits_shaped(pipe):
            channels, side = image_size(pipe)
            raise ValueError(f"--image is required: {type(pipe).__name__} edits {channels}x{side}x{side} images "
                             "(--digit is for 8x8 grey models such as digits-unet)")
        image, label = test_digit(args.digit or 0)
        what = f"test digit #{args.digit or 0} (label {label})"
        if source is None:
            source = label
    target = _condition(pipe, args.target)
    out = edit(pipe, image, source, target, steps=args.steps, strength=args.strength, guidance_scale=args.guidance,
               method=args.method, reconstruct=args.reconstruct, **options)
    panels = [out.source_image, out.image] + ([out.reconstruction] if args.reconstruct else [])
    up = args.upscale or (8 if out.image.shape[-1] <= 64 else 1)
    path = save_grid(torch.cat(panels), args.output, nrow=out.image.shape[0], upscale=up)
    print(f"edited {what}: {source!r} -> {out.settings['target']!r} with {args.method} ({args.steps} steps, strength "
          f"{args.strength}, NFE {out.nfe['inversion']} + {out.nfe['regeneration']}) -> {path} "
          f"(rows: input | edit{' | reconstruction' if args.reconstruct else ''})")
    if args.reconstruct:
        print(f"reconstruction (source = target): latent relative error {out.latent_error:.3e}, pixel "
              f"{out.pixel_error:.3e} (VAE alone {out.vae_error:.3e})")


# ---------------------------------------------------------------------- demo
def demo_step(ctx):
    """Edit a test digit 3 -> 8 on the digits teacher and reconstruct it (source = target)."""
    import torch

    from diffkit.assets import AssetError
    from diffkit.data import digits_tensors
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.editing import edit

    try:
        pipe = load_pipeline("digits-unet")
    except AssetError as e:
        ctx.say(f"- Editing: skipped ({e})")
        return
    pipe.set_progress_bar_config(disable=True)
    x, y = digits_tensors("test")
    k = int((y == 3).nonzero()[0])
    steps = 20 if ctx.quick else 50
    t0 = time.perf_counter()
    out = edit(pipe, x[k:k + 1], 3, 8, steps=steps, strength=0.8, gamma=0.94, reconstruct=True)
    dt = time.perf_counter() - t0
    try:
        from diffkit.metrics.digits import classify

        cls = f"; the feature net reads the edit as {int(classify(out.image)[0])}"
    except Exception:  # the feature-net asset is optional for the demo
        cls = ""
    path = save_grid(torch.cat([out.source_image, out.image, out.reconstruction]), ctx.path("edit_3_to_8.png"),
                     nrow=3, upscale=8)
    ctx.say(f"- Editing (BDIA-DDIM, gamma 0.94, {steps} steps, strength 0.8) of test digit #{k} (a 3) on the digits "
            f"teacher: regenerated as an 8{cls}; reconstruction with source = target has latent error "
            f"{out.latent_error:.2e} ({dt:.2f} s) -> `{os.path.basename(path)}` (input | edit | reconstruction)")
