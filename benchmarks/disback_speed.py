"""DisBack trainer throughput: generator steps per second at a given batch and fake-update ratio.

One Stage-2 generator step costs ``F`` fake-score updates (a generator forward + a fake
forward/backward each) plus the generator update (generator forward/backward, one fake
and one target forward); one Stage-1 step costs a generator forward and a fake
forward/backward. Timings are wall-clock medians over ``--steps`` steps after
``--warmup`` steps, on the machine and thread count printed with the table (mode
``vanilla``: Stage 2 costs the same in every mode; Stage 1 is timed separately).

    diffkit bench disback_speed --threads 1            # digits teacher, batch 32, F = 1 and 5
    diffkit bench disback_speed --quick --json X.json  # tiny random UNet, seconds; CI

Full size writes benchmarks/results/disback_speed.json (``--quick`` writes only to ``--json``);
about 1 CPU-minute on this 2-core machine with 1 thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffkit.commands.train_teacher import SCHEDULER
from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.distill.generator import GeneratorSource
from diffkit.pipelines import load_pipeline
from diffkit.testing import tiny_unet2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, write_results  # noqa: E402  (sibling module of the scripts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random UNet, few steps (CI smoke run)")
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fake-updates", default="1,5", help="comma-separated fake updates per generator step")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 10; quick 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/disback_speed.json; --quick: none)")
    a = p.parse_args(argv)
    a.json = a.json or default_json("disback_speed", a.quick)
    return a


def _teacher(args):
    if args.quick:
        return tiny_unet2d(num_classes=10), SCHEDULER, "tiny_unet2d (random)", False
    pipe = load_pipeline(args.teacher)
    return pipe.unet, dict(pipe.scheduler.config), str(args.teacher), True


def _timed_steps(fn, warmup, steps):
    """(median wall seconds, median process CPU seconds) per call.

    On a shared machine the CPU time of a 1-thread run is the better estimate of the wall
    time the step would take with the core to itself."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 10)
    unet, sched, name, verify = _teacher(args)
    params = sum(p.numel() for p in unet.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in [int(v) for v in args.fake_updates.split(",")]:
            cfg = DisBackConfig(mode="vanilla", max_steps=10**6, batch_size=args.batch_size, fake_updates=f,
                                checkpoint_every=0, progress=False, verify_teacher=verify)
            tr = DisBackTrainer(unet, sched, cfg, os.path.join(tmp, f"f{f}"), cpu=True)
            tr.fit(stop_at=0)
            t, c = _timed_steps(tr.train_step, args.warmup, steps)
            rows.append({"stage": 2, "fake_updates": f, "s_per_step": t, "steps_per_s": 1 / t, "cpu_s_per_step": c})
        # Stage 1: the Trainer's step on frozen-G⁰ samples (same loss as the fake score)
        src = GeneratorSource(tr._g0(), tr.shape, tr.n_classes, 0, "bench")
        loss = tr._score_loss("bench")
        fake = tr.fake_unwrapped
        opt = torch.optim.AdamW(fake.parameters(), lr=1e-6)
        k = [0]

        def stage1_step():
            idx = torch.arange(k[0] * args.batch_size, (k[0] + 1) * args.batch_size)
            k[0] += 1
            loss(fake, src(idx), idx, 0).backward()
            opt.step()
            opt.zero_grad()

        t, c = _timed_steps(stage1_step, args.warmup, steps)
        rows.append({"stage": 1, "fake_updates": None, "s_per_step": t, "steps_per_s": 1 / t, "cpu_s_per_step": c})
    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    print(f"DisBack throughput: teacher {name} ({params / 1e6:.2f} M parameters), batch {args.batch_size}, "
          f"median of {steps} steps; {machine}")
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    print(f"(1-min load average at the end: {load}; CPU s/step = process CPU time per step)")
    print(f"{'stage':>5} {'fake updates':>12} {'s/step':>8} {'steps/s':>8} {'CPU s/step':>10}")
    for r in rows:
        fu = "-" if r["fake_updates"] is None else str(r["fake_updates"])
        print(f"{r['stage']:>5} {fu:>12} {r['s_per_step']:>8.3f} {r['steps_per_s']:>8.2f} {r['cpu_s_per_step']:>10.3f}")
    if args.json:
        write_results({"teacher": name, "parameters": params, "batch_size": args.batch_size, "steps": steps,
                       "warmup": args.warmup, "machine": machine, "load_average": load, "rows": rows},
                      args.json, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
