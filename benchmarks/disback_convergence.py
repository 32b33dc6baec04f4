"""Does the DisBack path speed up convergence? Arms A vanilla / B warm critic / C DisBack / D delayed teacher.

    diffkit bench disback_convergence                       # phase 1 (t_g = 399), resumable: rerun to continue
    diffkit bench disback_convergence --phase 2             # phase 2 (t_g = 999, pure-noise input)
    diffkit bench disback_convergence --seeds 1 --arms A,B  # a subset (two single-thread processes side by side)
    diffkit bench disback_convergence --stage1-only         # only record and check the seeds' Stage-1 paths
    diffkit bench disback_convergence --report              # only summarise the finished runs
    python benchmarks/disback_convergence.py --quick --json X.json   # tiny settings, CI plumbing check

Full size on this 2-core machine, one torch thread per process: phase 1 is 12 runs of 1,000 generator
steps with 21 FID evaluations each plus three Stage-1 paths and their path checks (~75 CPU-min, plus
~4 CPU-min per re-recorded path);
phase 2 is 12 runs of 2,000 steps (~2 CPU-hours; the results file says how far it got).

Stage-1 length (phase 1): a seed's path is recorded with ``stage1_steps`` = 400 steps; while the path check
rejects it, it is re-recorded at the next length of ``stage1_extend`` (800, 1200, 1600; the last is walked
even if rejected), and B, C and D of that seed start from the accepted path. This rule was added after the
first run, in which seeds 1 and 2 failed the check's ``end`` criterion at 400 steps and were walked anyway;
no single length passes every seed (``diffkit bench disback_path --lengths``,
benchmarks/results/disback_path_lengths.json), so each seed gets the first length its check accepts. It is
chosen on the path check alone, before any Stage 2 ran with it; arm A, which reads no Stage-1 setting, kept
its runs (:func:`same_settings`; a test shows its training unchanged), and so did seed 0's B, C and D (400
steps accepted). Rejected recordings are diagnostics like the check and are not counted as compute. Phase 2
ran before the rule (``stage1_extend`` empty: its paths, rejected because the distance to G⁰ rises along the
nodes, are walked as recorded; a longer Stage 1 was not tried there).

One code path (``DisBackTrainer``), hyper-parameters shared by every arm and fixed in :data:`PHASES`
before any arm ran; the arms differ only in the fake-score initialisation and the target
(docs/methods/disback.md):

=====  ==========================  ===========================================================
arm    fake score init             target
=====  ==========================  ===========================================================
A      teacher                     teacher                                       (``vanilla``)
B      last Stage-1 node s'_N      teacher                                       (``warm-critic``)
C      last Stage-1 node s'_N      s'_{N-1} … s'_1 (K2 steps each), then teacher (``disback``)
D      last Stage-1 node s'_N      s'_N for the same (N−1)·K2 steps, then teacher (``delayed-teacher``)
=====  ==========================  ===========================================================

D gives the critic and both optimisers C's warm-up without the walk: C faster than D means the path
helps; C ≈ D means the gain is warm-up. B, C and D of one seed share that seed's Stage-1 path, which
is recorded with its own learning rate and log-progress node spacing (benchmarks/disback_path.py
chose it on the path check alone) and checked before any Stage 2 (``path-check-seed<k>.json``;
diffkit.metrics.path_check). Every arm is evaluated every ``eval_every`` generator steps with
FID-digits of the EMA generator (n class-balanced one-step samples, noise seed = the run's seed, so
the arms of one seed see the same noise). Cost: generator steps, and total compute including Stage 1
in generator-step equivalents under a pass-count model (forward = 1, backward = 2): a Stage-1 step =
G⁰ forward + fake forward/backward = 4; a Stage-2 step with F fake updates = 4F + 5 (the path check is
a diagnostic, reported but not counted). Measured seconds are recorded beside it.

Decision thresholds and the rule (:data:`RULE`) are fixed here before any run. Steps to a threshold =
the first evaluated step whose FID is at or below it, per seed (None = not reached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from diffkit.atomic import write_json_atomically
from diffkit.distill.disback import DisBackConfig, DisBackTrainer
from diffkit.metrics.digits import mean_std
from diffkit.metrics.evaluators import fid_digits_evaluator
from diffkit.metrics.path_check import evaluate_path
from diffkit.pipelines import load_pipeline
from diffkit.run_state import latest_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, load_results, write_results  # noqa: E402  (sibling module of the scripts)

ROOT = Path(__file__).resolve().parent.parent

# ---- fixed before any run ------------------------------------------------------------------
ARMS = {"A": "vanilla", "B": "warm-critic", "C": "disback", "D": "delayed-teacher"}
ARM_NAMES = {"A": "A vanilla", "B": "B warm critic", "C": "C DisBack", "D": "D delayed teacher"}
#: phase 1: absolute FID-digits thresholds; phase 2: fractions of G⁰'s FID-digits (its step-0 value)
THRESHOLDS = {1: {"0.45": 0.45, "0.30": 0.30, "0.20": 0.20},
              2: {"50% G0": 0.50, "25% G0": 0.25, "10% G0": 0.10}}
#: the thresholds the verdict reads (the first of each phase is reported only)
DECISIVE = {1: ("0.30", "0.20"), 2: ("25% G0", "10% G0")}
RULE = ("Per decisive threshold and seed: C 'wins' when it reaches the threshold at fewer generator steps (and, "
        "Stage 1 included, less compute) than both B and D (an arm that misses it counts as slower; ties on the "
        "eval grid are not fewer). C supports the paper if it wins in >= 2 of 3 seeds at every decisive threshold. "
        "Otherwise: if C reaches it later than B (or not at all while B does) in >= 2 seeds at every decisive "
        "threshold, the claim fails at this scale; if C and D both beat B in >= 2 seeds and C is not faster than "
        "D in >= 2 seeds, the gain is warm-up, not the path; anything else (including a threshold no arm "
        "reaches) is inconclusive. Teacher multiples are reported, not decisive.")
#: teacher multiples reported beside the thresholds (the teacher's DDIM-50 FID-digits, read unrounded
#: from benchmarks/results/digits_quality.json)
TEACHER_MULTIPLES = (3.0, 2.0)

_SHARED = dict(batch_size=32, fake_updates=1, stage1_steps=400, stage1_extend=[800, 1200, 1600], stage1_lr=1e-5,
               path_spacing="log-progress", progress_candidates=8, path_nodes=5, steps_per_node=50,
               lr_generator=3e-5, lr_fake=1e-4, warmup_steps=50, ema_decay=0.99, eval_every=50, eval_n=1000,
               check_n=500, seeds="0,1,2")
PHASES = {1: dict(_SHARED, max_steps=1000, generator_timestep=399),
          2: dict(_SHARED, stage1_extend=[], max_steps=2000, generator_timestep=999)}  # ran before the extension
QUICK = dict(max_steps=6, batch_size=8, fake_updates=1, stage1_steps=6, stage1_extend=[8], stage1_lr=1e-5,
             path_spacing="log-progress", progress_candidates=2, path_nodes=3, steps_per_node=2, lr_generator=3e-5,
             lr_fake=1e-4, warmup_steps=2, generator_timestep=399, ema_decay=0.9, eval_every=2, eval_n=50,
             check_n=20, seeds="0,1")
#: the pilot of phase 2 (run first; its curve is recorded before the other arms run)
PILOT = ("A", 0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", type=int, choices=(1, 2), default=1,
                   help="1: generator timestep 399 (decisive); 2: timestep 999, pure-noise input (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny settings (plumbing check, about a minute on CPU)")
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--out", default=None, help="run folder (default runs/disback_convergence[_p2][_quick])")
    p.add_argument("--arms", default="A,B,C,D", help="arms to train this call (the report covers all four)")
    p.add_argument("--seeds", default=None, help="seeds to train this call (default: the phase's 0,1,2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many unfinished runs, then stop")
    p.add_argument("--stage1-only", action="store_true", help="only record and check the seeds' Stage-1 paths")
    p.add_argument("--report", action="store_true", help="only summarise finished runs")
    p.add_argument("--json", default=None, help="summary JSON (default benchmarks/results/disback_convergence.json, "
                                                "phase 2 disback_convergence_t999.json; --quick: none)")
    p.add_argument("--plot", default=None, help="plot PNG (default beside the JSON)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else PHASES[a.phase]
    for k, v in base.items():
        if k != "seeds":  # --seeds picks this call's subset of the phase's seeds
            setattr(a, k, v)
    a.all_seeds = [int(s) for s in str(base["seeds"]).split(",")]
    a.seed_list = a.all_seeds if a.seeds is None else [int(s) for s in a.seeds.split(",")]
    a.arm_list = [s.strip() for s in a.arms.split(",")]
    bad = [x for x in a.arm_list if x not in ARMS]
    if bad:
        p.error(f"--arms: unknown arm(s) {bad}; accepted: {', '.join(ARMS)}")
    bad = [s for s in a.seed_list if s not in a.all_seeds]
    if bad:
        p.error(f"--seeds: {bad} not in the phase's seeds {a.all_seeds}")
    name = "disback_convergence" + ("" if a.phase == 1 else "_t999")
    suffix = ("" if a.phase == 1 else "_p2") + ("_quick" if a.quick else "")
    a.out = Path(a.out or ROOT / "runs" / f"disback_convergence{suffix}")
    a.json = Path(a.json) if a.json else default_json(name, a.quick)
    a.plot = Path(a.plot) if a.plot else (a.json or a.out / f"{name}.json").with_suffix(".png")
    return a


def teacher_fid() -> dict | None:
    """The teacher's DDIM-50 FID-digits from its committed results file (unrounded), or None."""
    try:
        d = load_results("digits_quality")
    except FileNotFoundError:
        return None
    return {"fid": d["summary"]["fid"][0], "std": d["summary"]["fid"][1], "n": d["n"], "seeds": d["seeds"],
            "sampler": d["sampler"], "source": "benchmarks/results/digits_quality.json"}


def stage1_cost_ratio(fake_updates: int) -> float:
    """Generator-step equivalents of one Stage-1 step (pass-count model in the module docstring)."""
    return 4.0 / (4.0 * fake_updates + 5.0)


def config(a, arm: str, seed: int, stage1_steps: int | None = None):
    """The arm's DisBackConfig (``stage1_steps``: the seed's Stage-1 length, default the phase's first)."""
    return DisBackConfig(mode=ARMS[arm], max_steps=a.max_steps, batch_size=a.batch_size, fake_updates=a.fake_updates,
                         stage1_steps=a.stage1_steps if stage1_steps is None else stage1_steps,
                         stage1_lr=a.stage1_lr, path_spacing=a.path_spacing,
                         progress_candidates=a.progress_candidates, path_nodes=a.path_nodes,
                         steps_per_node=a.steps_per_node, lr_generator=a.lr_generator, lr_fake=a.lr_fake,
                         warmup_steps=a.warmup_steps, generator_timestep=a.generator_timestep,
                         ema_decay=a.ema_decay, seed=seed, eval_every=a.eval_every,
                         checkpoint_every=a.eval_every * 2, keep_checkpoints=1, progress=False)


def stage1_lengths(a) -> list[int]:
    """The Stage-1 lengths tried in turn for a seed: the phase's ``stage1_steps``, then ``stage1_extend``."""
    return [a.stage1_steps, *a.stage1_extend]


def stage1_files(a, seed: int, steps: int) -> tuple[Path, Path]:
    """(Stage-1 folder, path-check JSON) of one seed and length (the first length keeps the plain names)."""
    tag = "" if steps == a.stage1_steps else f"-{steps}"
    return a.out / f"stage1-seed{seed}{tag}", a.out / f"path-check-seed{seed}{tag}.json"


def chosen_length(a, seed: int) -> int | None:
    """The seed's Stage-1 length: the first whose path check accepted (else the last), None while unknown."""
    lengths = stage1_lengths(a)
    for steps in lengths:
        f = stage1_files(a, seed, steps)[1]
        if not f.exists():
            return None
        if json.loads(f.read_text())["accepted"]:
            return steps
    return lengths[-1]


def seed_path(a, pipe, seed: int) -> tuple:
    """The seed's Stage-1 path shared by B, C and D: recorded at the first length, re-recorded at the next
    length of ``stage1_extend`` while the path check rejects it (the last one is walked even if rejected)."""
    for steps in stage1_lengths(a):
        m, check = stage1(a, pipe, seed, steps)
        if check["accepted"]:
            break
    return m, check


def attempt(steps: int, check: dict) -> dict:
    """One Stage-1 recording's check in brief: its length, verdict, failed criteria, last node's distance to G⁰
    and the end limit."""
    end = check["criteria"]["end"]
    return {"stage1_steps": steps, "accepted": check["accepted"], "failed": check["failed"],
            "last_fd_g0": end["value"], "end_limit": end["limit"]}


def stage1(a, pipe, seed: int, steps: int | None = None) -> tuple:
    """One Stage-1 recording of the seed (``steps`` long, default the first length; resumable) and its path
    check (run once)."""
    steps = a.stage1_steps if steps is None else steps
    folder, f = stage1_files(a, seed, steps)
    rec = DisBackTrainer(pipe.unet, pipe.scheduler.config, config(a, "C", seed, steps), folder, cpu=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = rec.run_stage1()
    if not f.exists():
        check = evaluate_path(m, pipe, a.generator_timestep, n=a.check_n, seed=seed)
        check["stage1_wall_s"] = float(m.info.get("wall_time_s", time.perf_counter() - t0))
        check["stage1_cpu_s_this_call"] = time.process_time() - c0
        check["node_steps"] = [n["step"] for n in m.nodes]
        write_json_atomically(f, check)
        print(f"[stage 1 seed {seed}, {steps} steps] nodes at {check['node_steps']}; path check "
              f"{'accepted' if check['accepted'] else 'FAILED ' + ','.join(check['failed'])}", flush=True)
    return m, json.loads(f.read_text())


def run_one(a, pipe, evaluators, arm: str, seed: int) -> dict:
    """Train (or resume) one arm × seed; returns and stores its result record."""
    cfg = config(a, arm, seed)
    stage1_dir, t1 = None, 0.0
    if cfg.needs_path:
        m, _ = seed_path(a, pipe, seed)
        cfg = config(a, arm, seed, int(m.info["stage1_steps"]))
        stage1_dir, t1 = m.directory, float(m.info.get("wall_time_s", 0.0))
    if seed not in evaluators:
        evaluators[seed] = fid_digits_evaluator(n=a.eval_n, seed=seed)
    run_dir = a.out / f"{arm}-seed{seed}"
    tr = DisBackTrainer(pipe.unet, pipe.scheduler.config, cfg, run_dir, stage1_dir=stage1_dir,
                        evaluator=evaluators[seed], cpu=True)
    c0 = time.process_time()
    tr.fit(resume="latest" if latest_checkpoint(run_dir) else None)  # continue an interrupted run
    rec = {"arm": arm, "mode": cfg.mode, "seed": seed, "evals": tr.evals, "stage2_wall_s": round(tr.wall_time_s, 1),
           "stage2_cpu_s_this_call": round(time.process_time() - c0, 1),
           "stage1_wall_s": round(t1, 1), "stage1_steps": cfg.stage1_steps if cfg.needs_path else 0,
           "switches": [{"step": s["step"], "node": s["node"]} for s in tr.switches],
           "fake_loss_last50": sum(r["loss_fake"] for r in tr.log[-50:]) / max(len(tr.log[-50:]), 1),
           "settings": settings(a)}
    write_json_atomically(a.out / "results" / f"{arm}-seed{seed}.json", rec)
    return rec


def settings(a) -> dict:
    keys = [k for k in (QUICK if a.quick else PHASES[a.phase]) if k != "seeds"]
    return {k: getattr(a, k) for k in keys} | {"seeds": a.all_seeds, "teacher": str(a.teacher), "phase": a.phase}


#: settings only Stage 1 reads: arm A (vanilla, no Stage 1) never reads them, so its runs stay valid when they change
STAGE1_KEYS = ("stage1_steps", "stage1_extend", "stage1_lr", "path_spacing", "progress_candidates")
#: the Stage-1 length settings: B, C and D are checked against the length their seed's path took instead
LENGTH_KEYS = ("stage1_steps", "stage1_extend")


def same_settings(recorded, current: dict, arm: str) -> bool:
    """Whether a finished run was made with the current settings, apart from the Stage-1 keys for arm A and
    the Stage-1 length keys for B, C and D (whose record's ``stage1_steps`` must be the seed's chosen length)."""
    if not isinstance(recorded, dict):
        return False
    skip = STAGE1_KEYS if ARMS[arm] == "vanilla" else LENGTH_KEYS
    strip = lambda d: {k: v for k, v in d.items() if k not in skip}  # noqa: E731
    return strip(recorded) == strip(current)


# ---------------------------------------------------------------------------- analysis
def steps_to(curve, thr):
    """First evaluated step with FID <= thr, or None."""
    for s, f in curve:
        if f <= thr:
            return s
    return None


def auc(curve, horizon):
    """Mean FID over [0, horizon] (trapezoid, linear interpolation; the curve must start at 0)."""
    import numpy as np

    xs = np.array([c[0] for c in curve], dtype=float)
    ys = np.array([c[1] for c in curve], dtype=float)
    grid = np.linspace(0.0, horizon, 1001)
    vals = np.interp(grid, xs, ys)
    return float(np.trapezoid(vals, grid) / horizon)


def compute_curve(rec, ratio):
    """FID against total compute in generator-step equivalents; G⁰'s FID holds during Stage 1."""
    off = rec["stage1_steps"] * ratio
    pts = [(e["step"] + off, e["fid"]) for e in rec["evals"]]
    return ([(0.0, pts[0][1])] if off > 0 else []) + pts


def _ms(v):
    """mean_std over the values present (a threshold not reached gives None)."""
    v = [x for x in v if x is not None]
    return mean_std(v) if v else (None, None)


def _speedups(num, den, seeds, n_boot=2000):
    """Paired per-seed ratios num/den, and the ratio of means with a seed-bootstrap 95 % CI."""
    import numpy as np

    pairs = [(num[s], den[s]) for s in seeds if num.get(s) is not None and den.get(s) is not None and den[s] > 0]
    out = {"pairs": len(pairs), "per_seed": [p / q for p, q in pairs], "mean": None, "std": None,
           "ratio_of_means": None, "ci95": None}
    if not pairs:
        return out
    r = np.array(out["per_seed"])
    out["mean"], out["std"] = float(r.mean()), float(r.std(ddof=1)) if len(r) > 1 else 0.0
    P = np.array(pairs, dtype=float)
    out["ratio_of_means"] = float(P[:, 0].mean() / P[:, 1].mean())
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(P), size=(n_boot, len(P)))
    boot = P[idx, 0].mean(1) / P[idx, 1].mean(1)
    out["ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


def thresholds(a, g0_fid: float | None) -> dict:
    """The phase's decision thresholds (phase 2: fractions of G⁰'s FID-digits), then teacher multiples."""
    base = THRESHOLDS[1 if a.quick else a.phase]
    if a.phase == 2 and not a.quick:
        thr = {k: f * g0_fid for k, f in base.items()} if g0_fid is not None else {}
    else:
        thr = dict(base)
    t = teacher_fid()
    if t is not None:
        thr.update({f"{f:g}x teacher": f * t["fid"] for f in TEACHER_MULTIPLES})
    return thr


def _fewer(x, y) -> bool:
    """x reaches the threshold at strictly fewer steps than y (None = not reached)."""
    return x is not None and (y is None or x < y)


def verdict(arms: dict, decisive, seeds) -> dict:
    """:data:`RULE` applied to the per-seed steps to threshold (``arms[arm]["thresholds"][name]["steps"]``)."""
    per = {}
    for name in decisive:
        st = {arm: arms[arm]["thresholds"][name]["steps"] for arm in ("B", "C", "D")}
        g = lambda arm, s: st[arm].get(s, st[arm].get(str(s)))  # noqa: E731 (JSON keys are strings)
        per[name] = {
            "C wins": sum(_fewer(g("C", s), g("B", s)) and _fewer(g("C", s), g("D", s)) for s in seeds),
            "C slower than B": sum(_fewer(g("B", s), g("C", s)) for s in seeds),
            "D beats B": sum(_fewer(g("D", s), g("B", s)) for s in seeds),
            "C beats B": sum(_fewer(g("C", s), g("B", s)) for s in seeds),
            "C not faster than D": sum(not _fewer(g("C", s), g("D", s)) for s in seeds),
            "reached by any of B/C/D": sum(any(g(x, s) is not None for x in ("B", "C", "D")) for s in seeds)}
    need = 2 if len(seeds) >= 3 else len(seeds)
    if all(v["C wins"] >= need for v in per.values()):
        out = "supports the paper: C reaches the decisive thresholds in fewer steps than both B and D"
    elif all(v["C slower than B"] >= need for v in per.values()):
        out = "the claim fails at this scale: C is slower than B"
    elif all(v["C beats B"] >= need and v["D beats B"] >= need and v["C not faster than D"] >= need
             for v in per.values()):
        out = "the gain is warm-up, not the path: C and D both beat B, and C is not faster than D"
    else:
        out = "inconclusive"
    return {"verdict": out, "counts": per, "needed_seeds": need, "rule": RULE}


def summarise(a, recs: list[dict], checks: dict) -> dict:
    import numpy as np

    ratio = stage1_cost_ratio(a.fake_updates)
    by = {arm: {r["seed"]: r for r in recs if r["arm"] == arm} for arm in ARMS}
    g0 = [r["evals"][0]["fid"] for runs in by.values() for r in runs.values() if r["evals"][0]["step"] == 0]
    g0_fid = float(np.mean(g0)) if g0 else None
    thr = thresholds(a, g0_fid)
    arms = {}
    for arm, runs in by.items():
        if not runs:
            continue
        steps = [e["step"] for e in next(iter(runs.values()))["evals"]]
        fids = np.array([[e["fid"] for e in r["evals"]] for r in runs.values()])
        curves = {s: [(e["step"], e["fid"]) for e in r["evals"]] for s, r in runs.items()}
        ccurves = {s: compute_curve(r, ratio) for s, r in runs.items()}
        T = a.max_steps
        entry = {"seeds": sorted(runs), "steps": steps, "fid_mean": fids.mean(0).tolist(),
                 "fid_std": (fids.std(0, ddof=1) if len(runs) > 1 else 0 * fids[0]).tolist(),
                 "fid_per_seed": {s: [e["fid"] for e in r["evals"]] for s, r in runs.items()},
                 "top1_final": _ms([r["evals"][-1]["top1"] for r in runs.values()]),
                 "final_fid": _ms([r["evals"][-1]["fid"] for r in runs.values()]),
                 "best_fid": _ms([min(e["fid"] for e in r["evals"]) for r in runs.values()]),
                 "auc_steps": _ms([auc(c, T) for c in curves.values()]),
                 "auc_compute": _ms([auc(c, T) for c in ccurves.values()]),
                 "stage1_gen_step_equiv": {s: r["stage1_steps"] * ratio for s, r in runs.items()},
                 "stage1_wall_s": _ms([r["stage1_wall_s"] for r in runs.values()]),
                 "stage2_wall_s": _ms([r["stage2_wall_s"] for r in runs.values()]),
                 "thresholds": {}}
        for name, t in thr.items():
            it = {s: steps_to(c, t) for s, c in curves.items()}
            ct = {s: steps_to(c, t) for s, c in ccurves.items()}
            entry["thresholds"][name] = {"value": t, "steps": it, "compute": ct,
                                         "reached": sum(v is not None for v in it.values())}
        arms[arm] = entry
    speed = {}
    for other in ("A", "B", "D"):
        if "C" in arms and other in arms:
            for name in thr:
                for axis in ("steps", "compute"):
                    o = arms[other]["thresholds"][name][axis]
                    c = arms["C"]["thresholds"][name][axis]
                    speed[f"C vs {other} | {name} | {axis}"] = _speedups(o, c, a.all_seeds)
    decisive = DECISIVE[1 if a.quick else a.phase]
    complete = [s for s in a.all_seeds if all(s in by[x] for x in "BCD")]  # seeds whose B, C and D all ran
    ver = (verdict(arms, decisive, complete) if complete and all(k in thr for k in decisive)
           else {"verdict": "not all arms ran", "rule": RULE})
    ver["seeds"] = complete
    return {"thresholds": thr, "decisive": list(decisive), "g0_fid": g0_fid, "teacher_fid_ddim50": teacher_fid(),
            "arms": arms, "speedups": speed, "verdict": ver, "stage1_step_in_gen_steps": ratio,
            "path_checks": checks,
            "paths_accepted": {s: c["accepted"] for s, c in checks.items()}}


def print_table(summary, a) -> None:
    def f(ms, fmt="{:.3f}"):
        m, s = ms
        return "n/a" if m is None else (fmt + " ± " + fmt).format(m, s)

    print(f"FID-digits of the EMA generator, n = {a.eval_n} per eval, seeds {a.seed_list}; "
          f"{a.max_steps} generator steps; Stage-1 step = {summary['stage1_step_in_gen_steps']:.3f} generator steps")
    print(f"{'arm':<18} {'final FID':>16} {'top-1':>14} {'AUC (steps)':>16} {'AUC (compute)':>16} {'Stage 1 (s)':>12}")
    for arm, e in summary["arms"].items():
        print(f"{ARM_NAMES[arm]:<18} {f(e['final_fid']):>16} {f(e['top1_final']):>14} {f(e['auc_steps']):>16} "
              f"{f(e['auc_compute']):>16} {f(e['stage1_wall_s'], '{:.0f}'):>12}")
    print("\nsteps to threshold per seed (generator steps | total compute in generator-step equivalents):")
    for name, t in summary["thresholds"].items():
        cells = []
        for arm, e in summary["arms"].items():
            th = e["thresholds"][name]
            st = [th["steps"][s] for s in e["seeds"]]
            ct = [th["compute"][s] for s in e["seeds"]]
            cells.append(f"{arm}: {st} | {[None if v is None else round(v) for v in ct]}")
        print(f"  {name} (FID ≤ {t:.4f}):  " + ";  ".join(cells))
    print("\nspeed-up (iterations of A, B or D / iterations of C; per-seed mean ± std, ratio of means "
          "[95% bootstrap CI]):")
    unreached = []
    for k, v in summary["speedups"].items():
        if v["pairs"]:
            print(f"  {k}: {v['mean']:.2f} ± {v['std']:.2f} (pairs {v['pairs']}); {v['ratio_of_means']:.2f} "
                  f"[{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]")
        else:
            unreached.append(k)
    if unreached:
        print(f"  not reached by both arms in any seed: {'; '.join(unreached)}")


def markdown(summary, a) -> str:
    """The README's table for this phase (every number is a value of the results JSON at this rounding)."""
    def steps(v):
        return ", ".join("–" if x is None else str(x) for x in v)

    names = [k for k in summary["thresholds"] if "teacher" not in k]
    cols = [s for s in (100, 200, 500) if s < a.max_steps]
    head = (["arm"] + [f"FID @{s}" for s in cols] + [f"final @{a.max_steps}", "top-1"]
            + [f"steps to {n}" for n in names])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, e in summary["arms"].items():
        at = {s: m for s, m in zip(e["steps"], e["fid_mean"])}
        cells = [f"{at[s]:.3f}" for s in cols] + [f"{e['final_fid'][0]:.3f} ± {e['final_fid'][1]:.3f}",
                                                   f"{e['top1_final'][0]:.3f}"]
        cells += [steps([e["thresholds"][n]["steps"].get(s, e["thresholds"][n]["steps"].get(str(s)))
                         for s in e["seeds"]]) for n in names]
        lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green", "D": "tab:red"}
    for arm, e in summary["arms"].items():
        x = np.array(e["steps"], dtype=float)
        m, s = np.array(e["fid_mean"]), np.array(e["fid_std"])
        s1 = e["stage1_gen_step_equiv"]  # per seed (a seed's path may be longer): the mean curve sits at the mean
        for ax, off in ((axes[0], 0.0), (axes[1], float(np.mean(list(s1.values()))))):
            ax.plot(x + off, m, "-o", ms=3, color=colors[arm], label=ARM_NAMES[arm])
            ax.fill_between(x + off, np.maximum(m - s, 1e-4), m + s, color=colors[arm], alpha=0.2)
            if off:
                ax.plot([0, off], [m[0], m[0]], ":", color=colors[arm])
    for ax in axes:
        for name, t in summary["thresholds"].items():
            ax.axhline(t, color="grey", lw=0.7, ls="--")
            ax.text(0, t, f" {name}", fontsize=7, va="bottom", color="grey")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("generator steps")
    axes[1].set_xlabel("compute incl. Stage 1 (generator-step equiv., seeds' mean Stage 1)")
    axes[0].set_ylabel(f"FID-digits (EMA generator, n={a.eval_n})")
    axes[0].legend()
    fig.suptitle(f"Phase {a.phase} (generator timestep {a.generator_timestep}): DisBack vs its controls on the digits "
                 f"teacher (mean ± std over seeds {a.all_seeds})")
    fig.tight_layout()
    a.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=110)
    plt.close(fig)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t0 = time.perf_counter()
    recs, todo = [], []
    for seed in a.all_seeds:
        for arm in ARMS:
            f = a.out / "results" / f"{arm}-seed{seed}.json"
            if f.exists():
                r = json.loads(f.read_text())
                if not same_settings(r.get("settings"), settings(a), arm) or (
                        arm != "A" and r.get("stage1_steps") != chosen_length(a, seed)):
                    raise SystemExit(f"{f} was made with other settings (or another Stage-1 length than seed "
                                     f"{seed}'s path took: {chosen_length(a, seed)}); delete it, or use --out")
                recs.append(r)
            elif seed in a.seed_list and arm in a.arm_list:
                todo.append((arm, seed))
    if a.phase == 2 and PILOT in todo:  # the pre-registered pilot runs first
        todo.remove(PILOT)
        todo.insert(0, PILOT)
    if not a.report:
        pipe = load_pipeline(a.teacher)
        pipe.set_progress_bar_config(disable=True)
        if a.stage1_only:
            for seed in a.seed_list:
                seed_path(a, pipe, seed)
            return 0
        evaluators = {}
        for i, (arm, seed) in enumerate(todo):
            if a.max_runs is not None and i >= a.max_runs:
                break
            t = time.perf_counter()
            recs.append(run_one(a, pipe, evaluators, arm, seed))
            e = recs[-1]["evals"][-1]
            print(f"[{arm} seed {seed}] FID {e['fid']:.4f} top-1 {e['top1']:.3f} at step {e['step']} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    lengths = {s: chosen_length(a, s) for s in a.all_seeds}
    checks = {s: json.loads(stage1_files(a, s, n)[1].read_text()) for s, n in lengths.items() if n is not None}
    attempts = {s: [attempt(n, json.loads(f.read_text())) for n in stage1_lengths(a)
                    if (f := stage1_files(a, s, n)[1]).exists()] for s in a.all_seeds}
    done = {(r["arm"], r["seed"]) for r in recs}
    missing = [(arm, s) for s in a.all_seeds for arm in ARMS if (arm, s) not in done]
    if missing and not (a.report and a.phase == 2):
        print(f"{len(missing)} run(s) still to do: {missing}; rerun to continue")
        return 0
    partial = {f"{arm}-seed{s}": json.loads(f.read_text()) for arm, s in missing
               if (f := a.out / f"{arm}-seed{s}" / "evals.json").is_file()}  # unfinished runs' curves so far
    summary = summarise(a, recs, checks)
    summary["path_attempts"] = attempts
    summary["stage1_steps_per_seed"] = lengths
    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    out = {"phase": a.phase, "settings": settings(a), "machine": machine, "missing_runs": missing,
           "unfinished_runs": partial,
           "wall_s_this_session": round(time.perf_counter() - t0, 1),
           "total_train_wall_s": round(sum(r["stage2_wall_s"] for r in recs) +
                                       sum({r["seed"]: r["stage1_wall_s"] for r in recs}.values()), 1),
           **summary, "runs": recs}
    if a.phase == 2 and not a.quick:  # the pre-registered pilot (arm A, seed 0): its curve against the thresholds
        arm, seed = PILOT
        run = next((r for r in recs if (r["arm"], r["seed"]) == PILOT), None)
        evals = run["evals"] if run else partial.get(f"{arm}-seed{seed}")
        if evals:
            g0 = evals[0]["fid"]
            thr = {k: f * g0 for k, f in THRESHOLDS[2].items()}
            curve = [(e["step"], e["fid"]) for e in evals]
            out["pilot"] = {"run": f"{arm}-seed{seed}", "finished": run is not None, "g0_fid": g0,
                            "last_step": evals[-1]["step"], "last_fid": evals[-1]["fid"],
                            "best_fid": min(e["fid"] for e in evals), "thresholds": thr,
                            "steps_to": {k: steps_to(curve, t) for k, t in thr.items()}}
    if a.json:
        write_results(out, a.json, script=__file__, argv=argv)
    print_table(summary, a)
    print("\n" + markdown(summary, a))
    print(f"\nverdict: {summary['verdict']['verdict']}")
    print(f"paths accepted by the path check: {summary['paths_accepted']}")
    if missing:
        print(f"(partial: {len(missing)} run(s) missing: {missing})")
    plot(summary, a)
    print(f"\nmachine: {machine}; wrote {a.json or '(no JSON: --quick without --json)'} and {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
