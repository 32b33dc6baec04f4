"""Every benchmark's ``--quick`` run: it finishes, writes the same schema as its committed full-size
results, and its headline holds qualitatively (loose bounds, issue #19 item 4).

- Schema: the quick JSON has the same key structure as the committed ``benchmarks/results/*.json``
  (dict keys recursively; list lengths ignored: the elements of a list are merged; the values of a
  dict keyed by data -- numbers, γ settings, sampler names -- are merged, its keys ignored;
  ``provenance`` ignored; null matches any type).
- Headlines: ``CHECKS`` below, each reading a few keys of the quick JSON (one line to change when a
  benchmark renames a key).

The benches run two at a time (each on one thread, longest first): about 200 CPU-seconds in all, ~100 s
on the 2-core machine when it is otherwise idle.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from helpers import ROOT

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Bench:
    args: tuple = ()  # besides --quick --json PATH
    committed: tuple = ()  # stems of the committed full-size results this run's schema must match
    pending: str = ""  # why there is no committed full-size file yet (the test fails once there is one)
    data_keyed: tuple = ()  # dotted paths ('*' = any key) of dicts whose keys are data, not schema
    quick_lacks: tuple = ()  # known gaps: (paths of the committed schema the quick run does not write, why)


BENCHES = {
    "asset_cards": Bench(committed=("asset_cards",)),
    "bdia_edm": Bench(committed=("bdia_edm",), data_keyed=("sweep", "sweep.*", "best", "fid")),
    "digits_quality": Bench(committed=("digits_quality",), data_keyed=("guidance",), quick_lacks=(
        ("$.per_seed[].equal_n", "$.per_seed[].fid_equal_n", "$.per_seed[].kid_equal_n", "$.summary.fid_equal_n",
         "$.summary.kid_equal_n"), "--quick skips the equal-n comparison (helper C3 owns digits_quality.py)")),
    "digits_onestep_card": Bench(args=("--n", "500", "--teacher-n", "500"),
                                 committed=("digits_onestep", "digits_onestep_warm_critic")),
    "disback_speed": Bench(committed=("disback_speed",)),
    "distill_defaults": Bench(committed=("distill_defaults",)),
    "editing": Bench(committed=("editing",)),
    "onestep_heldout": Bench(committed=("onestep_heldout",), data_keyed=("models",)),
    "fid_backends": Bench(committed=("fid_backends",), data_keyed=("backends", "pairwise_rel_diff")),
    "gauge": Bench(committed=("gauge",)),
    "gauge_toy": Bench(committed=("gauge_toy",)),
    "radd_cache": Bench(committed=("radd_cache",)),
    "radd_text": Bench(committed=("radd_text_a", "radd_text_b", "radd_text_cd")),
}
#: CPU-seconds of each quick run on this machine (1 thread), to start the longest first
COST = {"radd_cache": 49, "distill_defaults": 30, "onestep_heldout": 12,
        "digits_onestep_card": 28, "radd_text": 27, "bdia_edm": 22, "editing": 22, "gauge": 20,
        "asset_cards": 13, "gauge_toy": 3, "disback_speed": 15, "digits_quality": 14, "fid_backends": 5}
# not run here: fid_small_n (its own test, tests/metrics), disback_convergence (tests/distill; a minute of
# training), gpu/run.py (tests/test_gpu_script.py), bdia_overhead (10 CPU-s more than the budget allows; it
# gets its row here with its committed results, helper C3, #19 item 6)


def run_quick(name, out):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("DIFFKIT_BENCH_COMMAND", None)
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json", str(out), *BENCHES[name].args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=out.parent)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """name -> (completed process, parsed JSON or None), the benches run two at a time."""
    tmp = tmp_path_factory.mktemp("quick")

    def one(name):
        out = tmp / f"{name}.json"
        r = run_quick(name, out)
        return name, (r, json.loads(out.read_text()) if out.exists() else None)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, sorted(BENCHES, key=lambda n: -COST.get(n, 0))))


# ---------------------------------------------------------------------------------------------- schema
def structure(x, data_keyed=(), path=""):
    """The key structure of a JSON value: dicts by key (data-keyed ones as '<data>' -> merged values),
    lists as one merged element, leaves as their type."""
    if isinstance(x, dict):
        if _data_keyed(path, data_keyed) or (x and all(_is_number(k) for k in x)):
            return {"<data>": _merge([structure(v, data_keyed, f"{path}.*") for v in x.values()])}
        return {k: structure(v, data_keyed, f"{path}.{k}" if path else k) for k, v in x.items() if k != "provenance"}
    if isinstance(x, list):
        return [_merge([structure(v, data_keyed, path) for v in x])]
    if x is None:
        return None
    return "bool" if isinstance(x, bool) else "number" if isinstance(x, (int, float)) else type(x).__name__


def _is_number(k) -> bool:
    try:
        float(k)
        return True
    except ValueError:
        return False


def _data_keyed(path, patterns) -> bool:
    parts = path.split(".") if path else []
    for p in patterns:
        q = p.split(".")
        if len(q) == len(parts) and all(a == "*" or a == b for a, b in zip(q, parts)):
            return True
    return False


def _merge(items):
    items = [i for i in items if i is not None]
    if not items:
        return None
    if all(isinstance(i, dict) for i in items):
        keys = {k for i in items for k in i}
        return {k: _merge([i.get(k) for i in items]) for k in sorted(keys)}
    if all(isinstance(i, list) for i in items):
        return [_merge([e for i in items for e in i])]
    kinds = sorted({json.dumps(i, sort_keys=True) for i in items})
    return items[0] if len(kinds) == 1 else "|".join(kinds)


def differences(a, b, path="$") -> list[str]:
    """Where structures ``a`` (quick) and ``b`` (committed) differ; None matches anything."""
    if a is None or b is None:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in the quick run" for k in sorted(set(a) - set(b))]
        out += [f"{path}.{k}: only in the committed results" for k in sorted(set(b) - set(a))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return differences(a[0], b[0], f"{path}[]")
    if a != b and not ({"number", "str"} & {a, b} and "|" in f"{a}{b}"):
        return [f"{path}: {a} in the quick run, {b} committed"]
    return []


def committed_structure(bench: Bench):
    merged = {}
    for stem in bench.committed:  # results split over several files (radd_text's parts) are one schema
        merged.update(json.loads((RESULTS / f"{stem}.json").read_text()))
    return structure(merged, bench.data_keyed)


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_quick_run_writes_the_committed_schema(name, quick):
    r, res = quick[name]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert res is not None, f"{name} --quick --json wrote nothing"
    if "provenance" in res:  # written through benchmarks/_results.py
        assert res["provenance"]["script"] == f"benchmarks/{name}.py" and res["provenance"]["argv"][0] == "--quick"
    b = BENCHES[name]
    if b.pending:
        assert not b.committed
        return
    quick_struct = structure(res, b.data_keyed)
    if len(b.committed) > 1:  # split results: the quick run holds every part
        quick_struct = {k: v for k, v in quick_struct.items() if k in committed_structure(b)}
    diff = differences(quick_struct, committed_structure(b))
    if b.quick_lacks:
        lacks = {f"{p}: only in the committed results" for p in b.quick_lacks[0]}
        assert lacks <= set(diff), f"{name}: the quick run now writes {sorted(lacks - set(diff))}: update quick_lacks"
        diff = [d for d in diff if d not in lacks]
    assert not diff, f"{name}: --quick schema differs from benchmarks/results/{b.committed}:\n" + "\n".join(diff)


def test_the_table_names_every_committed_results_file():
    """A bench marked pending has no committed file; every committed file belongs to a bench here or to the
    listed ones that run elsewhere."""
    # fid_small_n (tests/metrics), disback_convergence (both phases) and disback_path (and its --lengths file;
    # training; the path check is tested in tests/distill/test_path_check.py), gpu (tests/test_gpu_script.py),
    # bdia_overhead (over the time budget)
    elsewhere = {"disback_convergence", "disback_convergence_t999", "disback_path", "disback_path_lengths",
                 "fid_small_n", "gpu", "bdia_overhead"}
    named = {s for b in BENCHES.values() for s in b.committed}
    stems = {p.stem for p in RESULTS.glob("*.json")}
    assert not (stems - named - elsewhere), f"results without a quick-schema check: {sorted(stems - named - elsewhere)}"
    missing = sorted(s for s in named if s not in stems)
    assert not missing, f"BENCHES names committed results that do not exist: {missing}"
    for name, b in BENCHES.items():
        own = {name, *(f"{name}_{x}" for x in ("a", "b", "cd"))}
        assert not (b.pending and own & stems), f"{name}: committed now; replace pending with committed=(...)"


def test_schema_differences_are_found():
    full = {"a": 1, "rows": [{"x": 1.0, "y": "s"}], "sweep": {"γ=0.5": {"9": 0.1}}, "provenance": {"c": 1}}
    same = {"a": 2, "rows": [{"x": 3.0, "y": "t"}, {"x": 1, "y": "u"}], "sweep": {"γ=1": {"17": 0.2, "35": 0.3}}}
    assert differences(structure(same, ("sweep",)), structure(full, ("sweep",))) == []
    renamed = {"a": 2, "rows": [{"x_new": 3.0, "y": "t"}], "sweep": {"γ=1": {"9": 0.2}}}
    d = differences(structure(renamed, ("sweep",)), structure(full, ("sweep",)))
    assert d == ["$.rows[].x_new: only in the quick run", "$.rows[].x: only in the committed results"]
    assert differences(structure({"a": "s"}), structure({"a": 1})) == ["$.a: str in the quick run, number committed"]


# ---------------------------------------------------------------------------------------------- headlines
#: editing.json round_trip records: {model, steps, model dtype, state dtype, method, rel. error, NFE, wall s}
RT = dict(key="round_trip", state="state dtype", method="method", error="rel. error", bdia="bdia",
          ddim="ddim-inversion")


def _editing_round_trip(res):
    """BDIA (float64 state) round-trips exactly where DDIM inversion does not, at every quick row."""
    rows = res[RT["key"]]
    bdia = [r[RT["error"]] for r in rows if r[RT["state"]] == "float64" and r[RT["method"]].startswith(RT["bdia"])]
    ddim = [r[RT["error"]] for r in rows if r[RT["method"]] == RT["ddim"]]
    return bdia and ddim and max(bdia) < 1e-10 < 1e-3 < min(ddim), f"BDIA max {max(bdia, default=None)}, " \
        f"DDIM inversion min {min(ddim, default=None)}"


def _bdia_edm_beats_euler(res):
    """At 9 NFE on the teacher, the best BDIA-Euler setting errs less than EDM Euler."""
    sweep = res["sweep"]
    bdia = min(v["9"] for k, v in sweep.items() if k.startswith("bdia-euler"))
    return bdia < sweep["edm-euler"]["9"], f"BDIA-Euler {bdia:.4g} vs EDM Euler {sweep['edm-euler']['9']:.4g}"


def _radd_cache_law(res):
    """Cached sampling = uncached sampling; the sampler's NFE within 5 % of the E-NFE law (the seeded
    two-stage draw, and the batch-8 cache rows, whose mean over 8 samples is tight enough for 5 %)."""
    law_rows = [(statistics.fmean(r["two_stage"]), r["law"]) for r in res["nfe_law"]]
    cache_rows = [(r["nfe_cached"], r["law"]) for r in res["cache"] if r["batch"] == 8]
    worst = max(abs(nfe / law - 1) for nfe, law in law_rows + cache_rows)
    same = all(r["identical"] for r in res["cache"])
    return same and worst <= 0.05, f"cached == uncached: {same}; worst |NFE / law - 1| = {worst:.3f}"


def _onestep_vs_teacher(res):
    """One-step FID-digits below 3x the teacher's DDIM-50 FID-digits, both at n = 500 (seed 0)."""
    fid, teacher = res["fid"][0], res["teacher_same_n"]["fid"]
    n_ok = res["n"] == res["teacher_same_n"]["n"] == 500
    return n_ok and fid < 3 * teacher, f"one-step {fid:.4f} vs teacher {teacher:.4f} at n = {res['n']}"


CHECKS = {"editing": _editing_round_trip, "bdia_edm": _bdia_edm_beats_euler, "radd_cache": _radd_cache_law,
          "digits_onestep_card": _onestep_vs_teacher}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_quick_headline_holds(name, quick):
    r, res = quick[name]
    assert r.returncode == 0 and res is not None, r.stderr[-3000:]
    ok, detail = CHECKS[name](res)
    assert ok, f"{name}: {CHECKS[name].__doc__.strip()} -- {detail}"
