"""diffkit sample: draw images from a model folder with any registered sampler.

Class-conditional models take ``--labels``; saved Stable Diffusion (XL) pipeline folders take
``--prompt`` (their own call, initial latents per sample index from ``--seed``).
"""

from __future__ import annotations

from diffkit.checks import IMAGE_OUTPUT_HELP, count_arg, image_path_arg

from ._outputs import check_output_file

NAME = "sample"
HELP = "sample images from a model folder (--model DIR --sampler NAME --steps N)"


def add_arguments(p):
    p.add_argument("--model", default=None,
                   help="model folder (diffkit pipeline, or a UNet2DModel) or asset name (required unless "
                        "--from-inversion names it)")
    p.add_argument("--sampler", default=None, help="a registered sampler of kind 'scheduler' (see --list-samplers); "
                   "default: the model's own (its pipeline's scheduler; a one-step generator takes no other)")
    p.add_argument("--steps", type=count_arg(1), default=None, help="number of steps (default 50; with "
                   "--from-inversion: the inversion's, which it must equal)")
    p.add_argument("--n", type=count_arg(1), default=16, help="number of images")
    p.add_argument("--labels", default=None, help="comma-separated class labels (default: balanced 0..C-1)")
    p.add_argument("--prompt", default=None, help="text prompt, for Stable Diffusion (XL) pipeline folders (with "
                   "--from-inversion: regenerate under this prompt, an edit)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default 1 for class labels, the "
                   "pipeline's own for prompts; with --from-inversion: the inversion's)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="samples.png", type=image_path_arg, help=IMAGE_OUTPUT_HELP)
    p.add_argument("--upscale", type=count_arg(1), default=None,
                   help="PNG upscale factor (default: 4 for images <= 64 px, else 1)")
    p.add_argument("--from-inversion", default=None, metavar="FILE",
                   help="regenerate from a `diffkit invert` file (BDIA-DDIM from its latent pair; other --labels edit)")
    p.add_argument("--list-samplers", action="store_true", help="list the registered samplers and exit (--sampler "
                   "takes the 'scheduler' ones; the 'function' ones run through `diffkit sample-edm` and `diffkit fid`)")


def upscale(args, images) -> int:
    """``--upscale``, else 4 for small images (the 8x8 digits) and 1 from 65 px up."""
    return args.upscale or (4 if images.shape[-1] <= 64 else 1)


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [k % num_classes for k in range(n)]


def run(args):
    if args.list_samplers:
        from diffkit.registry import describe_samplers

        print("\n".join(describe_samplers()))
        return 0
    check_output_file(args.output, "--output")
    if args.from_inversion:
        return run_from_inversion(args)
    if not args.model:
        raise ValueError("--model is required (a model folder or asset name)")
    import torch

    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.one_step import require_diffusion_model
    from diffkit.pipelines.prompted import check_condition_args, require_latent_unet, sample_prompt
    from diffkit.registry import get_sampler, make_scheduler

    steps = 50 if args.steps is None else args.steps
    pipe = load_pipeline(args.model)
    kind = check_condition_args(pipe, labels=args.labels, prompt=args.prompt)
    if kind == "prompt":
        require_latent_unet(pipe, "sample")  # an inpainting UNet, refused before anything is drawn
    one_step = getattr(pipe, "one_step", False)  # a distilled generator: 1 evaluation, no sampler to swap
    if args.sampler is not None:
        get_sampler(args.sampler)
        require_diffusion_model(pipe, f"--sampler {args.sampler}")
        pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    sampler = args.sampler or f"the model's own {type(pipe.scheduler).__name__}"
    if kind == "prompt":
        pipe.set_progress_bar_config(disable=True)
        images, nfe = sample_prompt(pipe, args.prompt, args.n, steps, args.guidance, args.eta, args.seed)
        save_grid(images, args.output, upscale=upscale(args, images))
        print(f"wrote {len(images)} samples to {args.output} ({type(pipe).__name__}, {sampler}, {steps} steps, "
              f"NFE {nfe})")
        return
    labels = None
    if getattr(pipe, "num_classes", 0):
        labels = [int(x) for x in args.labels.split(",")] if args.labels else balanced_labels(args.n, pipe.num_classes)
    out = pipe(class_labels=labels, batch_size=None if labels else args.n, num_inference_steps=steps,
               guidance_scale=1.0 if args.guidance is None else args.guidance, eta=args.eta, seed=args.seed,
               output_type="pt")
    save_grid(out.images, args.output, upscale=upscale(args, out.images))
    how = "one-step generator; --steps/--eta do not apply" if one_step else f"{sampler}, {steps} steps"
    print(f"wrote {len(out.images)} samples to {args.output} ({how}, NFE {out.nfe})")


def run_from_inversion(args):
    """Regenerate a ``diffkit invert`` file (exact reconstruction, or an edit) with its method's
    ``regenerate``, looked up in the one inversion table by the record's method."""
    import torch

    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import EpsModel
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.editing import decode_latent, make_condition
    from diffkit.pipelines.prompted import check_condition_args, require_latent_unet
    from diffkit.samplers.inversion_base import relative_error
    from diffkit.samplers.inversion_methods import load_record, method_of

    result = load_record(args.from_inversion)
    method = method_of(result)
    result.check_steps(args.steps)
    extra = result.settings.get("extra", {})
    model_dir = args.model or extra.get("model")
    if not model_dir:
        raise ValueError("--model is required: the inversion file does not name its model")
    pipe = load_pipeline(model_dir)
    kind = check_condition_args(pipe, labels=args.labels, prompt=args.prompt or extra.get("prompt"))
    dtype = getattr(torch, result.settings.get("model_dtype", "float32"))
    if pipe.unet.dtype != dtype:
        pipe.unet.to(dtype)
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    scale = result.settings["guidance_scale"] if args.guidance is None else args.guidance
    if kind == "prompt":
        require_latent_unet(pipe, "sample --from-inversion")
        labels, prompt = None, args.prompt or extra.get("prompt")
        same = prompt == extra.get("prompt")
        cond = make_condition(pipe, prompt, result.batch_size, scale, "--prompt")
    else:
        labels = [int(x) for x in args.labels.split(",")] if args.labels else extra.get("labels")
        same = labels == extra.get("labels")
        if labels is None and scale != 1.0:
            raise ValueError(f"--guidance {scale} needs a class-conditional inversion; this one has no labels")
        cond = class_guidance(pipe.unet, labels, scale) if labels is not None else None
    latents = method.regenerate(model, result, cond)
    images = decode_latent(pipe, latents)
    save_grid(images, args.output, upscale=upscale(args, images))
    msg = (f"regenerated {len(latents)} image(s) from {args.from_inversion} ({method.title}, "
           f"NFE {result.regeneration_nfe})")
    if result.clean is not None and same:
        what = "latent " if getattr(pipe, "vae", None) is not None else ""
        msg += f"; {what}relative error vs the inverted input {relative_error(latents, result.clean):.3e}"
    print(f"{msg} -> {args.output}")
