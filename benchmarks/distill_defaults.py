"""Do the distillation defaults work? `diffkit distill` and examples/disback_distill.py at their defaults.

    diffkit bench distill_defaults             # full run -> benchmarks/results/distill_defaults.json (resumable)
    python benchmarks/distill_defaults.py --quick --json /tmp/d.json   # tiny settings, CI plumbing check

Issue #20 item 4: ``diffkit distill --teacher assets/digits-unet --mode disback`` with every other
setting at its default must end with FID-digits ≤ 0.5 × G⁰'s and ≤ 0.6 (n = 500, seed 0, the closing
evaluation the command prints and stores as ``final_fid`` in the run summary; G⁰ = the teacher's
one-step x̂0 at the generator timestep, where training starts), and the example must improve on G⁰.
Both run as subprocesses with one torch thread, in ``runs/distill_defaults/`` (resumable: a rerun
continues an interrupted run from its checkpoints; a finished run is re-exported and re-scored).

Full size on this 2-core machine, one thread: the command ~15 CPU-min (Stage 1 400 steps, Stage 2
1,000 steps, the closing evaluation), the example ~1.5 CPU-min.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402  (sibling module of the scripts)

ROOT = Path(__file__).resolve().parent.parent
NAME = "distill_defaults"
#: issue #20 item 4
BOUNDS = {"max_fraction_of_g0": 0.5, "max_fid": 0.6}
TINY_COMMAND = ("--max-steps", "2", "--stage1-steps", "4", "--path-nodes", "2", "--steps-per-node", "1",
                "--batch-size", "4", "--final-fid-n", "20", "--checkpoint-every", "0")
TINY_EXAMPLE = ("--max-steps", "2", "--stage1-steps", "4", "--path-nodes", "2", "--steps-per-node", "1",
                "--batch-size", "4", "--fid-n", "20")
EXAMPLE_LINE = re.compile(r"generator ([0-9.]+) vs G⁰ ([0-9.]+) \(ratio ([0-9.]+)\): (improved|did NOT improve)")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (plumbing check)")
    p.add_argument("--out", default=None, help="run folder (default runs/distill_defaults[_quick])")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/distill_defaults.json)")
    a = p.parse_args(argv)
    a.out = Path(a.out or ROOT / "runs" / ("distill_defaults_quick" if a.quick else "distill_defaults"))
    return a


def _run(cmd: list[str]) -> tuple[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("DIFFKIT_BENCH_COMMAND", None)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - t0


def command_run(a) -> dict:
    run_dir = a.out / "onestep-run"
    args = ["distill", "--teacher", "assets/digits-unet", "--mode", "disback", "--output", str(a.out / "onestep"),
            "--run-dir", str(run_dir), "--cpu", "--no-progress"]
    if a.quick:
        args += list(TINY_COMMAND)
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        args += ["--resume"]
    out, wall = _run([sys.executable, "-m", "diffkit.cli", *args])
    summary = json.loads((run_dir / "summary.json").read_text())
    f = summary["final_fid"]
    return {"command": "diffkit " + " ".join(a for a in args if a != "--resume"), "final_fid": f,
            "fraction_of_g0": f["fid"] / f["g0_fid"],
            "bounds_met": {"fraction_of_g0": f["fid"] / f["g0_fid"] <= BOUNDS["max_fraction_of_g0"],
                           "fid": f["fid"] <= BOUNDS["max_fid"]},
            "training_wall_s": summary.get("wall_time_s"), "wall_s_this_call": wall,
            "printed": [line for line in out.splitlines() if line.startswith("FID-digits")]}


def example_run(a) -> dict:
    args = ["examples/disback_distill.py", "--output", str(a.out / "example" / "digits-onestep")]
    if a.quick:
        args += list(TINY_EXAMPLE)
    out, wall = _run([sys.executable, *args])
    m = EXAMPLE_LINE.search(out)
    if not m:
        raise SystemExit(f"the example did not print its FID comparison line:\n{out[-2000:]}")
    fid, g0 = float(m.group(1)), float(m.group(2))
    return {"command": "python " + " ".join(args), "fid_printed": fid, "g0_fid_printed": g0,
            "ratio_printed": float(m.group(3)), "improved": m.group(4) == "improved", "wall_s_this_call": wall}


def main(argv=None) -> int:
    a = parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = command_run(a)
    ex = example_run(a)
    f = cmd["final_fid"]
    print(f"diffkit distill (defaults): FID-digits {f['fid']:.4f} vs G⁰ {f['g0_fid']:.4f} (n = {f['n']}): "
          f"{cmd['fraction_of_g0']:.3f} × G⁰; bounds ≤ {BOUNDS['max_fraction_of_g0']} × G⁰: "
          f"{cmd['bounds_met']['fraction_of_g0']}, ≤ {BOUNDS['max_fid']}: {cmd['bounds_met']['fid']}")
    print(f"example (defaults): FID-digits {ex['fid_printed']:.3f} vs G⁰ {ex['g0_fid_printed']:.3f}: "
          f"{'improved' if ex['improved'] else 'did NOT improve'}")
    save_results({"bounds": BOUNDS, "command": cmd, "example": ex}, NAME, json_path=a.json, quick=a.quick,
                 script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
