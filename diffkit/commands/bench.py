"""diffkit bench TOPIC [args]: run benchmarks/TOPIC.py (each benchmark issue adds one)."""

from __future__ import annotations

import os
import runpy
import shlex
import sys
from pathlib import Path

NAME = "bench"
#: environment variable naming the bench command line (read by benchmarks/_results.py)
COMMAND_ENV = "DIFFKIT_BENCH_COMMAND"
HELP = "run a benchmark script from benchmarks/ (diffkit bench --list)"


def benchmarks_dir() -> Path:
    for cand in (Path(__file__).resolve().parents[2] / "benchmarks", Path.cwd() / "benchmarks"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("benchmarks/ folder not found (benchmarks run from a diffkit checkout)")


def topics() -> list[str]:
    return sorted(p.stem for p in benchmarks_dir().glob("*.py") if not p.name.startswith("_"))


def add_arguments(p):
    p.add_argument("topic", nargs="?", help="benchmark name (file benchmarks/TOPIC.py)")
    p.add_argument("args", nargs="...", help="arguments passed to the benchmark (e.g. --quick)")
    p.add_argument("--list", action="store_true", help="list the available benchmarks")


def run(args):
    if args.list or not args.topic:
        print("benchmarks: " + (", ".join(topics()) or "(none yet)"))
        return 0
    script = benchmarks_dir() / f"{args.topic.replace('-', '_')}.py"
    if not script.exists():
        raise ValueError(f"unknown benchmark {args.topic!r}; available: {', '.join(topics()) or '(none yet)'}")
    old, old_env = sys.argv, os.environ.get(COMMAND_ENV)
    sys.argv = [str(script), *args.args]
    # benchmarks/_results.write_results records this and writes into benchmarks/results/ only when set
    os.environ[COMMAND_ENV] = shlex.join(["diffkit", "bench", script.stem, *args.args])
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
        if old_env is None:
            os.environ.pop(COMMAND_ENV, None)
        else:
            os.environ[COMMAND_ENV] = old_env
