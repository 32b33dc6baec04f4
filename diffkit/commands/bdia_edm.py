"""diffkit sample-edm: sample a model folder with a functional EDM / BDIA sampler.

The k-diffusion-style samplers of ``diffkit.samplers.edm`` (EDM Euler/Heun, BDIA-Euler/Heun)
on the model's own trained σ range (Karras grid, ρ = 7), with the NFE budget given directly.
Class-conditional models take ``--labels``; saved Stable Diffusion (XL) pipeline folders take
``--prompt`` (sampled in latent space, decoded by the VAE).
"""

from __future__ import annotations

from diffkit.checks import IMAGE_OUTPUT_HELP, check_count, count_arg, image_path_arg

from ._outputs import check_output_file

NAME = "sample-edm"
HELP = "sample a model folder with EDM Euler/Heun or BDIA-Euler/Heun (--sampler, --nfe, --gamma)"
DEMO_ORDER = 30

SAMPLERS = ("edm-euler", "edm-heun", "bdia-euler", "bdia-heun")


def add_arguments(p):
    p.add_argument("--model", required=True, help="model folder (diffkit pipeline or UNet2DModel) or asset name")
    p.add_argument("--sampler", default="bdia-euler", choices=SAMPLERS)
    p.add_argument("--nfe", type=count_arg(1), default=17,
                   help="model evaluations: Euler-type samplers take NFE steps, Heun-type (NFE+1)/2")
    p.add_argument("--gamma", type=float, default=0.5, help="BDIA γ in [0, 1] (0 = the plain sampler)")
    p.add_argument("--gamma-mode", default="vp", choices=("vp", "constant"))
    p.add_argument("--rho", type=float, default=7.0)
    p.add_argument("--churn", type=float, default=0.0, help="EDM S_churn (edm-euler/edm-heun only)")
    p.add_argument("--n", type=count_arg(1), default=20, help="number of images")
    p.add_argument("--labels", default=None, help="comma-separated class labels (default: balanced 0..C-1)")
    p.add_argument("--prompt", default=None, help="text prompt, for Stable Diffusion (XL) pipeline folders")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="keep the sampler state in float64 (as EDM does)")
    p.add_argument("--output", default="samples_edm.png", type=image_path_arg, help=IMAGE_OUTPUT_HELP)
    p.add_argument("--upscale", type=count_arg(1), default=None,
                   help="PNG upscale factor (default: 4 for images <= 64 px, else 1)")


def steps_for_nfe(sampler: str, nfe: int) -> int:
    nfe = check_count(nfe, "nfe")
    return nfe if sampler.endswith("euler") else max(1, (nfe + 1) // 2)  # Heun: 2N - 1 <= NFE


def generate(pipe, sampler: str, nfe: int, labels=None, n: int = 16, gamma: float = 0.5, gamma_mode: str = "vp",
             guidance: float = 1.0, seed: int = 0, rho: float = 7.0, churn: float = 0.0, dtype=None, prompt=None):
    """(images in [-1, 1], NFE used) from a diffusion pipeline's UNet and schedule (not a one-step generator).
    ``prompt`` (Stable Diffusion (XL) pipelines): sampled in latent space and decoded by the VAE."""
    import torch

    from diffkit.conditioning import Guidance, class_guidance
    from diffkit.denoisers import Denoiser, EpsModel
    from diffkit.pipelines.editing import decode_latent, make_condition
    from diffkit.pipelines.one_step import require_diffusion_model
    from diffkit.pipelines.prompted import require_latent_unet
    from diffkit.samplers import edm
    from diffkit.seeding import randn_for_indices

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    require_diffusion_model(pipe, "sample-edm (EDM/BDIA samplers on the model's σ grid)")
    require_latent_unet(pipe, "sample-edm")
    if labels is not None and not len(labels):
        raise ValueError("labels: at least one label is needed, got 0")
    n = len(labels) if labels is not None else check_count(n, "n")
    D = Denoiser(EpsModel(pipe.unet, pipe.scheduler.config))
    sigmas = edm.model_sigmas(D, steps_for_nfe(sampler, nfe), rho=rho)
    cfg = pipe.unet.config
    if prompt is not None:
        guide = make_condition(pipe, prompt, n, guidance, "prompt")
    else:
        guide = class_guidance(pipe.unet, labels, guidance) if labels is not None else Guidance()
    x = randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), range(n), seed) * sigmas[0]
    kw = {"dtype": dtype, "return_nfe": True, "disable": True}
    if sampler.startswith("bdia"):
        kw.update(gamma=gamma, gamma_mode=gamma_mode)
    elif churn > 0:
        kw.update(s_churn=churn, generator=torch.Generator().manual_seed(seed))
    fn = edm.SAMPLERS[sampler]
    with torch.no_grad():
        out, used = fn(D, x.to(pipe.unet.dtype), sigmas, {"guidance": guide}, **kw)
    return decode_latent(pipe, out), used  # pixel models: the sample itself, clamped to [-1, 1]


def run(args):
    import torch

    from diffkit.commands.sample import upscale
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.prompted import check_condition_args

    check_output_file(args.output, "--output")
    pipe = load_pipeline(args.model)
    check_condition_args(pipe, labels=args.labels, prompt=args.prompt)
    labels = None
    if getattr(pipe, "num_classes", 0):
        labels = ([int(x) for x in args.labels.split(",")] if args.labels
                  else [k % pipe.num_classes for k in range(args.n)])
    images, used = generate(pipe, args.sampler, args.nfe, labels, args.n, args.gamma, args.gamma_mode, args.guidance,
                            args.seed, args.rho, args.churn, torch.float64 if args.float64 else None, args.prompt)
    save_grid(images, args.output, upscale=upscale(args, images))
    extra = f", γ={args.gamma} {args.gamma_mode}" if args.sampler.startswith("bdia") else ""
    print(f"wrote {len(images)} samples to {args.output} ({args.sampler}{extra}, NFE {used})")


def demo_step(ctx):
    """EDM Heun vs BDIA-Euler at 17 NFE, and an exact BDIA-Euler inversion round trip."""
    import os
    import time

    import torch
    from diffusers import DDIMScheduler

    from diffkit.assets import AssetError
    from diffkit.conditioning import class_guidance
    from diffkit.denoisers import Denoiser, EpsModel
    from diffkit.images import save_grid
    from diffkit.pipelines import load_pipeline
    from diffkit.samplers import edm

    try:
        pipe = load_pipeline("digits-unet")
        what = "the digits teacher"
    except AssetError:
        from diffkit.pipelines.class_conditional import ClassConditionalPipeline
        from diffkit.testing import tiny_unet2d

        pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10), DDIMScheduler())
        what = "a tiny random-weight UNet (assets/digits-unet not available yet)"
    labels = [k % 10 for k in range(20)]
    for sampler, kw in (("edm-heun", {}), ("bdia-euler", {"gamma": 0.5, "gamma_mode": "vp"})):
        t0 = time.perf_counter()
        images, used = generate(pipe, sampler, 17, labels, **kw)
        path = save_grid(images, ctx.path(f"samples_{sampler.replace('-', '_')}_nfe17.png"), nrow=10, upscale=4)
        ctx.say(f"- {sampler} ({used} NFE) on {what}: 20 images in {time.perf_counter() - t0:.2f} s "
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
