"""Every benchmark's ``--quick`` mode runs (the plumbing CI can afford) and writes its JSON.

The numbers are not asserted here (speed goals live in the benchmarks' tables); what is
checked is that each script finishes, prints its table and records its results. Benchmarks
with their own tests: editing, fid_small_n, disback_convergence, gpu/run.py.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT


QUICK = {  # script -> a result its JSON must hold; ~80 s for all six on 1 thread
    "bdia_overhead": "round_trip",
    "bdia_edm": "sweep",
    "digits_quality": "per_seed",
    "disback_speed": "rows",
    "radd_cache": "cache",
    "radd_text": "a",
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_benchmark_quick_mode_runs_and_writes_json(name, tmp_path):
    key = QUICK[name]
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res.get(key), f"{name} wrote no {key!r} results: {sorted(res)}"
