"""GPU check of diffkit at real scale, in one short run (≤ 2.5 min on one H100/H200-class GPU).

    bash benchmarks/gpu/run.sh --wheel-dir wheels --out gpu.json --results-md RESULTS.md   # CUDA
    python benchmarks/gpu/run.py --tiny --out tiny.json                                  # CPU, toy sizes, < 1 min

Random-weight models built from configs (nothing is downloaded), one table printed and the same
rows written as JSON (``--out``) and, on CUDA at real sizes, as markdown (``--results-md``):

* attention -- what ``diffkit.attention.enable_best`` picked and why; an SD-1.5-shaped
  ``UNet2DConditionModel`` (fp16, 1024 px = 128² latent, CFG batch 2): forward ms and peak memory
  with PyTorch SDPA and, when it really works, xformers, and their relative difference (≤ 1e-2).
  A missing or broken xformers is a reported fallback, never a failure.
* repeat -- the fp16 UNet forward is bitwise repeatable (exact inversion at fp16 speed relies on it).
* bdia -- BDIA-DDIM (γ = 0.94) vs DDIM: ``step`` µs (model output precomputed) and BDIA's share
  of a loop step (goal ≤ 2 %); a 50-step UNet + scheduler loop with CFG (no VAE/text encoder),
  runs interleaved A-B-B-A, median wall-time ratio (goal ≤ 1.02); the exact-inversion round trip
  (invert, regenerate) with the fp16 UNet and a float64 state (``diffkit.samplers.inversion``)
  and with a float32 state (the same recurrence, the state kept in float32).
* radd -- RADD-small (768 hidden, 12 blocks, L = 1024, GPT-2 vocabulary 50,257; bf16 autocast as
  the official model): cached sampler wall time and NFE at n = 4,096 (batch 1) and n = 1,024
  (batch 8), once each; the uncached cost estimated as n × the median forward time.
* disback -- DisBack generator steps/s at batch 32 on the digits teacher (Stage-2 step, which
  costs the same in every mode; "unavailable" if the trainer's API is not there).

Timings: CUDA events after warm-up (medians over the repeats that fit the section's cap);
perf_counter on CPU. Every section is guarded: a failure becomes an ``error`` row, the run goes on.
``--tiny`` runs the same code at toy sizes (float32 on CPU); its numbers only show the code runs --
the goals apply to the CUDA run.

This file is the launcher: it makes diffkit importable from a bare checkout and keeps a broken
xformers out of the process, and only then imports the measurements (``sections.py`` beside it,
with its harness in ``harness.py``; both import diffkit and diffusers at their top) -- that one
import is deferred on purpose.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # a bare checkout: diffkit is importable from here, not installed
    sys.path.insert(0, str(ROOT))
import diffkit  # noqa: E402  (the package root is light: no torch, no diffusers)


def ensure_diffkit() -> None:
    """Make ``diffkit`` importable from this checkout without installing it.

    pyproject maps ``diffkit.samplers``/``diffkit.distill`` to the top-level folders
    ``samplers/``/``distill/``; an editable install provides that mapping, a bare checkout
    on a machine we do not control does not, so the two subpackages are registered here."""
    for sub in ("samplers", "distill"):
        name = f"diffkit.{sub}"
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / sub / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        setattr(diffkit, sub, mod)


# ---------------------------------------------------------------------------- xformers, isolated
_XF_CHILD = """
import sys, torch
try:
    import xformers, xformers.ops as xops
except BaseException as e:
    print("IMPORT", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", flush=True)
    sys.exit(0)
try:
    q = torch.randn(1, 4, 1, 8, device=sys.argv[1], dtype=getattr(torch, sys.argv[2]))
    xops.memory_efficient_attention(q, q, q)
    print("OK", flush=True)
except BaseException as e:
    print("OP", type(e).__name__, flush=True)
"""


def xformers_isolation(device: str, dtype: str) -> str | None:
    """Import xformers and run its op in a child process first; returns why it must be kept out of
    this process, or None (absent, works, or fails cleanly -- then diffkit's in-process probe
    reports it).

    Why: an xformers wheel built for another torch can crash the interpreter (no try/except
    survives that), and diffusers imports ``xformers.ops`` unguarded at import time whenever the
    package is installed -- an import that raises would take diffusers, and so diffkit, down."""
    if importlib.util.find_spec("xformers") is None:
        return None
    try:
        r = subprocess.run([sys.executable, "-c", _XF_CHILD, device, dtype], capture_output=True, text=True,
                           timeout=180)
    except subprocess.TimeoutExpired:
        return "its import/probe hung for 180 s in a child process"
    lines = [ln for ln in r.stdout.splitlines() if ln.split(" ")[0] in ("IMPORT", "OP", "OK")]
    if r.returncode != 0 or not lines:
        how = f"signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
        return f"its import/probe crashed a child process ({how})"
    if lines[-1].startswith("IMPORT"):
        return f"import failed in a child process: {lines[-1][7:]}"
    return None


def hide_xformers() -> None:
    """Make xformers look absent to this process (diffusers included): ``find_spec`` returns None
    for a name mapped to None in ``sys.modules``, and importing it raises ImportError."""
    for name in [m for m in sys.modules if m == "xformers" or m.startswith("xformers.")]:
        del sys.modules[name]
    sys.modules["xformers"] = None


#: the measured sections, in order (sections.SECTIONS holds their functions)
SECTION_NAMES = ("attention", "repeat", "bdia", "radd", "disback")


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run, < 1 min)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--out", default=None, help="write the rows and the environment as JSON here")
    p.add_argument("--results-md", default=None,
                   help="write the markdown report here (only for a CUDA run at real sizes)")
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds; sections not started within it are reported as skipped (default 150)")
    p.add_argument("--only", default=None, help=f"comma-separated sections ({', '.join(SECTION_NAMES)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on CPU: toy-sized ops on a shared machine)")
    a = p.parse_args(argv)
    names = list(SECTION_NAMES)
    a.only = names if a.only is None else [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in names]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; accepted: {', '.join(names)}")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if not args.tiny and args.device is not None and not args.device.startswith("cuda"):
        print("error: real sizes (SD-1.5 at 1024 px, RADD-small) need a CUDA device; use --tiny on CPU",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_diffkit()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    # before diffusers is imported: it imports an installed xformers unguarded
    hidden = xformers_isolation(args.device, "float16" if args.device.startswith("cuda") else "float32")
    if hidden:
        hide_xformers()
    try:
        from diffusers.utils import logging as dlogging
    except ImportError as e:
        print(f"error: diffusers is not importable ({e}); install its wheel first: "
              "bash benchmarks/gpu/run.sh --wheel-dir DIR (see benchmarks/gpu/README.md)", file=sys.stderr)
        return 2

    dlogging.set_verbosity_error()  # e.g. the fp16 cast notice; the table is the output
    dlogging.disable_progress_bar()
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if not args.tiny and not args.device.startswith("cuda"):
        print("error: real sizes (SD-1.5 at 1024 px, RADD-small) need a CUDA device; use --tiny on CPU",
              file=sys.stderr)
        return 2

    # diffkit and diffusers may be imported from here on (the measurements import them at their top)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sections

    return sections.run_checks(args, hidden, t_start)


if __name__ == "__main__":
    sys.exit(main())
