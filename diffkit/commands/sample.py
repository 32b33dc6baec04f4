"""diffkit sample: draw images from a model folder with any registered image sampler.

Everything goes through the one driver, :func:`diffkit.sampling.generate`: ``--sampler`` names a
scheduler (swapped into the pipeline) or a function sampler (EDM Euler/Heun, BDIA-Euler/Heun on
the model's σ grid); the budget is ``--steps`` or ``--nfe`` (the entry's rule converts, Heun
2N - 1); sampler options come as ``--gamma`` / ``--option name=value``, checked against the
entry. Class-conditional models take ``--labels``; saved Stable Diffusion (XL) pipeline folders
take ``--prompt``. ``diffkit sample-edm`` is the same command with EDM defaults (``ALIASES``).
"""

from __future__ import annotations

from diffkit.checks import IMAGE_OUTPUT_HELP, count_arg, image_path_arg
from diffkit.commands._outputs import check_output_file

NAME = "sample"
HELP = "sample images from a model folder (--model DIR --sampler NAME --steps N | --nfe N, --gamma, --option)"
DEMO_ORDER = 30
EDM_HELP = ("`diffkit sample` with EDM defaults: --sampler bdia-euler (or edm-euler/edm-heun/bdia-heun), --nfe 17, "
            "--gamma 0.5")


def _common_arguments(p, output: str):
    p.add_argument("--n", type=count_arg(1), default=None, help="number of images (default 16; 20 for sample-edm)")
    p.add_argument("--labels", default=None, help="comma-separated class labels (default: sample k gets k %% C)")
    p.add_argument("--prompt", default=None, help="text prompt, for Stable Diffusion (XL) pipeline folders")
    p.add_argument("--option", action="append", default=None, metavar="NAME=VALUE",
                   help="a sampler option, checked against the sampler's declared ones (`diffkit sample "
                        "--list-samplers`); repeatable")
    p.add_argument("--float64", action="store_true", help="function samplers: keep the state in float64 (as EDM does)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=output, type=image_path_arg, help=IMAGE_OUTPUT_HELP)
    p.add_argument("--upscale", type=count_arg(1), default=None,
                   help="PNG upscale factor (default: 4 for images <= 64 px, else 1)")


def add_arguments(p):
    p.add_argument("--model", default=None,
                   help="model folder (diffkit pipeline, or a UNet2DModel) or asset name (required unless "
                        "--from-inversion names it)")
    p.add_argument("--sampler", default=None, help="a registered image sampler (see --list-samplers); default: the "
                   "model's own (its pipeline's scheduler; a one-step generator takes no other)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=count_arg(1), default=None, help="number of steps (default 50; with "
                        "--from-inversion: the inversion's, which it must equal)")
    budget.add_argument("--nfe", type=count_arg(1), default=None,
                        help="model evaluations instead of --steps (Heun-type samplers: 2N-1 per N steps)")
    p.add_argument("--gamma", type=float, default=None, help="BDIA γ in [0, 1] (= --option gamma=G)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's own, 1 for "
                   "class labels; with --from-inversion: the inversion's)")
    p.add_argument("--eta", type=float, default=0.0)
    _common_arguments(p, "samples.png")
    p.add_argument("--from-inversion", default=None, metavar="FILE",
                   help="regenerate from a `diffkit invert` file (BDIA-DDIM from its latent pair; other --labels edit)")
    p.add_argument("--list-samplers", action="store_true", help="list the registered samplers and exit")


def add_edm_arguments(p):
    p.add_argument("--model", required=True, help="model folder (diffkit pipeline or UNet2DModel) or asset name")
    p.add_argument("--sampler", default="bdia-euler", help="a registered image sampler (default bdia-euler)")
    p.add_argument("--nfe", type=count_arg(1), default=17,
                   help="model evaluations: Euler-type samplers take NFE steps, Heun-type (NFE+1)/2")
    p.add_argument("--gamma", type=float, default=None, help="BDIA γ in [0, 1] (default 0.5; 0 = the plain sampler)")
    p.add_argument("--gamma-mode", default=None, choices=("vp", "constant"), help="BDIA γ schedule (default vp)")
    p.add_argument("--rho", type=float, default=None, help="Karras grid ρ (default 7)")
    p.add_argument("--churn", type=float, default=None, help="EDM S_churn (edm-euler/edm-heun only)")
    p.add_argument("--guidance", type=float, default=1.0)
    _common_arguments(p, "samples_edm.png")


def upscale(args, images) -> int:
    """``--upscale``, else 4 for small images (the 8x8 digits) and 1 from 65 px up."""
    return args.upscale or (4 if images.shape[-1] <= 64 else 1)


def run_edm(args):
    """``diffkit sample-edm``: its flags as driver options, then ``diffkit sample``'s run."""
    pairs = list(args.option or [])
    for flag, name in (("gamma_mode", "gamma_mode"), ("rho", "rho"), ("churn", "s_churn")):
        if getattr(args, flag) is not None:
            pairs.append(f"{name}={getattr(args, flag)}")
    if args.gamma is None and args.sampler.startswith("bdia") and not any(p.startswith("gamma=") for p in pairs):
        args.gamma = 0.5
    args.option, args.steps, args.eta, args.from_inversion, args.list_samplers = pairs, None, 0.0, None, False
    args.n = 20 if args.n is None else args.n
    return run(args)


ALIASES = {"sample-edm": (EDM_HELP, add_edm_arguments, run_edm)}


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
    from diffkit.pipelines.prompted import check_condition_args, require_latent_unet
    from diffkit.sampling import generate, parse_options

    pipe = load_pipeline(args.model)
    kind = check_condition_args(pipe, labels=args.labels, prompt=args.prompt)
    if kind == "prompt":
        require_latent_unet(pipe, "sample")  # an inpainting UNet, refused before anything is drawn
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    n = 16 if args.n is None else args.n
    condition = args.prompt if kind == "prompt" else None
    if kind == "class" and args.labels:
        condition = [int(x) for x in args.labels.split(",")]
    out = generate(pipe, args.sampler, steps=args.steps, nfe=args.nfe, condition=condition,
                   n=None if kind == "class" and args.labels else n, seed=args.seed, guidance_scale=args.guidance,
                   eta=args.eta, options=parse_options(args.option, args.gamma),
                   dtype=torch.float64 if args.float64 else None)
    save_grid(out.images, args.output, upscale=upscale(args, out.images))
    if getattr(pipe, "one_step", False):
        how = "one-step generator; --steps/--eta do not apply"
    else:
        opts = parse_options(args.option, args.gamma)
        extra = "".join(f", {k}={v}" for k, v in opts.items())
        name = out.sampler.replace("own ", "the model's own ")
        how = f"{name}{extra}, {out.steps} steps"
    print(f"wrote {len(out.images)} samples to {args.output} ({type(pipe).__name__}, {how}, NFE {out.nfe})")


def demo_step(ctx):
    """EDM Heun vs BDIA-Euler at 17 NFE through the driver, and an exact BDIA-Euler inversion round trip."""
    import os
    import time

    import torch
    from diffkit.commands._demo import demo_teacher
    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import Denoiser, EpsModel
    from diffkit.images import save_grid
    from diffkit.samplers import edm
    from diffkit.sampling import generate

    pipe, what = demo_teacher()
    for sampler, opts in (("edm-heun", {}), ("bdia-euler", {"gamma": 0.5, "gamma_mode": "vp"})):
        t0 = time.perf_counter()
        out = generate(pipe, sampler, nfe=17, n=20, guidance_scale=1.0, options=opts)
        path = save_grid(out.images, ctx.path(f"samples_{sampler.replace('-', '_')}_nfe17.png"), nrow=10, upscale=4)
        ctx.say(f"- {sampler} ({out.nfe} NFE) on {what}: 20 images in {time.perf_counter() - t0:.2f} s "
                f"-> `{os.path.basename(path)}`")
    # exact inversion: a BDIA-Euler sample (γ = 1, float64 state) back to its noise, 18 steps
    unet = pipe.unet.double()
    try:
        D = Denoiser(EpsModel(unet, pipe.scheduler.config))
        sig = edm.model_sigmas(D, 18)
        extra = {"guidance": class_guidance(unet, [3, 7])}
        c, s = unet.config.in_channels, unet.config.sample_size
        x_T = torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sig[0]
        t0 = time.perf_counter()
        with torch.no_grad():
            pair = edm.sample_bdia_euler(D, x_T, sig, extra, disable=True, gamma=1.0, return_pair=True)
            x0, _ = edm.invert_bdia_euler(D, pair, sig, extra, disable=True, gamma=1.0)
        err = float((x0 - x_T).abs().max() / x_T.abs().max())
        ctx.say(f"- BDIA-Euler exact inversion (18 steps, γ = 1, float64): sample -> noise relative error "
                f"{err:.1e} ({time.perf_counter() - t0:.2f} s)")
    finally:
        unet.float()


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
