"""The measurements of the GPU check (benchmarks/gpu/run.py is the launcher and documents them).

Imported by run.py only after it has made diffkit importable from the checkout and kept a broken
xformers out of the process; every section writes rows into one :class:`Report`.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from diffkit.attention import enable_best, probe_xformers
from diffkit.conditioning import Condition, Guidance
from diffkit.denoisers import EpsModel
from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.models.radd import RADDTransformer
from diffkit.pipelines import load_pipeline
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline
from diffkit.samplers.absorbing import expected_nfe
from diffkit.samplers.bdia import bdia_inverse_step, bdia_step, ddim_map
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.samplers.inversion import invert, inversion_window, regenerate, relative_error

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _results import write_results  # noqa: E402  (benchmarks/_results.py: every results file gets provenance)
from harness import (  # noqa: E402  (benchmarks/gpu/harness.py, beside this script)
    GAMMA, GUIDANCE, ROWS, RT_GUIDANCE, SD15_SCHEDULER, Ctx, Report, atomic_write_text, environment, rel_diff, table)


def section_attention(ctx: Ctx):
    torch, rep, clock, s = ctx.torch, ctx.report, ctx.clock, ctx.sizes
    unet, z, t, ehs = ctx.unet()
    with warnings.catch_warnings():  # the fallback is reported in the table instead
        warnings.simplefilter("ignore")
        choice = enable_best(unet)
    why = choice.reason
    if ctx.xformers_hidden:  # kept out of this process before diffusers was imported
        why = f"xformers installed but {ctx.xformers_hidden}; hidden from this process"
    rep.add("attention.choice", "enable_best(unet) backend", choice.backend, note=why)

    def fwd():
        with torch.no_grad():
            return unet(z, t, encoder_hidden_states=ehs, return_dict=False)[0]

    shape = f"{ctx.dname}, latent {s.latent}², CFG batch 2"
    enable_best(unet, prefer="sdpa")
    times = clock.repeat(fwd, 2, s.fwd_reps, s.caps["attention"])
    ref = fwd()
    ms = 1e3 * statistics.median(times)
    rep.add("attention.sdpa.forward_ms", "UNet forward, SDPA", ms, "ms",
            note=f"{shape}; median of {len(times)}; output std {float(ref.float().std()):.3g}")
    rep.add("attention.sdpa.peak_mem_gib", "peak memory, SDPA", clock.peak_gib(fwd), "GiB",
            note="n/a on CPU" if not clock.cuda else "")

    usable, reason = probe_xformers(ctx.device, ctx.dtype)
    if ctx.xformers_hidden:
        reason = f"installed but {ctx.xformers_hidden}"
    if usable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = enable_best(unet, prefer="xformers")
            if got.backend != "xformers":
                usable, reason = False, got.reason
            else:
                xt = clock.repeat(fwd, 2, s.fwd_reps, s.caps["attention"])
                out = fwd()
                xms = 1e3 * statistics.median(xt)
                rep.add("attention.xformers.forward_ms", "UNet forward, xformers", xms, "ms",
                        note=f"{shape}; median of {len(xt)}; SDPA/xformers time {ms / xms:.3f}")
                rep.add("attention.xformers.peak_mem_gib", "peak memory, xformers", clock.peak_gib(fwd), "GiB")
                d = rel_diff(out, ref)
                rep.add("attention.xformers.rel_diff", "‖xformers − SDPA‖ / ‖SDPA‖", d, goal="≤ 1e-2", met=d <= 1e-2)
        except Exception as e:  # a kernel that fails at this size is a fallback, not a crash
            usable, reason = False, f"xformers failed at SD size: {type(e).__name__}: {e}"
        finally:
            enable_best(unet, prefer="sdpa")
    if not usable:
        for rid, metric in (("attention.xformers.forward_ms", "UNet forward, xformers"),
                            ("attention.xformers.peak_mem_gib", "peak memory, xformers"),
                            ("attention.xformers.rel_diff", "‖xformers − SDPA‖ / ‖SDPA‖")):
            rep.rows.pop(rid, None)
            rep.add(rid, metric, None, status="fallback", note=f"xformers unusable ({reason}); SDPA used")


def section_repeat(ctx: Ctx):
    torch, rep = ctx.torch, ctx.report
    unet, z, t, ehs = ctx.unet()
    with torch.no_grad():
        outs = [unet(z, t, encoder_hidden_states=ehs, return_dict=False)[0] for _ in range(3)]
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    diff = max(float((outs[0].float() - o.float()).abs().max()) for o in outs[1:])
    rep.add("repeat.bitwise", f"{ctx.dname} UNet forward bitwise repeatable (3 calls)", same, goal="yes", met=same,
            note=f"max abs difference {diff:.3g}")


def section_bdia(ctx: Ctx):
    torch, rep, clock, s = ctx.torch, ctx.report, ctx.clock, ctx.sizes
    unet, z2, _, ehs = ctx.unet()
    ddim = DDIMScheduler(**SD15_SCHEDULER)
    scheds = {"ddim": ddim, "bdia": BDIADDIMScheduler.from_config(ddim.config, gamma=GAMMA)}
    n = s.loop_steps

    # step alone: model output precomputed, the whole grid of calls timed at once
    g = ctx.generator(2)
    x = torch.randn(1, 4, s.latent, s.latent, generator=g, device=ctx.device, dtype=ctx.dtype)
    eps = torch.randn(x.shape, generator=g, device=ctx.device, dtype=ctx.dtype)

    def steps_only(sched):
        sched.set_timesteps(n, device=ctx.device)
        zz = x
        for tt in sched.timesteps:
            zz = sched.step(eps, tt, zz, return_dict=False)[0]
        return zz

    step_us = {}
    for name, sched in scheds.items():
        times = clock.repeat(lambda: steps_only(sched), 1, 3, 10.0)
        step_us[name] = 1e6 * statistics.median(times) / n
        rep.add(f"bdia.step_us.{name}", f"{name.upper()} scheduler.step", step_us[name], "µs",
                note=f"latent (1, 4, {s.latent}, {s.latent}) {ctx.dname}; mean over {n} steps, median of {len(times)}")

    # the sampling loop: UNet (CFG batch 2) + guidance + step, as a pipeline runs it without VAE/text encoder
    def loop(sched, steps=n):
        sched.set_timesteps(steps, device=ctx.device)
        zz = x
        with torch.no_grad():
            for tt in sched.timesteps:
                out = unet(torch.cat([zz, zz]), tt, encoder_hidden_states=ehs, return_dict=False)[0]
                u, c = out.chunk(2)
                zz = sched.step(u + GUIDANCE * (c - u), tt, zz, return_dict=False)[0]
        return zz

    for sched in scheds.values():  # warm-up
        loop(sched, 3)
    clock.sync()
    loop_s = {"ddim": [], "bdia": []}
    t0 = time.perf_counter()
    for _ in range(s.loop_pairs):
        for name in ("ddim", "bdia", "bdia", "ddim"):  # A-B-B-A: a linear drift cancels in the medians
            loop_s[name].append(clock.time(lambda: loop(scheds[name]))[0])
        if time.perf_counter() - t0 > s.caps["bdia_loop"]:
            break
    med = {k: statistics.median(v) for k, v in loop_s.items()}
    reps = len(loop_s["ddim"])
    for name in ("ddim", "bdia"):
        rep.add(f"bdia.loop_s.{name}", f"{n}-step loop, {name.upper()}", med[name], "s",
                note=f"UNet CFG batch 2 + step, guidance {GUIDANCE}; median of {reps} (A-B-B-A)")
    ratio = med["bdia"] / med["ddim"]
    rep.add("bdia.loop_ratio", "BDIA/DDIM loop wall time", ratio, goal="≤ 1.02", met=ratio <= 1.02)
    share = step_us["bdia"] * 1e-6 / (med["bdia"] / n)
    rep.add("bdia.step_share", "BDIA step share of a loop step", 100 * share, "%", goal="≤ 2 %", met=share <= 0.02,
            note=f"step µs / (BDIA loop s / {n}); loop step {1e3 * med['bdia'] / n:.3g} ms")

    # exact-inversion round trip: invert a random 'clean' latent, regenerate, compare
    model = EpsModel(unet, ddim.config)
    cond = Guidance(cond=Condition(encoder_hidden_states=ehs[1:]), uncond=Condition(encoder_hidden_states=ehs[:1]),
                    scale=RT_GUIDANCE)
    clean = torch.randn(1, 4, s.latent, s.latent, generator=ctx.generator(3), device=ctx.device, dtype=torch.float64)
    k = s.rt_steps
    t_rt, res = clock.time(lambda: invert(model, clean, cond, steps=k, gamma=GAMMA))
    t_rg, back = clock.time(lambda: regenerate(model, res, cond))
    err = relative_error(back, clean)
    rep.add("bdia.roundtrip.state64", f"round trip rel. error, {ctx.dname} UNet + float64 state", err,
            goal="≤ 1e-10", met=err <= 1e-10,
            note=f"{k} steps, γ {GAMMA}, guidance {RT_GUIDANCE}; invert {t_rt:.2f} s, regenerate {t_rg:.2f} s")
    t32, err32 = clock.time(lambda: round_trip_low_precision_state(model, clean, cond, k, GAMMA, torch.float32))
    rep.add("bdia.roundtrip.state32", f"round trip rel. error, {ctx.dname} UNet + float32 state", err32,
            note=f"same grid and model; {t32:.2f} s")


def round_trip_low_precision_state(model, clean, guidance, steps, gamma, state_dtype):
    """The round trip of ``invert`` + ``regenerate`` with the state held in ``state_dtype``.

    Same grid, first DDIM-inversion step and BDIA recurrence (the pure functions of
    :mod:`diffkit.samplers.bdia`); only the latents that carry the state are rounded to
    ``state_dtype`` -- which is what float64 state avoids. Returns the relative error."""
    window = inversion_window(model.schedule, steps)
    n = len(window)
    ac = [float(model.schedule.alpha_cumprod(t)) for t in window] + [float(model.schedule.final_alpha_cumprod)]
    with torch.no_grad():
        z_lower = clean.to(state_dtype)
        eps, x0 = model.predict(z_lower, 0, guidance)
        z = ddim_map(x0, eps, ac[n - 1])
        for k in range(n - 1, 0, -1):
            eps, x0 = model.predict(z, window[k], guidance)
            z, z_lower = bdia_inverse_step(z_lower, z, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), z
        z_upper, z = z, z_lower
        for k in range(1, n):
            eps, x0 = model.predict(z, window[k], guidance)
            z, z_upper = bdia_step(z_upper, z, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), z
    return relative_error(z, clean)


def section_radd(ctx: Ctx):
    torch, rep, clock, s = ctx.torch, ctx.report, ctx.clock, ctx.sizes
    ctx.drop_unet()
    cfg = s.radd
    # bf16 autocast as the official RADD; RADDTransformer only autocasts on CUDA
    autocast = "bfloat16" if ctx.device.type == "cuda" else "float32"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = RADDTransformer(**cfg, dropout=0.0, autocast_dtype=autocast)
    with torch.no_grad():  # the official output layer starts at zero (uniform conditionals): randomise it
        w = model.output_layer.linear.weight
        w.normal_(0.0, 2.0 / math.sqrt(2 * cfg["hidden_size"]), generator=ctx.generator(4))
    model = model.eval().requires_grad_(False)
    pipe = DiscreteDiffusionPipeline.from_model(model)
    L, V = cfg["length"], cfg["vocab_size"]
    arch = f"H {cfg['hidden_size']}, {cfg['n_blocks']} blocks, L {L}, V {V}, {autocast}"

    fwd = {}
    for label, _, B in s.radd_runs:
        ids = torch.randint(0, V, (B, L), generator=ctx.generator(5), device=ctx.device)

        def call(ids=ids):  # bound now: the loop rebinds and deletes ``ids``
            with torch.no_grad():
                return model(ids)

        times = clock.repeat(call, 2, s.radd_fwd_reps, s.caps["radd_fwd"])
        fwd[label] = statistics.median(times)
        rep.add(f"radd.forward_ms.{label}", f"RADD forward, batch {B}", 1e3 * fwd[label], "ms",
                note=f"{arch}; median of {len(times)}")
        del ids

    pipe(batch_size=1, num_inference_steps=8, output_type="ids", seed=0)  # warm-up of the sampler's kernels
    for label, n, B in s.radd_runs:
        t, out = clock.time(lambda: pipe(batch_size=B, num_inference_steps=n, output_type="ids", seed=0))
        law = expected_nfe(n, L)
        rep.add(f"radd.{label}.cached_s", f"cached sampler, n = {n}, batch {B}", t, "s",
                note=f"one run; {out.forward_calls} network calls")
        rep.add(f"radd.{label}.nfe", f"NFE per sample, n = {n}, batch {B}", float(out.nfe),
                note=f"law n(1-(1-1/n)^L) = {law:.1f}")
        unc = n * fwd[label]
        rep.add(f"radd.{label}.uncached_s", f"uncached estimate n × forward, n = {n}, batch {B}", unc, "s")
        rep.add(f"radd.{label}.speedup", f"cache speed-up, n = {n}, batch {B}", unc / t, "×",
                note=f"ideal n / E-NFE = {n / law:.2f}×")
        del out


def section_disback(ctx: Ctx):
    rep, clock, s = ctx.report, ctx.clock, ctx.sizes
    ctx.drop_unet()
    rid, metric = "disback.steps_per_s", f"DisBack generator steps/s, batch {s.disback_batch}"
    teacher = load_pipeline(s.disback_teacher)
    unet, sched_cfg = teacher.unet, dict(teacher.scheduler.config)
    with tempfile.TemporaryDirectory(prefix="diffkit-gpu-disback-") as tmp:
        try:  # the trainer is finished elsewhere: an API that is not there is 'unavailable', not an error
            cfg = DisBackConfig(mode="vanilla", max_steps=10**6, batch_size=s.disback_batch, fake_updates=1,
                                checkpoint_every=0, progress=False)
            tr = DisBackTrainer(unet, sched_cfg, cfg, tmp, cpu=ctx.device.type == "cpu")
            tr.fit(stop_at=0)  # sets up Stage 2 (vanilla mode has no Stage 1)
            step = tr.train_step
        except (ImportError, AttributeError, TypeError) as e:
            rep.add(rid, metric, None, status="unavailable",
                    note=f"DisBackTrainer API not there: {type(e).__name__}: {e}")
            return
        times = clock.repeat(step, s.disback_warmup, s.disback_steps, s.caps["disback"])
    med = statistics.median(times)
    params = sum(p.numel() for p in unet.parameters())
    rep.add(rid, metric, 1 / med, "steps/s",
            note=f"{s.disback_teacher} ({params / 1e6:.2f} M params), vanilla Stage 2, 1 fake update; "
                 f"median of {len(times)} ({1e3 * med:.1f} ms/step)")


SECTIONS = [("attention", section_attention), ("repeat", section_repeat), ("bdia", section_bdia),
            ("radd", section_radd), ("disback", section_disback)]


def run_checks(args, hidden: str | None, t_start: float) -> int:
    """Run the chosen sections, print the table, write ``--out`` / ``--results-md``."""
    report = Report()
    env = environment(torch.device(args.device), args.tiny, hidden)
    print(f"diffkit GPU check ({'tiny' if args.tiny else 'real sizes'}) on {env['card']}; torch {env['torch']}, "
          f"CUDA {env['cuda']}, driver {env['driver']}, diffusers {env['diffusers']}, xformers {env['xformers']}; "
          f"{env['date']}", flush=True)
    ctx = Ctx(args, report)
    ctx.xformers_hidden = hidden
    for name, fn in SECTIONS:
        if name not in args.only:
            continue
        t0 = time.perf_counter()
        if t0 - t_start > args.budget:
            report.fill(name, "skipped", f"time budget of {args.budget:.0f} s spent")
            report.sections[name] = dict(status="skipped", seconds=0.0)
            continue
        try:
            fn(ctx)
            status, error = "ok", None
        except Exception as e:  # one section's failure becomes error rows; the others still run
            status, error = "error", f"{type(e).__name__}: {e}"
            report.fill(name, "error", error[:300])
        finally:
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        report.sections[name] = dict(status=status, seconds=round(dt, 2), error=error)
        print(f"  [{name}: {status}, {dt:.1f} s]" + (f" {error}" if error else ""), flush=True)
    if ctx.device.type == "cuda":
        env["peak_mem_gib_total"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    total = time.perf_counter() - t_start
    env["total_s"] = round(total, 1)

    text = table(report)
    print()
    print(text)
    print(f"\ntotal {total:.1f} s" + ("  (tiny sizes: goals apply to the CUDA run)" if args.tiny else ""))
    if args.out:
        data = json.loads(json.dumps(dict(env=env, sections=report.sections, rows=report.ordered(),
                                          expected_rows=ROWS), default=str))
        write_results(data, args.out, script=str(Path(__file__).with_name("run.py")))
    if args.results_md:
        if args.tiny or ctx.device.type != "cuda":
            print(f"(--results-md {args.results_md} not written: only a CUDA run at real sizes goes there)")
        else:
            atomic_write_text(args.results_md, markdown(env, text))
    return 0


def markdown(env: dict, text: str) -> str:
    head = (f"# GPU check results\n\nWritten by `benchmarks/gpu/run.py` ({env['date']}).\n\n"
            f"- card: {env['card']} ({env.get('memory_gib', '?')} GiB), driver {env['driver']}\n"
            f"- torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, diffusers {env['diffusers']}, "
            f"xformers {env['xformers']}\n- total wall time {env['total_s']} s\n\n")
    return head + text + "\n"
