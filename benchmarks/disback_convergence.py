"""Does the DisBack path speed up convergence? Arms A vanilla / B warm critic / C DisBack.

    diffkit bench disback_convergence              # full run (resumable: rerun to continue)
    diffkit bench disback_convergence --max-runs 3 # at most 3 runs this session, then stop
    diffkit bench disback_convergence --quick --json X.json  # tiny settings, about a minute; CI plumbing check
    diffkit bench disback_convergence --report     # only summarise the finished runs

Full size: 9 runs, about 40 CPU-minutes of training plus evaluation on this 2-core machine
(1 thread; 39 min measured on the shared machine), outside the ~2 CPU-hour regeneration budget.

One code path (``DisBackTrainer``), identical hyper-parameters; the arms differ only in the
fake-score initialisation and the target (the warm-critic arm B separates DisBack's two changes;
docs/methods/disback.md):

=====  ==========================  ===============================================
arm    fake score init             target
=====  ==========================  ===============================================
A      teacher                     teacher                       (``vanilla``)
B      last Stage-1 node s'_N      teacher                       (``warm-critic``)
C      last Stage-1 node s'_N      s'_{N-1} … s'_1 (K2 steps each), then teacher
=====  ==========================  ===============================================

B and C of one seed share that seed's Stage-1 path. Every arm is evaluated at the same
pre-registered generator steps (every ``--eval-every``) with FID-digits of the EMA
generator: n class-balanced one-step samples, sample noise seed = the run's seed, so A, B
and C of one seed see the same noise. Cost: generator steps, and total compute including
Stage 1 in generator-step equivalents under a pass-count model (forward = 1, backward = 2):
a Stage-1 step = G⁰ forward + fake forward/backward = 4; a Stage-2 step with F fake updates
= F·4 + generator forward/backward (3) + fake and target forwards (2) = 4F + 5. Measured
seconds are recorded beside it.

Thresholds are fixed here, before any result: multiples of the teacher's DDIM-50 FID-digits
at n = 1000 (0.036 ± 0.008, seeds 0-2, assets/digits-unet/README.md), plus the rule
"1.1 × arm A's final mean FID". Iterations to a threshold = the first evaluated
step whose FID is at or below it (per seed; ``None`` = not reached within the run);
speed-up = iterations(A or B) / iterations(C), per seed (paired) and as the ratio of seed
means with a bootstrap 95 % interval over seeds.

Results: ``<out>/results/<arm>-seed<k>.json`` per finished run (a rerun skips those and
resumes unfinished ones from the trainer's checkpoints), the summary in
benchmarks/results/disback_convergence.json (with its provenance, through ``_results.write_results``)
and the plot disback_convergence.png; ``--quick`` writes a summary only to an explicit ``--json``.
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
from diffkit.pipelines import load_pipeline
from diffkit.run_state import latest_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, write_results  # noqa: E402  (sibling module of the scripts)

ROOT = Path(__file__).resolve().parent.parent

# ---- fixed before any result -------------------------------------------------------------
TEACHER_FID_DDIM50 = 0.036          # FID-digits of the teacher's DDIM-50 samples, n = 1000, seeds 0,1,2
TEACHER_FID_N = 1000
THRESHOLD_FACTORS = (3.0, 2.0, 1.5)  # -> 0.108, 0.072, 0.054
FINAL_A_FACTOR = 1.1                 # relative threshold: 1.1 × arm A's final mean FID
ARMS = {"A": "vanilla", "B": "warm-critic", "C": "disback"}
ARM_NAMES = {"A": "A vanilla", "B": "B warm critic", "C": "C DisBack"}

# Hyper-parameters of the full experiment, shared by every arm (chosen by a short vanilla sweep of
# generator timestep and learning rates; see the README section).
FULL = dict(max_steps=1000, batch_size=32, fake_updates=1, stage1_steps=400, path_nodes=5, steps_per_node=100,
            lr_generator=3e-5, lr_fake=1e-4, warmup_steps=50, generator_timestep=399, ema_decay=0.99,
            eval_every=100, eval_n=1000, seeds="0,1,2")
QUICK = dict(max_steps=6, batch_size=8, fake_updates=1, stage1_steps=4, path_nodes=2, steps_per_node=2,
             lr_generator=3e-5, lr_fake=1e-4, warmup_steps=2, generator_timestep=399, ema_decay=0.9,
             eval_every=3, eval_n=50, seeds="0,1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings (plumbing check, about a minute on CPU)")
    p.add_argument("--teacher", default="digits-unet", help="teacher folder or asset name")
    p.add_argument("--out", default=None, help="run folder (default runs/disback_convergence[_quick])")
    p.add_argument("--arms", default="A,B,C")
    for k, v in FULL.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v} (quick {QUICK[k]})")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many unfinished runs, then stop")
    p.add_argument("--report", action="store_true", help="only summarise finished runs")
    p.add_argument("--json", default=None,
                   help="summary JSON (default benchmarks/results/disback_convergence.json; --quick: none)")
    p.add_argument("--plot", default=None, help="plot PNG (default beside the JSON)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    suffix = "_quick" if a.quick else ""
    a.out = Path(a.out or ROOT / "runs" / f"disback_convergence{suffix}")
    a.json = Path(a.json) if a.json else default_json("disback_convergence", a.quick)
    a.plot = Path(a.plot) if a.plot else (a.json or a.out / "disback_convergence.json").with_suffix(".png")
    a.seed_list = [int(s) for s in str(a.seeds).split(",")]
    a.arm_list = [s.strip() for s in a.arms.split(",")]
    bad = [x for x in a.arm_list if x not in ARMS]
    if bad:
        p.error(f"--arms: unknown arm(s) {bad}; accepted: {', '.join(ARMS)}")
    if a.eval_n % 10:
        p.error(f"--eval-n must be a multiple of 10 (class-balanced sets), got {a.eval_n}")
    return a


def thresholds() -> dict:
    return {f"{f:g}x teacher": f * TEACHER_FID_DDIM50 for f in THRESHOLD_FACTORS}


def stage1_cost_ratio(fake_updates: int) -> float:
    """Generator-step equivalents of one Stage-1 step (pass-count model in the module docstring)."""
    return 4.0 / (4.0 * fake_updates + 5.0)


def config(a, arm: str, seed: int):
    return DisBackConfig(mode=ARMS[arm], max_steps=a.max_steps, batch_size=a.batch_size, fake_updates=a.fake_updates,
                         stage1_steps=a.stage1_steps, path_nodes=a.path_nodes, steps_per_node=a.steps_per_node,
                         lr_generator=a.lr_generator, lr_fake=a.lr_fake, warmup_steps=a.warmup_steps,
                         generator_timestep=a.generator_timestep, ema_decay=a.ema_decay, seed=seed,
                         eval_every=a.eval_every, checkpoint_every=a.eval_every * 2, keep_checkpoints=1,
                         progress=False)


def run_one(a, pipe, evaluators, arm: str, seed: int) -> dict:
    """Train (or resume) one arm × seed; returns and stores its result record."""
    cfg = config(a, arm, seed)
    stage1 = None
    t1 = 0.0
    if cfg.needs_path:  # the seed's shared Stage-1 path (recorded once, resumable)
        rec = DisBackTrainer(pipe.unet, pipe.scheduler.config, config(a, "C", seed), a.out / f"stage1-seed{seed}",
                             cpu=True)
        m = rec.run_stage1()
        stage1 = m.directory
        t1 = float(m.info.get("wall_time_s", 0.0))
    if seed not in evaluators:
        evaluators[seed] = fid_digits_evaluator(n=a.eval_n, seed=seed)
    run_dir = a.out / f"{arm}-seed{seed}"
    tr = DisBackTrainer(pipe.unet, pipe.scheduler.config, cfg, run_dir, stage1_dir=stage1,
                        evaluator=evaluators[seed], cpu=True)
    tr.fit(resume="latest" if latest_checkpoint(run_dir) else None)  # continue an interrupted run
    rec = {"arm": arm, "mode": cfg.mode, "seed": seed, "evals": tr.evals, "stage2_wall_s": round(tr.wall_time_s, 1),
           "stage1_wall_s": round(t1, 1), "stage1_steps": cfg.stage1_steps if cfg.needs_path else 0,
           "switches": [{"step": s["step"], "node": s["node"]} for s in tr.switches],
           "fake_loss_last50": sum(r["loss_fake"] for r in tr.log[-50:]) / max(len(tr.log[-50:]), 1),
           "settings": settings(a)}
    write_json_atomically(a.out / "results" / f"{arm}-seed{seed}.json", rec)
    return rec


def settings(a) -> dict:
    return {k: getattr(a, k) for k in FULL if k != "seeds"} | {"seeds": a.seed_list, "teacher": str(a.teacher)}


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


def summarise(a, recs: list[dict]) -> dict:
    import numpy as np

    ratio = stage1_cost_ratio(a.fake_updates)
    by = {arm: {r["seed"]: r for r in recs if r["arm"] == arm} for arm in a.arm_list}
    thr = thresholds()
    finals_A = [r["evals"][-1]["fid"] for r in by.get("A", {}).values()]
    if finals_A:
        thr[f"{FINAL_A_FACTOR:g}x final A"] = FINAL_A_FACTOR * float(np.mean(finals_A))
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
                 "top1_final": _ms([r["evals"][-1]["top1"] for r in runs.values()]),
                 "final_fid": _ms([r["evals"][-1]["fid"] for r in runs.values()]),
                 "auc_steps": _ms([auc(c, T) for c in curves.values()]),
                 "auc_compute": _ms([auc(c, T) for c in ccurves.values()]),
                 "stage1_gen_step_equiv": next(iter(runs.values()))["stage1_steps"] * ratio,
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
    for other in ("A", "B"):
        if "C" in arms and other in arms:
            for name in thr:
                for axis in ("steps", "compute"):
                    o = arms[other]["thresholds"][name][axis]
                    c = arms["C"]["thresholds"][name][axis]
                    speed[f"C vs {other} | {name} | {axis}"] = _speedups(o, c, a.seed_list)
    return {"thresholds": thr, "arms": arms, "speedups": speed, "stage1_step_in_gen_steps": ratio}


def print_table(summary, a) -> None:
    def f(ms, fmt="{:.3f}"):
        m, s = ms
        return "n/a" if m is None else (fmt + " ± " + fmt).format(m, s)

    print(f"FID-digits of the EMA generator, n = {a.eval_n} per eval, seeds {a.seed_list}; "
          f"{a.max_steps} generator steps; Stage-1 step = {summary['stage1_step_in_gen_steps']:.3f} generator steps")
    print(f"{'arm':<14} {'final FID':>16} {'top-1':>14} {'AUC (steps)':>16} {'AUC (compute)':>16} {'Stage 1 (s)':>12}")
    for arm, e in summary["arms"].items():
        print(f"{ARM_NAMES[arm]:<14} {f(e['final_fid']):>16} {f(e['top1_final']):>14} {f(e['auc_steps']):>16} "
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
    print("\nspeed-up (iterations of A or B / iterations of C; per-seed mean ± std, ratio of means "
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


def plot(summary, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
    for arm, e in summary["arms"].items():
        x = np.array(e["steps"], dtype=float)
        m, s = np.array(e["fid_mean"]), np.array(e["fid_std"])
        for ax, off in ((axes[0], 0.0), (axes[1], e["stage1_gen_step_equiv"])):
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
    axes[1].set_xlabel("total compute incl. Stage 1 (generator-step equivalents)")
    axes[0].set_ylabel(f"FID-digits (EMA generator, n={a.eval_n})")
    axes[0].legend()
    fig.suptitle(f"DisBack vs warm critic vs vanilla on the digits teacher (mean ± std over seeds {a.seed_list})")
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
    for seed in a.seed_list:
        for arm in a.arm_list:
            f = a.out / "results" / f"{arm}-seed{seed}.json"
            if f.exists():
                r = json.loads(f.read_text())
                if r.get("settings") != settings(a):
                    raise SystemExit(f"{f} was made with other settings; delete {a.out} or use --out")
                recs.append(r)
            else:
                todo.append((arm, seed))
    if not a.report:
        pipe = load_pipeline(a.teacher)
        evaluators = {}
        for i, (arm, seed) in enumerate(todo):
            if a.max_runs is not None and i >= a.max_runs:
                break
            t = time.perf_counter()
            recs.append(run_one(a, pipe, evaluators, arm, seed))
            e = recs[-1]["evals"][-1]
            print(f"[{arm} seed {seed}] FID {e['fid']:.4f} top-1 {e['top1']:.3f} at step {e['step']} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
    done = {(r["arm"], r["seed"]) for r in recs}
    missing = [(arm, s) for s in a.seed_list for arm in a.arm_list if (arm, s) not in done]
    if missing:
        print(f"{len(missing)} run(s) still to do: {missing}; rerun to continue")
        return 0
    summary = summarise(a, recs)
    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    out = {"teacher_fid_ddim50": {"fid": TEACHER_FID_DDIM50, "n": TEACHER_FID_N}, "settings": settings(a),
           "machine": machine, "wall_s_this_session": round(time.perf_counter() - t0, 1),
           "total_train_wall_s": round(sum(r["stage2_wall_s"] for r in recs) +
                                       sum({r["seed"]: r["stage1_wall_s"] for r in recs}.values()), 1),
           **summary, "runs": recs}
    if a.json:
        write_results(out, a.json, script=__file__, argv=argv)
    print_table(summary, a)
    plot(summary, a)
    print(f"\nmachine: {machine}; wrote {a.json or '(no JSON: --quick without --json)'} and {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
