"""BDIA-DDIM vs DDIM: scheduler step cost, sampling-loop wall time, and inversion round-trip error.

    python benchmarks/bdia_overhead.py [--quick] [--device cuda] [--json results.json]
    diffkit bench bdia_overhead --quick

Tables:
1. ``step`` alone (model output precomputed), µs per call: DDIMScheduler vs BDIADDIMScheduler
   (γ = 0.94; float32 latents, float64 state and shadow) at SD latent sizes.
2. A full tiny-SD pipeline call (CFG, VAE decode included), wall time and the BDIA/DDIM ratio.
3. Round trip (invert, then regenerate) at 50 steps on the tiny SD UNet, guidance 3: BDIA with
   float64 state (float32 / bfloat16 model) next to DDIM inversion + DDIM sampling (the
   approximation diffusers' ``DDIMInverseScheduler`` makes: ε at the less noisy latent, target
   label) for calibration.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_step(device, sizes, reps):
    from diffusers import DDIMScheduler

    from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
    from diffkit.testing import tiny_ddim_scheduler

    cfg = tiny_ddim_scheduler().config
    rows = []
    for shape in sizes:
        x = torch.randn(*shape, device=device)
        eps = torch.randn(*shape, device=device)
        res = {}
        for name, sched in (("ddim", DDIMScheduler.from_config(cfg)),
                            ("bdia", BDIADDIMScheduler.from_config(cfg, gamma=0.94))):
            best = math.inf
            for _ in range(3):
                sched.set_timesteps(50, device=device)
                z = x
                ts = sched.timesteps
                _sync(device)
                t0 = time.perf_counter()
                for k in range(min(reps, len(ts))):
                    z = sched.step(eps, ts[k], z, return_dict=False)[0]
                _sync(device)
                best = min(best, (time.perf_counter() - t0) / min(reps, len(ts)))
            res[name] = best * 1e6
        rows.append({"shape": list(shape), "ddim_us": res["ddim"], "bdia_us": res["bdia"],
                     "ratio": res["bdia"] / res["ddim"]})
    return rows


def bench_pipeline(device, steps, reps):
    from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
    from diffkit.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline().to(device)
    pipe.set_progress_bar_config(disable=True)
    ddim = pipe.scheduler
    res = {}
    for name, sched in (("ddim", ddim), ("bdia", BDIADDIMScheduler.from_config(ddim.config, gamma=0.94))):
        pipe.scheduler = sched
        pipe("a cat", num_inference_steps=2, output_type="pt")  # warm-up
        best = math.inf
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            pipe("a cat", num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0))
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        res[name] = best
    return {"steps": steps, "ddim_s": res["ddim"], "bdia_s": res["bdia"], "ratio": res["bdia"] / res["ddim"]}


def ddim_inversion_round_trip(model, latent, cond, steps):
    """DDIM inversion (ε at the cleaner latent, evaluated with the target label) + DDIM sampling."""
    from diffkit.samplers.bdia import ddim_map

    sched = model.schedule
    ts = [int(t) for t in sched.timesteps(steps)]
    ac = [float(sched.alpha_cumprod(t)) for t in ts] + [float(sched.final_alpha_cumprod)]
    z = latent.to(torch.float64)
    for k in range(steps - 1, -1, -1):  # from level k+1 (cleaner) to level k
        eps, _ = model.predict(z, torch.tensor(ts[k]), cond)
        x0 = (z - math.sqrt(1 - ac[k + 1]) * eps) / math.sqrt(ac[k + 1])
        z = ddim_map(x0, eps, ac[k])
    for k in range(steps):
        eps, x0 = model.predict(z, torch.tensor(ts[k]), cond)
        z = ddim_map(x0, eps, ac[k + 1])
    return float((z - latent).norm() / latent.norm())


def bench_round_trip(device, steps):
    from diffkit.conditioning import prompt_guidance
    from diffkit.denoisers import EpsModel
    from diffkit.samplers.inversion import invert, regenerate, relative_error
    from diffkit.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline().to(device)
    cond = prompt_guidance(pipe, "a photo of a cat", guidance_scale=3.0)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    with torch.no_grad():
        latent = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = EpsModel(copy.deepcopy(pipe.unet).to(dtype), pipe.scheduler.config)
        t0 = time.perf_counter()
        res = invert(model, latent, cond, steps=steps, gamma=0.94)
        t_inv = time.perf_counter() - t0
        t0 = time.perf_counter()
        err = relative_error(regenerate(model, res, cond), latent)
        t_reg = time.perf_counter() - t0
        rows.append({"method": "BDIA γ=0.94, float64 state", "model_dtype": str(dtype).replace("torch.", ""),
                     "rel_error": err, "invert_s": t_inv, "regenerate_s": t_reg})
        with torch.no_grad():
            rows.append({"method": "DDIM inversion + DDIM", "model_dtype": str(dtype).replace("torch.", ""),
                         "rel_error": ddim_inversion_round_trip(model, latent, cond, steps)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (CI)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    sizes = [(1, 4, 64, 64)] if args.quick else [(1, 4, 64, 64), (4, 4, 64, 64), (1, 4, 128, 128)]
    steps_rows = bench_step(args.device, sizes, reps=20 if args.quick else 50)
    print(f"## scheduler.step, µs per call ({args.device}; model output precomputed)\n")
    print("| latent shape | DDIM | BDIA γ=0.94 | ratio |\n|---|---|---|---|")
    for r in steps_rows:
        print(f"| {tuple(r['shape'])} | {r['ddim_us']:.1f} | {r['bdia_us']:.1f} | {r['ratio']:.2f} |")

    pipe_row = bench_pipeline(args.device, steps=5 if args.quick else 50, reps=1 if args.quick else 3)
    print(f"\n## tiny SD pipeline call, {pipe_row['steps']} steps, guidance 7.5, best of runs ({args.device})\n")
    print("| DDIM s | BDIA s | BDIA/DDIM |\n|---|---|---|")
    print(f"| {pipe_row['ddim_s']:.3f} | {pipe_row['bdia_s']:.3f} | {pipe_row['ratio']:.2f} |")

    rt_steps = 10 if args.quick else 50
    rt_rows = bench_round_trip(args.device, rt_steps)
    print(f"\n## round trip on the tiny SD UNet, {rt_steps} steps, guidance 3 ({args.device})\n")
    print("| method | model dtype | relative error | invert s | regenerate s |\n|---|---|---|---|---|")
    for r in rt_rows:
        ti = f"{r['invert_s']:.2f}" if "invert_s" in r else "—"
        tr = f"{r['regenerate_s']:.2f}" if "regenerate_s" in r else "—"
        print(f"| {r['method']} | {r['model_dtype']} | {r['rel_error']:.2e} | {ti} | {tr} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "step": steps_rows, "pipeline": pipe_row, "round_trip": rt_rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
