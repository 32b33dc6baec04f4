"""BDIA-DDIM vs DDIM: scheduler step cost against its physical floor, sampling-loop wall time, and
inversion round-trip error.

    diffkit bench bdia_overhead            # full run -> benchmarks/results/bdia_overhead.json
    diffkit bench bdia_overhead --quick    # CI size (writes only to --json PATH)

Tables:
1. ``step`` alone (model output precomputed), µs per call, at SD latent sizes: DDIMScheduler,
   BDIADDIMScheduler (γ = 0.94; float32 latents, float64 state) in its steady state (every call
   after the first, DDIM-form, step), and two floors timed with the same harness:
   * ``floor_fused``: one fused pass (a ``torch.compile``d elementwise kernel) that reads exactly
     what a BDIA step must read -- the float32 model output, the float64 z_i and z_{i+1} -- and
     writes exactly what it must write: the float64 z_{i-1} (the next state), and the float32
     latents and x̂0 it hands back. The goal is ``step`` ≤ 1.5× this floor at every shape.
   * ``floor_eager``: the same reads and writes in the fewest eager kernels (4: an eager kernel
     reads at most two tensors, and each float32 output is its own cast), for scale.
   * ``floor_eager_exact``: the step's own arithmetic, rounding for rounding (so the same output
     bits), in the fewest eager kernels, into preallocated buffers, with no Python around them:
     the finite-check sum, the cast of ε to float64, ×√(1-ᾱ), −, ÷√ᾱ, ×γ, two scaled adds (each a
     fused multiply-add in eager PyTorch) and the two casts out -- 10 kernels, one per rounding or
     cast. ``step`` / this floor is what the step spends around its kernels; this floor / the
     fused one is what fusing would save, which eager kernels cannot do without changing the
     roundings (and so the outputs).
   DDIM's step is reported beside them (it moves float32 only, fewer bytes than BDIA must).
2. The denoising loop (``set_timesteps``, ``scale_model_input``, model, ``step``, as a pipeline
   runs it) with a stand-in model: a stack of 3×3 convolutions on the (1, 4, 64, 64) latent,
   calibrated at start to cost 10 ± 2 ms per call on one thread (its measured cost is recorded).
   DDIM and BDIA runs interleave (ABBA order); the BDIA/DDIM ratio of each pair, its median and
   IQR over ≥ 15 repeats. Goal: median ≤ 1.02.
3. Round trip (invert, then regenerate) on the tiny SD UNet, guidance 3: BDIA with float64 state
   (float32 / bfloat16 model) next to DDIM inversion + DDIM sampling (the approximation diffusers'
   ``DDIMInverseScheduler`` makes: ε at the less noisy latent, target label) for calibration.

Timing: the step and loop tables time this thread's CPU time (``time.thread_time``), so that on a
shared machine a run waiting for a core is not counted as work; the loop table also records wall
time. The machine's load average is recorded before and after each table (``load``). Full size measured with
1 torch thread on the 2-core machine: about 25 s idle (load average < 1), 27 s with ``--rounds 31`` under
a load average of ~7, 3.4 min under ~14 (``wall_time_s`` in the JSON). On a loaded machine take more
rounds (``--rounds``) rather than fewer: the ratios are medians of side-by-side timings.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, write_results  # noqa: E402

from diffkit.conditioning import prompt_guidance  # noqa: E402
from diffkit.denoisers import EpsModel  # noqa: E402
from diffkit.samplers.bdia import ddim_map  # noqa: E402
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler  # noqa: E402
from diffkit.samplers.inversion import invert, regenerate, relative_error  # noqa: E402
from diffkit.testing import tiny_ddim_scheduler, tiny_sd_pipeline  # noqa: E402

NAME = "bdia_overhead"
GAMMA = 0.94
STEP_GOAL = 1.5  # step / floor_fused
LOOP_GOAL = 1.02  # BDIA loop / DDIM loop
MODEL_MS = (8.0, 12.0)  # the stand-in model's cost per call


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clock(device="cpu") -> float:
    """This thread's CPU seconds on CPU (not the time spent waiting for a core); wall time on GPU."""
    return time.thread_time() if torch.device(device).type == "cpu" else time.perf_counter()


def load() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def quantiles(v) -> dict:
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": q[1], "q1": q[0], "q3": q[2], "iqr": q[2] - q[0], "n": len(v)}


# ---------------------------------------------------------------------------- 1. step vs floor
def _floor_pass(eps, z, z_next, gamma, c_x0, c_eps, s, a):
    """What a BDIA step must compute, as one expression: reads ε (float32), z_i, z_{i+1}
    (float64); writes z_{i-1} (float64) and the float32 latents and x̂0."""
    e = eps.to(torch.float64)
    x0 = (z - s * e) / a
    z_prev = z_next * gamma + c_x0 * x0 + c_eps * e
    return z_prev, z_prev.to(torch.float32), x0.to(torch.float32)


def _floor_eager(eps, z, z_next, gamma, c_x0, c_eps, s, a):
    """The same reads and writes in the fewest eager kernels (4): z_{i-1} = z_{i+1} + z_i (reads
    both, writes the state), += ε (reads the model output), then the two float32 outputs."""
    z_prev = torch.add(z_next, z)
    z_prev.add_(eps)
    return z_prev, z_prev.to(torch.float32), z.to(torch.float32)


def _floor_eager_exact(eps, z, z_next, gamma, c_x0, c_eps, s, a, work):
    """The step's own kernels, rounding for rounding: reads ε (float32), z_i, z_{i+1} (float64);
    writes z_{i-1} into z_{i+1}'s buffer and the float32 latents and x̂0. ``work``: two float64
    buffers (ε and x̂0). ``gamma``, ``c_x0``, ``c_eps``: Python floats, as the step passes them."""
    e, x0 = work
    math.isfinite(eps.sum())  # the finite check (one reduction, read on the host)
    e.copy_(eps)
    torch.mul(e, s, out=x0)
    torch.sub(z, x0, out=x0)
    x0.div_(a)
    x0_out = x0.to(torch.float32)
    z_prev = torch.mul(z_next, gamma, out=z_next)
    z_prev.add_(x0, alpha=c_x0)
    z_prev.add_(e, alpha=c_eps)
    return z_prev, z_prev.to(torch.float32), x0_out


def exact_floor_matches_step(shape=(2, 4, 16, 16)) -> bool:
    """Whether ``_floor_eager_exact`` computes what the step computes: fed a steady-state step's
    inputs (float64 latents, so that the state is what ``step`` hands back), its three outputs
    equal the step's bit for bit."""
    sched = BDIADDIMScheduler.from_config(tiny_ddim_scheduler().config, gamma=GAMMA)
    sched.set_timesteps(10)
    ts = sched.timesteps
    g = torch.Generator().manual_seed(1)
    outs = [torch.randn(*shape, generator=g) for _ in range(3)]
    states = [torch.randn(*shape, generator=g, dtype=torch.float64)]
    for k in range(2):
        states.append(sched.step(outs[k], ts[k], states[-1]).prev_sample)
    ac_n, ac, ac_p = (float(sched.alphas_cumprod[int(t)]) for t in ts[1:4])
    a_n, s_n, a_p, s_p = math.sqrt(ac_n), math.sqrt(1 - ac_n), math.sqrt(ac_p), math.sqrt(1 - ac_p)
    level = [torch.tensor(math.sqrt(v), dtype=torch.float64) for v in (1 - ac, ac)]
    work = [torch.empty_like(states[0]) for _ in range(2)]
    got = _floor_eager_exact(outs[2], states[2], states[1].clone(), GAMMA, a_p - GAMMA * a_n, s_p - GAMMA * s_n,
                             *level, work)
    ref = sched.step(outs[2], ts[2], states[2])
    want = (ref.prev_sample, ref.prev_sample.float(), ref.pred_original_sample.float())
    return all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got, want))


def _compiled_floor():
    try:
        fn = torch.compile(_floor_pass, dynamic=False)
        x = torch.zeros(2, 3)
        fn(x, x.double(), x.double(), *(torch.tensor(0.5, dtype=torch.float64),) * 5)
        return fn
    except Exception as e:  # no C++ compiler / inductor backend: report it, keep the eager floor
        print(f"torch.compile unavailable ({type(e).__name__}: {str(e)[:120]}); no fused floor")
        return None


def _time_steps(sched, eps, x, calls, device):
    """µs per steady-state call: ``calls`` steps after one untimed first step."""
    sched.set_timesteps(calls + 1, device=device)
    ts = sched.timesteps
    z = sched.step(eps, ts[0], x).prev_sample
    _sync(device)
    t0 = clock(device)
    for k in range(1, calls + 1):
        z = sched.step(eps, ts[k], z).prev_sample
    _sync(device)
    return (clock(device) - t0) / calls * 1e6


def _time_floor(fn, eps, z, z_next, scalars, calls, device):
    _sync(device)
    t0 = clock(device)
    for _ in range(calls):
        z_prev, _, _ = fn(eps, z, z_next, *scalars)
        z, z_next = z_prev, z  # the state moves on as in a loop
    _sync(device)
    return (clock(device) - t0) / calls * 1e6


def bench_step(device, sizes, rounds, calls, fused=True):
    cfg = tiny_ddim_scheduler().config
    floor = _compiled_floor() if fused else None
    rows = []
    for shape in sizes:
        g = torch.Generator().manual_seed(0)
        x, eps = (torch.randn(*shape, generator=g).to(device) for _ in range(2))
        z, z_next = (torch.randn(*shape, generator=g, dtype=torch.float64).to(device) for _ in range(2))
        scalars = [torch.tensor(v, dtype=torch.float64, device=device) for v in (GAMMA, 0.3, 0.2, 0.6, 0.8)]
        ddim, bdia = DDIMScheduler.from_config(cfg), BDIADDIMScheduler.from_config(cfg, gamma=GAMMA)
        # the exact floor writes its state in place: its own copies, reset before every timing
        own = [torch.empty_like(z) for _ in range(4)]
        exact_args = [GAMMA, 0.3, 0.2, *scalars[3:], own[2:]]

        def exact():
            own[0].copy_(z), own[1].copy_(z_next)
            return _time_floor(_floor_eager_exact, eps, own[0], own[1], exact_args, calls, device)

        timers = {"ddim": lambda: _time_steps(ddim, eps, x, calls, device),
                  "bdia": lambda: _time_steps(bdia, eps, x, calls, device),
                  "floor_eager": lambda: _time_floor(_floor_eager, eps, z, z_next, scalars, calls, device),
                  "floor_eager_exact": exact}
        if floor is not None:
            floor(eps, z, z_next, *scalars)  # compile for this shape outside the timing
            timers["floor_fused"] = lambda: _time_floor(floor, eps, z, z_next, scalars, calls, device)
        for fn in timers.values():  # warm-up
            fn()
        times = {k: [] for k in timers}
        for r in range(rounds):  # interleaved, order rotated per round
            names = list(timers)[r % len(timers):] + list(timers)[:r % len(timers)]
            for k in names:
                times[k].append(timers[k]())
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"shape": list(shape), "rounds": rounds, "calls_per_round": calls,
               **{f"{k}_us": med[k] for k in ("ddim", "bdia", "floor_eager", "floor_eager_exact")},
               "floor_fused_us": med.get("floor_fused"),
               "bdia_over_ddim": med["bdia"] / med["ddim"],
               "bdia_over_floor_eager": med["bdia"] / med["floor_eager"],
               "bdia_over_floor_eager_exact": med["bdia"] / med["floor_eager_exact"],
               "floor_eager_exact_over_floor_fused": (med["floor_eager_exact"] / med["floor_fused"]
                                                      if "floor_fused" in med else None),
               "bdia_over_floor_fused": med["bdia"] / med["floor_fused"] if "floor_fused" in med else None,
               "goal_bdia_over_floor_fused": STEP_GOAL}
        row["meets_goal"] = None if row["bdia_over_floor_fused"] is None else row["bdia_over_floor_fused"] <= STEP_GOAL
        names = ("ddim", "bdia", "floor_eager", "floor_eager_exact", "floor_fused")  # the same keys with --quick
        row["iqr_us"] = {k: quantiles(times[k])["iqr"] if k in times else None for k in names}
        rows.append(row)
        print(f"  {tuple(shape)}: " + ", ".join(f"{k} {v:.1f} µs" for k, v in med.items()), flush=True)
    return rows


# ---------------------------------------------------------------------------- 2. loop, stand-in model
class ConvStack(torch.nn.Module):
    """A stand-in denoiser: ``depth`` 3×3 convolutions (4 → width → … → 4) with SiLU between."""

    def __init__(self, depth: int, width: int = 32):
        super().__init__()
        chans = [4] + [width] * (depth - 1) + [4]
        self.layers = torch.nn.ModuleList(torch.nn.Conv2d(i, o, 3, padding=1) for i, o in zip(chans, chans[1:]))

    @torch.no_grad()
    def forward(self, x, t):
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = torch.nn.functional.silu(x)
        return x * 0.1


def _model_ms(model, x, n=5):
    model(x, 0)
    ts = []
    for _ in range(n):
        t0 = clock()
        model(x, 0)
        ts.append((clock() - t0) * 1e3)
    return statistics.median(ts)


def calibrated_model(x, target_ms=10.0, tries=4):
    """A ConvStack whose median cost per call is within MODEL_MS (re-measured, depth adjusted)."""
    torch.manual_seed(0)
    depth = 4
    for _ in range(tries):
        model = ConvStack(depth).eval()
        ms = _model_ms(model, x)
        if MODEL_MS[0] <= ms <= MODEL_MS[1]:
            break
        per_layer = ms / depth
        depth = max(2, round(target_ms / per_layer))
        torch.manual_seed(0)
    model = ConvStack(depth).eval()
    return model, depth, _model_ms(model, x, n=9)


def _loop(sched, model, x, steps):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


def bench_loop(steps, repeats, shape=(1, 4, 64, 64)):
    cfg = tiny_ddim_scheduler().config
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    model, depth, ms = calibrated_model(x)
    scheds = {"ddim": DDIMScheduler.from_config(cfg), "bdia": BDIADDIMScheduler.from_config(cfg, gamma=GAMMA)}
    for s in scheds.values():
        _loop(s, model, x, 2)  # warm-up
    cpu, wall = {"ddim": [], "bdia": []}, {"ddim": [], "bdia": []}
    for r in range(repeats):
        for k in (("ddim", "bdia") if r % 2 == 0 else ("bdia", "ddim")):  # ABBA
            t0, w0 = clock(), time.perf_counter()
            _loop(scheds[k], model, x, steps)
            cpu[k].append(clock() - t0)
            wall[k].append(time.perf_counter() - w0)
    ratio = quantiles([b / d for b, d in zip(cpu["bdia"], cpu["ddim"])])
    return {"shape": list(shape), "steps": steps, "repeats": repeats, "model": f"ConvStack(depth={depth}, width=32)",
            "model_ms_per_call": ms, "model_ms_per_call_after": _model_ms(model, x, n=9),
            "model_ms_goal": list(MODEL_MS),
            "ddim_s": quantiles(cpu["ddim"]), "bdia_s": quantiles(cpu["bdia"]), "ratio": ratio,
            "wall_ddim_s": quantiles(wall["ddim"]), "wall_bdia_s": quantiles(wall["bdia"]),
            "wall_ratio": quantiles([b / d for b, d in zip(wall["bdia"], wall["ddim"])]),
            "goal_ratio": LOOP_GOAL, "meets_goal": ratio["median"] <= LOOP_GOAL}


# ---------------------------------------------------------------------------- 3. round trip
def ddim_inversion_round_trip(model, latent, cond, steps):
    """DDIM inversion (ε at the cleaner latent, evaluated with the target label) + DDIM sampling."""
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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per shape of the step table (default 15, 5 with --quick); more "
                        "rounds steady the medians on a loaded machine")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved DDIM/BDIA loop pairs (default 15, 3 with --quick)")
    p.add_argument("--no-fused-floor", action="store_true", help="skip the torch.compile floor (always with --quick)")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/bdia_overhead.json "
                   "for a full run, none for --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    json_path = args.json or default_json(NAME, args.quick)
    t_all = time.perf_counter()
    res = {"device": args.device, "threads": args.threads, "gamma": GAMMA, "quick": args.quick,
           "cpu_count": os.cpu_count(), "load": {"start": load()}}

    sizes = [(1, 4, 64, 64)] if args.quick else [(1, 4, 64, 64), (4, 4, 64, 64), (1, 4, 128, 128)]
    print(f"## scheduler.step vs its floor, µs per call ({args.device}; model output precomputed)")
    rounds = args.rounds or (5 if args.quick else 15)
    res["exact_floor_matches_step"] = exact_floor_matches_step()
    res["step"] = bench_step(args.device, sizes, rounds=rounds, calls=10 if args.quick else 20,
                             fused=not (args.quick or args.no_fused_floor))
    res["load"]["after_step"] = load()
    print("\n| latent shape | DDIM | BDIA γ=0.94 | floor (fused) | floor (eager) | floor (eager, exact) "
          "| BDIA/floor (fused) | BDIA/floor (eager, exact) | BDIA/DDIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["step"]:
        ff = "—" if r["floor_fused_us"] is None else f"{r['floor_fused_us']:.1f}"
        rf = "—" if r["bdia_over_floor_fused"] is None else f"{r['bdia_over_floor_fused']:.2f}"
        print(f"| {tuple(r['shape'])} | {r['ddim_us']:.1f} | {r['bdia_us']:.1f} | {ff} | {r['floor_eager_us']:.1f} "
              f"| {r['floor_eager_exact_us']:.1f} | {rf} | {r['bdia_over_floor_eager_exact']:.2f} "
              f"| {r['bdia_over_ddim']:.2f} |")

    if args.device == "cpu":
        lp = bench_loop(steps=5 if args.quick else 20, repeats=args.repeats or (3 if args.quick else 15))
        res["loop"] = lp
        res["load"]["after_loop"] = load()
        print(f"\n## denoising loop, {lp['steps']} steps, stand-in {lp['model']} "
              f"({lp['model_ms_per_call']:.1f} ms per call), {lp['repeats']} interleaved repeats\n")
        print("| clock | DDIM s (median, IQR) | BDIA s (median, IQR) | BDIA/DDIM (median, IQR) | goal |")
        print("|---|---|---|---|---|")
        q = lambda d, p=3: f"{d['median']:.{p}f} ({d['iqr']:.{p}f})"  # noqa: E731
        print(f"| thread CPU | {q(lp['ddim_s'])} | {q(lp['bdia_s'])} | {q(lp['ratio'], 4)} | ≤ {LOOP_GOAL} |")
        print(f"| wall | {q(lp['wall_ddim_s'])} | {q(lp['wall_bdia_s'])} | {q(lp['wall_ratio'], 4)} | |")

    rt_steps = 10 if args.quick else 50
    res["round_trip"] = bench_round_trip(args.device, rt_steps)
    print(f"\n## round trip on the tiny SD UNet, {rt_steps} steps, guidance 3 ({args.device})\n")
    print("| method | model dtype | relative error | invert s | regenerate s |\n|---|---|---|---|---|")
    for r in res["round_trip"]:
        ti = f"{r['invert_s']:.2f}" if "invert_s" in r else "—"
        tr = f"{r['regenerate_s']:.2f}" if "regenerate_s" in r else "—"
        print(f"| {r['method']} | {r['model_dtype']} | {r['rel_error']:.2e} | {ti} | {tr} |")
    res["load"]["end"] = load()
    res["wall_time_s"] = time.perf_counter() - t_all
    if json_path:
        print(f"wrote {write_results(res, json_path, script=__file__)}")
    check_claims(res)


def check_claims(res):
    """The qualitative claims, with loose bounds (no timing: timings are not asserted): BDIA's
    float64-state round trip is exact to < 1e-10 where DDIM inversion is off by > 1e-3; the exact
    eager floor computes the step's outputs bit for bit."""
    assert res["exact_floor_matches_step"], "floor_eager_exact does not reproduce the step's outputs bit for bit"
    for r in res["round_trip"]:
        if r["method"].startswith("BDIA"):
            assert r["rel_error"] < 1e-10, f"BDIA round trip {r['rel_error']:.2e} ({r['model_dtype']}) is not < 1e-10"
        else:
            assert r["rel_error"] > 1e-3, f"DDIM inversion round trip {r['rel_error']:.2e} is not > 1e-3"


if __name__ == "__main__":
    main()
