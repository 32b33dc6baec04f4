"""diffkit sample: draw images from a model folder with any registered sampler."""

from __future__ import annotations

from diffkit.checks import count_arg

from ._outputs import check_output_file

NAME = "sample"
HELP = "sample images from a model folder (--model DIR --sampler NAME --steps N)"


def add_arguments(p):
    p.add_argument("--model", default=None,
                   help="model folder (diffkit pipeline, or a UNet2DModel) or asset name (required unless "
                        "--from-inversion names it)")
    p.add_argument("--sampler", default=None, help="registered sampler name (see `diffkit fid --list-samplers`); "
                   "default: the model's own (its pipeline's scheduler; a one-step generator takes no other)")
    p.add_argument("--steps", type=count_arg(1), default=None, help="number of steps (default 50; with "
                   "--from-inversion: the inversion's, which it must equal)")
    p.add_argument("--n", type=count_arg(1), default=16, help="number of images")
    p.add_argument("--labels", default=None, help="comma-separated class labels (default: balanced 0..C-1)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default 1; with --from-inversion: "
                   "the inversion's)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="samples.png")
    p.add_argument("--upscale", type=count_arg(1), default=4)
    p.add_argument("--from-inversion", default=None, metavar="FILE",
                   help="regenerate from a `diffkit invert` file (BDIA-DDIM from its latent pair; other --labels edit)")


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [k % num_classes for k in range(n)]


def run(args):
    check_output_file(args.output, "--output")
    if args.from_inversion:
        return run_from_inversion(args)
    if not args.model:
        raise ValueError("--model is required (a model folder or asset name)")
    import torch

    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.one_step import require_diffusion_model
    from diffkit.registry import get_sampler, make_scheduler

    steps = 50 if args.steps is None else args.steps
    pipe = load_pipeline(args.model)
    one_step = getattr(pipe, "one_step", False)  # a distilled generator: 1 evaluation, no sampler to swap
    if args.sampler is not None:
        get_sampler(args.sampler)
        require_diffusion_model(pipe, f"--sampler {args.sampler}")
        pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    labels = None
    if getattr(pipe, "num_classes", 0):
        labels = [int(x) for x in args.labels.split(",")] if args.labels else balanced_labels(args.n, pipe.num_classes)
    out = pipe(class_labels=labels, batch_size=None if labels else args.n, num_inference_steps=steps,
               guidance_scale=1.0 if args.guidance is None else args.guidance, eta=args.eta, seed=args.seed,
               output_type="pt")
    save_grid(out.images, args.output, upscale=args.upscale)
    sampler = args.sampler or f"the model's own {type(pipe.scheduler).__name__}"
    how = "one-step generator; --steps/--eta do not apply" if one_step else f"{sampler}, {steps} steps"
    print(f"wrote {len(out.images)} samples to {args.output} ({how}, NFE {out.nfe})")


def run_from_inversion(args):
    """Regenerate the latent pair of a ``diffkit invert`` file (exact reconstruction, or an edit)."""
    import torch

    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import EpsModel
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.samplers.inversion import InversionResult, regenerate, relative_error

    result = InversionResult.load(args.from_inversion)
    extra = result.settings.get("extra", {})
    model_dir = args.model or extra.get("model")
    if not model_dir:
        raise ValueError("--model is required: the inversion file does not name its model")
    pipe = load_pipeline(model_dir)
    dtype = getattr(torch, result.settings.get("model_dtype", "float32"))
    if pipe.unet.dtype != dtype:
        pipe.unet.to(dtype)
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    labels = [int(x) for x in args.labels.split(",")] if args.labels else extra.get("labels")
    scale = result.settings["guidance_scale"] if args.guidance is None else args.guidance
    cond = class_guidance(pipe.unet, labels, scale) if labels is not None else None
    images = regenerate(model, result, cond, steps=args.steps)
    save_grid(images.float(), args.output, upscale=args.upscale)
    msg = f"regenerated {len(images)} image(s) from {args.from_inversion} (BDIA-DDIM, NFE {len(result.timesteps) - 1})"
    if result.clean is not None and labels == extra.get("labels"):
        msg += f"; relative error vs the inverted input {relative_error(images, result.clean):.3e}"
    print(f"{msg} -> {args.output}")
