"""diffkit fid: FID (and KID) of image folders, a model + sampler, or cached statistics.

One process: ``diffkit fid samples/ --ref digits-train``. Many (GPUs or CPU processes):
``accelerate launch --num_processes 8 -m diffkit.cli fid --model DIR --sampler ddim --n 50000
--ref ref_stats.npz``; sampling and feature extraction are split by global sample index and
only the main process prints and writes.
"""

from __future__ import annotations

import json
import os

from diffkit.atomic import write_text_atomically
from diffkit.checks import count_arg
from diffkit.commands._outputs import check_output_file

NAME = "fid"
HELP = "FID/KID of image folders, a model + sampler, or cached stats (clean-fid, torchmetrics or diffkit backend)"
DEMO_ORDER = 80


def add_arguments(p):
    p.add_argument("gen", nargs="?", help="generated images: an image folder or a stats .npz (or use --model)")
    src = p.add_argument_group("model + sampler (instead of GEN)")
    src.add_argument("--model", help="model folder (diffkit pipeline or UNet2DModel) or asset name, e.g. digits-unet")
    src.add_argument("--sampler", default=None,
                     help="registered sampler name (see --list-samplers); default: the model's own (its pipeline's "
                          "scheduler; a one-step generator takes no other)")
    budget = src.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=count_arg(1), default=None, help="default 50 (a one-step generator: 1)")
    budget.add_argument("--nfe", type=count_arg(1), default=None,
                        help="model evaluations instead of --steps (Heun-type samplers: 2N-1 per N steps)")
    src.add_argument("--gamma", type=float, default=None, help="BDIA γ in [0, 1] (= --option gamma=G)")
    src.add_argument("--option", action="append", default=None, metavar="NAME=VALUE",
                     help="a sampler option, checked against the sampler's declared ones (--list-samplers); repeatable")
    src.add_argument("--guidance", type=float, default=1.0)
    src.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--ref", help="reference: an image folder, a stats .npz, or digits-train (the shipped digits "
                                 "train-split statistics)")
    p.add_argument("--n", type=count_arg(1), default=None, help="number of generated images (required with --model)")
    p.add_argument("--n-ref", type=count_arg(1), default=None, help="number of reference images (default: all)")
    p.add_argument("--backend", choices=("clean-fid", "torchmetrics", "diffkit"), default=None,
                   help="default: clean-fid for Inception features, diffkit otherwise")
    p.add_argument("--features", default=None,
                   help="inception | digits | package.module:factory (an nn.Module); default: digits when the "
                        "reference was made with it, else inception")
    p.add_argument("--inception-weights", default=None,
                   help="your copy of the Inception weights (file or folder): inception-2015-12-05.pt for clean-fid, "
                        "weights-inception-2015-12-05-6726825d.pth for torchmetrics; nothing is downloaded")
    p.add_argument("--no-antialias", action="store_true", help="torchmetrics Inception: TF1-compatible resize")
    p.add_argument("--kid", action="store_true", help="also report KID (diffkit's seeded estimator)")
    p.add_argument("--kid-subsets", type=count_arg(1), default=100)
    p.add_argument("--kid-subset-size", type=count_arg(2), default=1000)
    p.add_argument("--batch-size", type=count_arg(1), default=64)
    p.add_argument("--seed", type=int, default=0, help="base seed of the model's per-sample noise and KID subsets")
    p.add_argument("--device", default=None, help="default: this process's accelerate device")
    p.add_argument("--save-stats", default=None, help="write the generated set's statistics to this .npz "
                                                      "(without --ref: only compute and save them)")
    p.add_argument("--with-features", action="store_true", help="store the features in --save-stats (for KID)")
    p.add_argument("--json", default=None, help="write the result records as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-samplers", action="store_true", help="list the registered samplers and exit")


def _gen_source(args):
    from diffkit.metrics import ModelSamples
    from diffkit.sampling import parse_options

    options = parse_options(args.option, args.gamma)
    if (options or args.nfe is not None) and not args.model:
        raise ValueError("--gamma/--option/--nfe set the sampler of --model; give --model")
    if args.model and args.gen:
        raise ValueError("give either GEN (a folder or stats .npz) or --model, not both")
    if args.model:
        if args.n is None:
            raise ValueError("--n (the number of samples to draw) is required with --model")
        return ModelSamples(args.model, args.sampler, args.steps, args.guidance, args.eta, options=options,
                            nfe=args.nfe)
    if not args.gen:
        raise ValueError("nothing to evaluate: give GEN (an image folder or stats .npz) or --model DIR")
    return args.gen


def run(args):
    from diffkit.metrics import compute_stats, save_stats
    from diffkit.metrics.fid import evaluate
    from diffkit.metrics.sharding import shard_info
    from diffkit.registry import describe_samplers

    if args.list_samplers:
        print("\n".join(describe_samplers()))
        return 0
    gen = _gen_source(args)
    check_output_file(args.json, "--json")
    check_output_file(args.save_stats, "--save-stats")
    main = shard_info().is_main
    common = dict(backend=args.backend, features=args.features, batch_size=args.batch_size, seed=args.seed,
                  inception_weights=args.inception_weights, antialias=not args.no_antialias, device=args.device,
                  progress=not args.no_progress)
    if args.ref is None:
        if not args.save_stats:
            raise ValueError("--ref is required (an image folder, a stats .npz or digits-train), unless --save-stats "
                             "only caches the statistics of GEN")
        st = compute_stats(gen, n=args.n, **common)
        if main:
            save_stats(st, args.save_stats, include_features=args.with_features)
            print(f"wrote statistics of n={st.n} images ({st.protocol.get('feature_extractor')}, "
                  f"d={st.dim}) to {args.save_stats}")
        return 0
    metrics = ("fid", "kid") if args.kid else ("fid",)
    results, g, _ = evaluate(gen, args.ref, metrics, n=args.n, n_ref=args.n_ref, num_subsets=args.kid_subsets,
                             subset_size=args.kid_subset_size, **common)
    if not main:
        return 0
    for r in results:
        print(r)
    if args.save_stats:
        save_stats(g, args.save_stats, include_features=args.with_features)
        print(f"wrote statistics of the generated set to {args.save_stats}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_text_atomically(args.json, json.dumps([r.to_dict() for r in results], indent=2, default=str))
    return 0


def demo_step(ctx):
    """FID-digits of the teacher's samples when the digits assets exist; else backend agreement on PNG folders."""
    import tempfile
    import time

    import torch

    from diffusers import DDIMScheduler

    from diffkit.assets import AssetError
    from diffkit.data import digits_tensors
    from diffkit.metrics import ModelSamples, compute_fid
    from diffkit.metrics.fid import resolve_reference
    from diffkit.metrics.folders import save_image_folder
    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline
    from diffkit.testing import tiny_unet2d

    n, steps = (100, 10) if ctx.quick else (200, 20)
    t0 = time.perf_counter()
    try:
        resolve_reference("digits-train")
        pipe = load_pipeline("digits-unet")
        pipe.set_progress_bar_config(disable=True)
        r = compute_fid(ModelSamples(pipe, "ddim", steps=steps), "digits-train", n=n)
        x, y = digits_tensors("test")
        floor = compute_fid(torch.cat([x[y == c][: n // 10] for c in range(10)]), "digits-train")
        ctx.say(f"- FID-digits vs the train split at n={n} (n_ref={r.n_ref}): DDIM-{steps} teacher samples "
                f"{r.value:.3f}, held-out test digits {floor.value:.3f} (the floor at this n; FID grows as n "
                f"shrinks) in {time.perf_counter() - t0:.1f} s")
        return
    except (AssetError, ValueError) as e:
        why = str(e).split(";")[0]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 16, 16)).eval()
    pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10), DDIMScheduler())
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in (("a", 0), ("b", 1)):
            imgs = ModelSamples(pipe, "ddim", steps=steps, seed=seed).build("cpu").images(list(range(n)), seed)
            save_image_folder(imgs, os.path.join(tmp, name))
        vals = {be: compute_fid(os.path.join(tmp, "a"), os.path.join(tmp, "b"), backend=be, features=net).value
                for be in ("clean-fid", "torchmetrics", "diffkit")}
    ctx.say(f"- FID backends on the same PNG folders (tiny random UNet, random 16-d CNN features, n={n}; digits "
            f"assets not available: {why}): " + ", ".join(f"{k} {v:.6g}" for k, v in vals.items())
            + f" in {time.perf_counter() - t0:.1f} s")
