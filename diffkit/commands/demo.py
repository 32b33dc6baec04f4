"""diffkit demo: the main job -- every capability on the shipped models, offline, on CPU.

Steps come from command modules that define ``demo_step(ctx)`` (ordered by
``DEMO_ORDER``); each writes PNGs into the output folder and adds lines to the report.
"""

from __future__ import annotations

import os
import time

from diffkit.atomic import write_text_atomically
from diffkit.commands._demo import DemoContext, demo_teacher
from diffkit.commands._outputs import check_output_dir

NAME = "demo"
HELP = "run every capability on the shipped models (offline, CPU) and write PNGs + report.md"
DEMO_ORDER = 0


def add_arguments(p):
    p.add_argument("--output", default="demo-output")
    p.add_argument("--only", default=None, help="comma-separated step names to run")
    p.add_argument("--quick", action="store_true", help="smaller sizes (used by tests)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the shipped models are small, and extra threads only "
                        "spin when the cores are shared)")


def demo_step(ctx: DemoContext):
    """Sampling: DDIM on the digits teacher if shipped, else on a tiny random UNet (the one driver)."""
    from diffkit.images import save_grid
    from diffkit.sampling import generate

    pipe, what = demo_teacher()
    steps = 10 if ctx.quick else 50
    t0 = time.perf_counter()
    out = generate(pipe, None, steps=steps, n=20, seed=0)  # labels k % C, noise from (0, k)
    dt = time.perf_counter() - t0
    path = save_grid(out.images, ctx.path("samples_ddim.png"), nrow=10, upscale=4)
    ctx.say(f"- DDIM-{steps} sampling on {what}: 20 images in {dt:.2f} s -> `{os.path.basename(path)}`")


def run(args):
    from diffkit.cli import command_modules

    check_output_dir(args.output, "--output")
    os.makedirs(args.output, exist_ok=True)
    ctx = DemoContext(args.output, quick=args.quick)
    only = set(args.only.split(",")) if args.only else None
    ctx.say("# diffkit demo report")
    ctx.say()
    steps = sorted((getattr(m, "DEMO_ORDER", 100), m.NAME, m) for m in command_modules() if hasattr(m, "demo_step"))
    t_all = time.perf_counter()
    for _, name, mod in steps:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        mod.demo_step(ctx)
        ctx.say(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
    ctx.say()
    ctx.say(f"Total: {time.perf_counter() - t_all:.1f} s")
    write_text_atomically(ctx.path("report.md"), "\n".join(ctx.report) + "\n")
    print(f"wrote {ctx.path('report.md')}")
