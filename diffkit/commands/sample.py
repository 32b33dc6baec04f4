"""diffkit sample: draw images from a model folder with any registered sampler."""

from __future__ import annotations

NAME = "sample"
HELP = "sample images from a model folder (--model DIR --sampler NAME --steps N)"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model folder (diffkit pipeline, or a UNet2DModel) or asset name")
    p.add_argument("--sampler", default="ddim", help="registered sampler name (see --list-samplers)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--labels", default=None, help="comma-separated class labels (default: balanced 0..C-1)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="samples.png")
    p.add_argument("--upscale", type=int, default=4)


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [k % num_classes for k in range(n)]


def run(args):
    import torch

    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.registry import make_scheduler

    pipe = load_pipeline(args.model)
    pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    labels = None
    if getattr(pipe, "num_classes", 0):
        labels = [int(x) for x in args.labels.split(",")] if args.labels else balanced_labels(args.n, pipe.num_classes)
    out = pipe(class_labels=labels, batch_size=None if labels else args.n, num_inference_steps=args.steps,
               guidance_scale=args.guidance, eta=args.eta, seed=args.seed, output_type="pt")
    save_grid(out.images, args.output, upscale=args.upscale)
    print(f"wrote {len(out.images)} samples to {args.output} ({args.sampler}, {args.steps} steps, NFE {out.nfe})")
