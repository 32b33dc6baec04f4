"""Does a recorded DisBack Stage-1 path interpolate from the teacher to G⁰? (issue #20, item 1)

    diffkit bench disback_path                 # full run -> benchmarks/results/disback_path.json (resumable)
    python benchmarks/disback_path.py --quick --json /tmp/p.json   # tiny settings, CI plumbing check
    diffkit bench disback_path --lengths       # Stage-1 length × seed -> disback_path_lengths.json

Records Stage 1 on ``assets/digits-unet`` with the first convergence run's settings
(benchmarks/disback_convergence.py then: 400 Stage-1 steps, batch 32, 5 nodes, generator timestep
399, seed 0) for each variant of Stage 1's learning rate and snapshot spacing listed in
:data:`VARIANTS` (fixed here before any run; the first is the experiment's own path), and runs
the path check (:func:`diffkit.metrics.path_check.evaluate_path`: every node's DSM loss on G⁰
samples, the FID-digits of its DDIM-50 samples to the data and to G⁰'s, n = 500, seed 0; the
G⁰-vs-G⁰ floor; the rule of docs/methods/disback.md) on each. Nothing else is measured and no
variant is chosen on anything but the check.

Each variant's record goes to ``<out>/<variant>/check.json``; a rerun skips finished variants
(and an unfinished Stage 1 resumes). Full size, measured on this 2-core machine with one torch
thread: about 3 CPU-minutes per variant (Stage 1 65 CPU-s, the check 110 CPU-s; lr1e-4-even),
~18 CPU-minutes for all six; on the shared machine (load ~15) one variant took ~25 min of wall
time. ``--variants`` runs a subset (two single-thread processes may run different variants at once).

``--lengths`` records the convergence experiment's own Stage 1 (lr 1e-5, log-progress; its
``stage1()``, the check with seed = the path's seed) for every length × seed of :data:`LENGTHS` into
``<out>/lengths/s<steps>/`` and reports which lengths every seed passes and each seed's first accepted
length (none passes every seed, so the experiment takes the latter; ``--length-runs 800:0,1600:2`` runs a
subset: two processes side by side). Each path costs its Stage 1 plus one check
(``stage1_cpu_s_this_call`` and ``cpu_time_s`` in the records).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import disback_convergence as convergence  # noqa: E402  (the experiment whose Stage 1 --lengths records)
from _results import save_results  # noqa: E402

from diffkit.atomic import write_json_atomically  # noqa: E402
from diffkit.distill.config import DisBackConfig  # noqa: E402
from diffkit.distill.disback import DisBackTrainer  # noqa: E402
from diffkit.metrics.path_check import (CRITERIA, END_FACTOR, GEOMETRIC_TOLERANCE, MAX_LOSS_SHARE,  # noqa: E402
                                        evaluate_path)
from diffkit.pipelines import load_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "disback_path"

# ---- fixed before any run ---------------------------------------------------------------------
#: (name, Stage-1 learning rate, spacing); the first is benchmarks/disback_convergence.py's path
VARIANTS = [
    ("lr1e-4-even", 1e-4, "even"),
    ("lr1e-4-log", 1e-4, "log"),
    ("lr1e-4-log-progress", 1e-4, "log-progress"),
    ("lr1e-5-log-progress", 1e-5, "log-progress"),
    ("lr1e-5-even", 1e-5, "even"),
    ("lr3e-6-log-progress", 3e-6, "log-progress"),
]
#: the first convergence run's Stage-1 settings (benchmarks/disback_convergence.py, 400 steps then)
FULL = dict(stage1_steps=400, path_nodes=5, batch_size=32, generator_timestep=399, progress_candidates=8,
            seed=0, n=500, steps=50)
#: ``--lengths``: Stage-1 length × seed with the convergence experiment's own recording and check (its
#: ``stage1()``: lr 1e-5, log-progress, the path check at n = 500 with seed = the path's seed). Added after
#: that experiment's seeds 1 and 2 failed ``end`` at 400 steps. The plan was lengths doubling from 400 and the
#: shortest length every seed passes; 1200 was added when 800 and 1600 each failed one seed. No length passes
#: all three (seed 0's last drop falls under the floor once its last node nears G⁰), so the experiment
#: re-records each seed at the next length while its check rejects it (disback_convergence.py ``stage1_extend``).
LENGTHS = {"full": dict(steps=(400, 800, 1200, 1600), seeds=(0, 1, 2)), "quick": dict(steps=(6, 12), seeds=(0,))}
QUICK = dict(stage1_steps=6, path_nodes=3, batch_size=4, generator_timestep=399, progress_candidates=2,
             seed=0, n=20, steps=5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (plumbing check, seconds)")
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--out", default=None, help="run folder (default runs/disback_path[_quick])")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--lengths", action="store_true",
                   help="instead of the variants: the Stage-1 lengths × seeds of the convergence experiment's "
                        "recording (LENGTHS) -> disback_path_lengths.json")
    p.add_argument("--length-runs", default=None,
                   help="only these length:seed runs this call, e.g. 800:0,1600:2 (the report needs all)")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/disback_path.json; "
                                                "--quick writes only to an explicit --json)")
    a = p.parse_args(argv)
    a.size = QUICK if a.quick else FULL
    grid = LENGTHS["quick" if a.quick else "full"]
    a.length_grid = [(n, k) for n in grid["steps"] for k in grid["seeds"]]
    if a.length_runs is not None:
        try:
            a.length_runs = [tuple(int(x) for x in r.split(":", 1)) for r in a.length_runs.split(",")]
        except ValueError:
            p.error(f"--length-runs: expected length:seed pairs separated by commas, e.g. 800:0,1600:2; "
                    f"got {a.length_runs!r}")
        bad = [r for r in a.length_runs if r not in a.length_grid]
        if bad:
            p.error(f"--length-runs: {bad} not in the grid {a.length_grid} (length:seed)")
    a.out = Path(a.out or ROOT / "runs" / ("disback_path_quick" if a.quick else "disback_path"))
    names = [v[0] for v in VARIANTS]
    default = names[:2] if a.quick else names  # --quick: the plumbing of two variants
    a.variants = default if a.variants is None else a.variants.split(",")
    unknown = [v for v in a.variants if v not in names]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {names}")
    return a


def config(size: dict, lr: float, spacing: str) -> DisBackConfig:
    return DisBackConfig(mode="disback", stage1_steps=size["stage1_steps"], path_nodes=size["path_nodes"],
                         batch_size=size["batch_size"], generator_timestep=size["generator_timestep"],
                         progress_candidates=size["progress_candidates"], seed=size["seed"], stage1_lr=lr,
                         path_spacing=spacing, progress=False)


def run_variant(a, pipe, name: str, lr: float, spacing: str) -> dict:
    d = a.out / name
    f = d / "check.json"
    if f.exists():
        return json.loads(f.read_text())
    size = a.size
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = config(size, lr, spacing)
    rec = DisBackTrainer(pipe.unet, pipe.scheduler.config, cfg, d / "run", stage1_dir=d / "stage1", cpu=True)
    m = rec.run_stage1()
    stage1 = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
              "node_steps": [n["step"] for n in m.nodes]}
    check = evaluate_path(m, pipe, size["generator_timestep"], n=size["n"], seed=size["seed"], steps=size["steps"])
    out = {"variant": name, "stage1_lr": lr, "spacing": spacing, "stage1": stage1, "check": check}
    write_json_atomically(f, out)
    return out


def run_length(a, pipe, steps: int, seed: int) -> dict:
    """One Stage-1 length × seed, recorded and checked exactly as the convergence experiment does."""
    ca = convergence.parse_args(["--quick"] if a.quick else [])
    ca.stage1_steps, ca.out = steps, a.out / "lengths" / f"s{steps}"
    m, check = convergence.stage1(ca, pipe, seed)
    return {**convergence.attempt(steps, check), "seed": seed, "node_steps": check["node_steps"],
            "stage1_lr": ca.stage1_lr, "path_spacing": ca.path_spacing, "check": check}


def lengths(a, pipe) -> int:
    grid = LENGTHS["quick" if a.quick else "full"]
    runs = a.length_grid
    for steps, seed in runs if a.length_runs is None else a.length_runs:
        run_length(a, pipe, steps, seed)
    done = {(s, k) for s, k in runs if (a.out / "lengths" / f"s{s}" / f"path-check-seed{k}.json").exists()}
    if done != set(runs):
        print(f"still to do (length:seed): {sorted(set(runs) - done)}")
        return 0
    results = [run_length(a, pipe, s, k) for s, k in runs]  # all finished: read back
    print(f"{'Stage-1 steps':<14} {'seed':<5} {'accepted':<9} {'last node → G⁰':<16} {'limit (2 × floor)':<18} "
          f"{'node steps':<28} failed")
    for r in results:
        print(f"{r['stage1_steps']:<14} {r['seed']:<5} {str(r['accepted']):<9} {r['last_fd_g0']:<16.4f} "
              f"{r['end_limit']:<18.4f} {str(r['node_steps']):<28} {','.join(r['failed'])}")
    ok = [s for s in grid["steps"] if all(r["accepted"] for r in results if r["stage1_steps"] == s)]
    chosen = ok[0] if ok else None
    first = {k: next((r["stage1_steps"] for r in results if r["seed"] == k and r["accepted"]), None)
             for k in grid["seeds"]}
    print(f"shortest length at which every seed's path is accepted: {chosen}; first accepted length per seed "
          f"(the experiment's extension): {first}")
    data = {"grid": {"steps": list(grid["steps"]), "seeds": list(grid["seeds"])}, "teacher": str(a.teacher),
            "threads": a.threads, "rule": {"criteria": list(CRITERIA), "end_factor": END_FACTOR,
                                           "geometric_tolerance": GEOMETRIC_TOLERANCE,
                                           "max_loss_share": MAX_LOSS_SHARE},
            "choice": "the shortest length at which every seed's path is accepted", "chosen": chosen,
            "accepted_lengths": ok, "first_accepted_per_seed": first, "runs": results}
    save_results(data, f"{NAME}_lengths", json_path=a.json, quick=a.quick, script=__file__)
    return 0


def print_table(results: list[dict]) -> None:
    print(f"{'variant':<22} {'accepted':<9} {'node steps':<28} {'distance to G⁰ (teacher..N)':<44} "
          f"{'DSM-loss shares':<32} failed")
    for r in results:
        c = r["check"]
        shares = c["criteria"]["loss_share"]["shares"] or []
        print(f"{r['variant']:<22} {str(c['accepted']):<9} {str(r['stage1']['node_steps']):<28} "
              f"{str([round(v['fd_g0'], 3) for v in c['nodes']]):<44} {str([round(s, 2) for s in shares]):<32} "
              f"{','.join(c['failed'])}  (floor {c['floor']:.4f})")


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.teacher)
    pipe.set_progress_bar_config(disable=True)
    if a.lengths:
        return lengths(a, pipe)
    table = {v[0]: v for v in VARIANTS}
    results = []
    for name in a.variants:
        t0 = time.perf_counter()
        results.append(run_variant(a, pipe, *table[name]))
        print(f"{name}: {'accepted' if results[-1]['check']['accepted'] else 'failed'} "
              f"({time.perf_counter() - t0:.0f} s this session)", flush=True)
    print_table(results)
    accepted = [r["variant"] for r in results if r["check"]["accepted"]]
    for r in results:  # the check's cost relative to the Stage 1 it checks (unrounded CPU seconds)
        r["check_over_stage1_cpu"] = r["check"]["cpu_time_s"] / r["stage1"]["cpu_s"]
    data = {"settings": {**a.size, "teacher": str(a.teacher), "threads": a.threads},
            "rule": {"criteria": list(CRITERIA), "end_factor": END_FACTOR, "geometric_tolerance": GEOMETRIC_TOLERANCE,
                     "max_loss_share": MAX_LOSS_SHARE},
            "variants": results, "accepted": accepted,
            "check_cpu_s_mean": sum(r["check"]["cpu_time_s"] for r in results) / len(results),
            "stage1_cpu_s_mean": sum(r["stage1"]["cpu_s"] for r in results) / len(results)}
    save_results(data, NAME, json_path=a.json, quick=a.quick, script=__file__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
