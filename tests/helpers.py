"""Shared test helpers: repository paths and small builders used by tests in several packages.

The test folders mirror the packages (tests/samplers, tests/pipelines, ...); every test module
imports from here (``from helpers import ROOT``; ``tests/`` is on ``sys.path`` through the
root ``conftest.py``) instead of computing paths from its own location.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: the repository root
ROOT = Path(__file__).resolve().parents[1]
#: the tests folder (``_dist_worker.py``, ``data/``)
TESTS = ROOT / "tests"
#: the shipped models
ASSETS = ROOT / "assets"
#: test fixtures committed with the tests
DATA = TESTS / "data"


def run_script(script, *args, timeout: float = 600, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run a repository script (``examples/x.py``, ``benchmarks/y.py``) with this interpreter, one
    torch thread, offline; returns the completed process (stdout/stderr as text)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)
