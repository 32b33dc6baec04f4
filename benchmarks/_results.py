"""Where benchmark results go, and what every results JSON records about how it was made.

Every committed ``benchmarks/results/NAME.json`` is written by ``diffkit bench NAME [args]`` and
nothing else: :func:`write_results` refuses to write into ``benchmarks/results/`` unless the run came
through the bench command (which sets ``DIFFKIT_BENCH_COMMAND``). Each file carries a ``provenance``
block: the script, its argv, the command line, the git commit (and whether the tree was dirty), the
library versions and the machine. Figures in README.md, docs/ and assets/*/README.md quote these
files inside ``<!-- fig:NAME -->`` markers (checked by tests/test_figures.py).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from diffkit.atomic import write_text_atomically
from diffkit.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: set by ``diffkit bench`` to the command line it runs
COMMAND_ENV = "DIFFKIT_BENCH_COMMAND"
PACKAGES = ("torch", "diffusers", "numpy", "scipy", "clean-fid", "torchmetrics", "accelerate", "diffkit")

__all__ = ["RESULTS", "COMMAND_ENV", "provenance", "write_results", "default_json", "save_results", "load_results"]


def _git(*args) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _versions() -> dict:
    return {"python": platform.python_version(), **package_versions(PACKAGES)}


def _machine() -> dict:
    import torch  # the benchmarks import torch anyway; only read here

    m = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if m["cuda"]:
        m["gpu"] = torch.cuda.get_device_name(0)
    return m


def provenance(script: str, argv=None) -> dict:
    """The block every results JSON carries: how, where and from which code it was made."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "script": str(Path(script).resolve().relative_to(ROOT)) if Path(script).resolve().is_relative_to(ROOT)
        else str(script),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "command": os.environ.get(COMMAND_ENV),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if dirty is None else bool(dirty),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "machine": _machine(),
    }


def default_json(name: str, quick: bool) -> Path | None:
    """``benchmarks/results/NAME.json`` for a full run; None for ``--quick`` (CI writes nothing there)."""
    return None if quick else RESULTS / f"{name}.json"


def write_results(data: dict, path, *, script: str, argv=None) -> Path:
    """Write ``data`` plus its ``provenance`` block as JSON, atomically. Into benchmarks/results/ only
    from ``diffkit bench NAME`` (a committed figure must say which command made it)."""
    path = Path(path).resolve()
    if path.parent == RESULTS.resolve() and not os.environ.get(COMMAND_ENV):
        raise RuntimeError(f"{path.name}: results in benchmarks/results/ are written by `diffkit bench "
                           f"{Path(script).stem} ...` only (run it that way, or pass --json elsewhere)")
    payload = {**data, "provenance": provenance(script, argv)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def save_results(data: dict, name: str, *, json_path=None, quick: bool, script: str, argv=None) -> Path | None:
    """The end of a bench: write ``data`` to ``json_path``, else to ``default_json(name, quick)`` (none
    for ``--quick``), and say where; returns the path written, or None."""
    path = json_path or default_json(name, quick)
    if not path:
        return None
    path = write_results(data, path, script=script, argv=argv)
    print(f"wrote {path}")
    return path


def load_results(name: str) -> dict:
    """A committed results file by benchmark name (for figures, cards and ratios: never a typed-in number)."""
    return json.loads((RESULTS / f"{name}.json").read_text())
