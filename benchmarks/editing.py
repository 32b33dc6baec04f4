"""Editing by inversion: BDIA-DDIM vs EDICT vs DDIM inversion (round trip, quality, edits, overhead).

    diffkit bench editing                   # full sizes -> benchmarks/results/editing.json
    python benchmarks/editing.py --quick    # CI sizes, well under a minute (--json PATH to keep it)

Full size: about 6 min of CPU (357 s user + system; 46 min of wall time under a load of ~14 from
other jobs) on one thread of the 2-core x86_64 machine (parts headline,
round_trip, equal_nfe, strength; fid and overhead run only when --only names them: the README's
BDIA-vs-DDIM quality and overhead figures come from benchmarks/digits_quality.py and
benchmarks/bdia_overhead.py).

Tables (markdown, printed; the JSON holds every row):
0. Headline round trip at 50 steps, BDIA γ 0.94 (float64 state, the library loop) vs DDIM inversion
   + DDIM, float32 and bfloat16 models: digits teacher (16 test digits, guidance 1 and 3), tiny SD
   and tiny SDXL (random weights, one random image, "a photo of a cat", guidance 3).
1. Round trip (invert, regenerate with the same condition), latent relative L2 error, for BDIA
   γ ∈ {0.9, 0.94, 1.0}, EDICT (p = 0.93) and DDIM inversion, at 10/20/50 steps, model dtype
   float32/bfloat16 × state dtype float64/float32, on the digits teacher (test digits, their
   labels, guidance 1) and the tiny SD pipeline (random image, a prompt, guidance 3), with
   model evaluations (NFE, inversion + regeneration) and wall time. BDIA's float32-state rows
   run the same pure functions (``diffkit.samplers.bdia``) with float32 latents -- the library
   loop keeps the state in float64.
2. Equal model evaluations: BDIA at 2N steps vs EDICT at N steps (round trip and edit metrics).
3. Sampling quality: FID-digits (diffkit.metrics.digits protocol) of DDIM vs BDIA γ ∈ {0.5,
   0.75, 1.0} at 10/20/50 steps from the same noise (class-balanced labels).
4. Edit strength sweep on digits: test digits inverted under their label, regenerated under
   (label + 5) mod 10; the feature net's target-class accuracy and the mean per-image L2 change
   in [-1, 1] pixels, for BDIA, EDICT and DDIM inversion.
5. Overhead: BDIA vs DDIM sampling-loop wall time on the digits teacher at batch ≥ 64, and
   scheduler ``step`` time in µs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.conditioning import class_guidance, prompt_guidance
from diffkit.data import digits_tensors
from diffkit.denoisers import EpsModel
from diffkit.metrics.digits import balanced_labels, classify, fid_digits, load_reference_stats, sample_digits
from diffkit.pipelines import load_pipeline
from diffkit.pipelines.editing import edit, encode_image
from diffkit.samplers.bdia import bdia_inverse_step, bdia_step, ddim_map
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.samplers.inversion_base import inversion_window, relative_error, window_levels
from diffkit.samplers.inversion_methods import get_inversion_method
from diffkit.testing import tiny_sd_pipeline, tiny_sdxl_pipeline


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"thread(s), torch {torch.__version__}")


def table(title, header, rows=()):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        row(r)


def row(r):
    print("| " + " | ".join(_fmt(v) for v in r) + " |", flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.3g}"
    return str(v)


# ---------------------------------------------------------------------- models
def digits_setup(n):
    pipe = load_pipeline("digits-unet")
    pipe.set_progress_bar_config(disable=True)
    x, y = digits_tensors("test")
    x, y = x[:n], y[:n]
    return pipe, x.to(torch.float64), class_guidance(pipe.unet, y, 1.0), y


def sd_setup(n, xl=False):
    pipe = tiny_sdxl_pipeline() if xl else tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    img = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = encode_image(pipe, img)
    return pipe, z, prompt_guidance(pipe, "a photo of a cat", guidance_scale=3.0, height=size, width=size)


def records(header, rows):
    """Table rows as JSON records keyed by the column names."""
    return [dict(zip(header, r)) for r in rows]


# ---------------------------------------------------------------------- round trips
@torch.no_grad()
def bdia_round_trip(model, z, g, steps, gamma, state_dtype, strength=1.0):
    """(reconstruction, NFE). float64: the library loops; float32: the same pure functions in float32."""
    if state_dtype == torch.float64:
        bdia = get_inversion_method("bdia")
        r = bdia.invert(model, z, g, steps=steps, strength=strength, gamma=gamma)
        return bdia.regenerate(model, r, g), r.settings["nfe"] + r.regeneration_nfe
    window = inversion_window(model.schedule, steps, strength)
    ac = window_levels(model.schedule, window)
    n = len(window)
    pred = lambda zz, t: model.predict(zz, torch.tensor(t), g)  # noqa: E731
    lo = z.to(state_dtype)
    eps, x0 = pred(lo, 0)
    cur = ddim_map(x0, eps, ac[n - 1])
    for k in range(n - 1, 0, -1):
        eps, x0 = pred(cur, window[k])
        cur, lo = bdia_inverse_step(lo, cur, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), cur
    up, cur = cur, lo
    for k in range(1, n):
        eps, x0 = pred(cur, window[k])
        cur, up = bdia_step(up, cur, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), cur
    return cur, 2 * n - 1


def round_trip(method, model, z, g, steps, state_dtype, cfg):
    if method.startswith("bdia"):
        return bdia_round_trip(model, z, g, steps, float(method.split("=")[1]), state_dtype)
    entry = get_inversion_method(method)
    r = entry.invert(model, z, g, steps=steps, strength=1.0, scheduler_config=cfg, state_dtype=state_dtype)
    return entry.regenerate(model, r, g), r.settings["nfe"] + r.regeneration_nfe


METHODS = ["bdia γ=0.9", "bdia γ=0.94", "bdia γ=1.0", "edict", "ddim-inversion"]


def bench_headline(args, out):
    """50 steps, γ 0.94, float64 state: BDIA's library loop vs DDIM inversion + DDIM, per model and dtype."""
    header = ["model", "guidance", "model dtype", "steps", "bdia", "ddim-inversion"]
    table(f"Round trip at {args.headline_steps} steps, BDIA γ=0.94 (float64 state) vs DDIM inversion + DDIM",
          header)
    setups = []
    if "digits" in args.models:
        pipe, z, _, y = digits_setup(args.n_digits)
        setups += [(f"digits teacher, {len(y)} test digits", pipe, z, class_guidance(pipe.unet, y, w), w)
                   for w in (1.0, 3.0)]
    if "sd" in args.models:
        setups.append(("tiny SD", *sd_setup(1), 3.0))
        setups.append(("tiny SDXL", *sd_setup(1, xl=True), 3.0))
    rows = []
    for name, pipe, z, g, w in setups:
        for mdt in args.model_dtypes:
            pipe.unet.to(getattr(torch, mdt))
            model = EpsModel(pipe.unet, pipe.scheduler.config)
            errs = []
            for m in ("bdia=0.94", "ddim-inversion"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rec, _ = round_trip(m, model, z, g, args.headline_steps, torch.float64, pipe.scheduler.config)
                errs.append(relative_error(rec, z))
            rows.append([name, w, mdt, args.headline_steps, *errs])
            row(rows[-1])
        pipe.unet.to(torch.float32)
    out["headline"] = records(header, rows)


def bench_round_trip(args, out):
    rows = []
    table(f"Round trip: latent relative L2 error, {args.n_digits} test digits / one tiny-SD image "
          "(invert + regenerate, same condition)",
          ["model", "steps", "model dtype", "state dtype", "method", "rel. error", "NFE", "wall s"])
    setups = []
    if "digits" in args.models:
        setups.append(("digits", *digits_setup(args.n_digits)[:3]))
    if "sd" in args.models:
        setups.append(("tiny SD", *sd_setup(1)))
    for name, pipe, z, g in setups:
        for mdt in args.model_dtypes:
            pipe.unet.to(getattr(torch, mdt))
            model = EpsModel(pipe.unet, pipe.scheduler.config)
            for steps in args.steps:
                for sdt in ("float64", "float32"):
                    for m in METHODS:
                        t0 = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            rec, nfe = round_trip(m.replace("γ", "gamma").replace("bdia gamma", "bdia"), model, z, g,
                                                  steps, getattr(torch, sdt), pipe.scheduler.config)
                        rows.append([name, steps, mdt, sdt, m, relative_error(rec, z), nfe,
                                     time.perf_counter() - t0])
                        row(rows[-1])
        pipe.unet.to(torch.float32)
    out["round_trip"] = records(["model", "steps", "model dtype", "state dtype", "method", "rel. error", "NFE",
                                 "wall s"], rows)


# ---------------------------------------------------------------------- editing
def edit_metrics(pipe, x, y, method, steps, strength, gamma=0.94):
    target = (y + 5) % 10
    options = {"gamma": gamma} if method == "bdia" else {}
    t0 = time.perf_counter()
    r = edit(pipe, x.float(), y, target, steps=steps, strength=strength, method=method, reconstruct=True, **options)
    dt = time.perf_counter() - t0
    acc = float((classify(r.image) == target.numpy()).mean())
    l2 = float((r.image - r.source_image).flatten(1).norm(dim=1).mean())
    return acc, l2, r.latent_error, r.nfe["inversion"] + r.nfe["regeneration"], dt


def bench_equal_nfe(args, out):
    pipe, x, _, y = digits_setup(args.n_edit)
    rows = []
    for n in args.equal_nfe:
        for method, steps in (("bdia", 2 * n), ("edict", n), ("ddim-inversion", 2 * n)):
            acc, l2, err, nfe, dt = edit_metrics(pipe, x, y, method, steps, 0.8)
            rows.append([method, steps, nfe, err, acc, l2, dt])
    header = ["method", "steps", "NFE (inv + edit)", "round-trip error", "target acc.", "L2 change", "wall s"]
    table(f"Equal model evaluations on digits (strength 0.8, {len(y)} test digits, target = label + 5 mod 10; "
          "error = reconstruction with source = target)", header, rows)
    out["equal_nfe"] = records(header, rows)


def bench_strength(args, out):
    pipe, x, _, y = digits_setup(args.n_edit)
    rows = []
    for s in args.strengths:
        for method in ("bdia", "edict", "ddim-inversion"):
            acc, l2, err, nfe, dt = edit_metrics(pipe, x, y, method, args.edit_steps, s)
            rows.append([s, method, acc, l2, err, nfe])
    header = ["strength", "method", "target acc.", "L2 change", "round-trip error", "NFE"]
    table(f"Edit strength sweep on digits ({args.edit_steps} steps, {len(y)} test digits, target = label + 5 mod 10, "
          "guidance 1, BDIA γ 0.94)", header, rows)
    out["strength"] = records(header, rows)


# ---------------------------------------------------------------------- quality
def bench_fid(args, out):
    pipe = digits_setup(1)[0]
    ref = load_reference_stats()
    labels = balanced_labels(args.fid_n)
    base = pipe.scheduler.config
    rows = []
    for steps in args.fid_steps:
        row = [steps]
        for gamma in (0.0, 0.5, 0.75, 1.0):
            pipe.scheduler = (DDIMScheduler.from_config(base) if gamma == 0
                              else BDIADDIMScheduler.from_config(base, gamma=gamma))
            imgs = sample_digits(pipe, labels, seed=0, steps=steps, batch_size=500)
            row.append(fid_digits(imgs, reference=ref, kid_subsets=10).fid)
        rows.append(row)
    pipe.scheduler = DDIMScheduler.from_config(base)
    header = ["steps", "DDIM", "BDIA γ=0.5", "BDIA γ=0.75", "BDIA γ=1.0"]
    table(f"FID-digits, same noise (seed 0), n = {args.fid_n} class-balanced, guidance 1", header, rows)
    out["fid"] = records(header, rows)


# ---------------------------------------------------------------------- overhead
def bench_overhead(args, out):
    pipe = digits_setup(1)[0]
    base = pipe.scheduler.config
    labels = torch.arange(args.batch) % 10
    rows = []
    for steps in args.overhead_steps:
        times = {}
        for name in ("ddim", "bdia", "ddim", "bdia"):  # interleaved; best of the repeats
            pipe.scheduler = DDIMScheduler.from_config(base) if name == "ddim" else \
                BDIADDIMScheduler.from_config(base, gamma=0.94)
            for _ in range(args.reps):
                t0 = time.perf_counter()
                pipe(class_labels=labels, num_inference_steps=steps, seed=0, output_type="pt", progress=False)
                times[name] = min(times.get(name, 1e9), time.perf_counter() - t0)
        rows.append([steps, args.batch, times["ddim"], times["bdia"], times["bdia"] / times["ddim"]])
    pipe.scheduler = DDIMScheduler.from_config(base)
    header = ["steps", "batch", "DDIM", "BDIA γ=0.94", "ratio"]
    table("Sampling-loop wall time on the digits teacher (best of repeats, s)", header, rows)
    out["overhead_loop"] = records(header, rows)

    srows = []
    for shape in ((args.batch, 1, 8, 8), (1, 4, 64, 64)):
        sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        res = []
        for cls in (DDIMScheduler, BDIADDIMScheduler):
            s = cls.from_config(base) if cls is DDIMScheduler else cls.from_config(base, gamma=0.94)
            s.set_timesteps(50)
            best = 1e9
            for _ in range(3):
                s.set_timesteps(50)
                z = sample
                t0 = time.perf_counter()
                for t in s.timesteps:
                    z = s.step(eps, t, z, return_dict=False)[0]
                best = min(best, (time.perf_counter() - t0) / len(s.timesteps))
            res.append(best * 1e6)
        srows.append([str(tuple(shape)), res[0], res[1], res[1] / res[0]])
    header = ["sample shape", "DDIM", "BDIA γ=0.94", "ratio"]
    table("Scheduler step time (µs per call, float32 sample, 50-step loop, best of 3)", header, srows)
    out["overhead_step"] = records(header, srows)


PARTS = ("headline", "round_trip", "equal_nfe", "strength", "fid", "overhead")
DEFAULT_PARTS = ("headline", "round_trip", "equal_nfe", "strength")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI sizes (well under a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--only", default=None, help=f"comma list of: {','.join(PARTS)} (default: "
                   f"{','.join(DEFAULT_PARTS)})")
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/editing.json for a full "
                   "run through `diffkit bench editing`; none for --quick)")
    ints = lambda v: [int(x) for x in v.split(",")]  # noqa: E731
    floats = lambda v: [float(x) for x in v.split(",")]  # noqa: E731
    p.add_argument("--steps", type=ints, default=None, help="round-trip step counts (default 10,20,50)")
    p.add_argument("--headline-steps", type=int, default=None, help="steps of the headline table (default 50)")
    p.add_argument("--model-dtypes", type=lambda v: v.split(","), default=None, help="default float32,bfloat16")
    p.add_argument("--models", type=lambda v: v.split(","), default=["digits", "sd"],
                   help="round-trip models: digits (the teacher), sd (tiny SD; tiny SDXL too in the headline)")
    p.add_argument("--n-digits", type=int, default=None, help="test digits in the round-trip tables (default 16)")
    p.add_argument("--equal-nfe", type=ints, default=None, help="EDICT step counts N (BDIA/DDIM run 2N; default 25)")
    p.add_argument("--n-edit", type=int, default=None, help="test digits edited (default 100)")
    p.add_argument("--edit-steps", type=int, default=None, help="steps of the strength sweep (default 20)")
    p.add_argument("--strengths", type=floats, default=None, help="default 0.5,0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--fid-steps", type=ints, default=None, help="default 10,20,50")
    p.add_argument("--fid-n", type=int, default=None, help="FID sample count, a multiple of 10 (default 1000)")
    p.add_argument("--overhead-steps", type=ints, default=None, help="default 10,50")
    p.add_argument("--batch", type=int, default=None, help="batch of the overhead table (>= 64; default 256)")
    p.add_argument("--reps", type=int, default=None, help="repeats of the overhead table (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        sizes = dict(steps=[5], headline_steps=5, model_dtypes=["float32"], n_digits=2, equal_nfe=[3], n_edit=10,
                     edit_steps=6, strengths=[0.5, 1.0], fid_steps=[5], fid_n=50, overhead_steps=[5], batch=64, reps=1)
    else:
        sizes = dict(steps=[10, 20, 50], headline_steps=50, model_dtypes=["float32", "bfloat16"], n_digits=16,
                     equal_nfe=[25], n_edit=100, edit_steps=20, strengths=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                     fid_steps=[10, 20, 50], fid_n=1000, overhead_steps=[10, 50], batch=256, reps=3)
    for k, v in sizes.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    only = args.only.split(",") if args.only else list(DEFAULT_PARTS)
    bad = sorted(set(only) - set(PARTS))
    if bad:
        raise SystemExit(f"--only: unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    settings = {k: getattr(args, k) for k in sizes}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"# editing benchmark ({'quick' if args.quick else 'full'}) on {machine()}")
    out = {"quick": args.quick, "parts": only, "settings": settings, "models": args.models}
    t_all = time.perf_counter()
    for name, fn in (("headline", bench_headline), ("round_trip", bench_round_trip), ("equal_nfe", bench_equal_nfe),
                     ("fid", bench_fid), ("strength", bench_strength), ("overhead", bench_overhead)):
        if name in only:
            fn(args, out)
    out["total_s"] = time.perf_counter() - t_all
    print(f"\ntotal {out['total_s']:.1f} s")
    save_results(json.loads(json.dumps(out, default=str)), "editing", json_path=args.json, quick=args.quick,
                 script=__file__, argv=argv)


if __name__ == "__main__":
    main()
