"""Which one-step generator ships? Held-out FID-digits of candidate generators against the teacher.

    diffkit bench onestep_heldout --models assets/digits-onestep,runs/digits-onestep-disback-export
    python benchmarks/onestep_heldout.py --quick --json /tmp/h.json   # small n, a smoke run

Issue #20 item 5: the shipped warm-critic generator and the DisBack-trained one (same step budget and
learning-rate schedule) are scored on seeds 3, 4, 5 — seeds never used to choose a checkpoint or a
setting (training looked at seed 0 only) — with the FID-digits protocol ``fid-digits/v1`` (n = 1000
class-balanced one-step samples per seed, sample k's noise from (seed, k); train-split reference
statistics; feature-net top-1), beside the teacher's DDIM-50 on the same seeds, measured here and
stored in the same file, so every ratio is computed from unrounded values of one run. Speed: images
per second at batch 100, one torch thread, each generator and the teacher's DDIM-50 timed in
interleaved rounds in the same process (median over rounds). The better generator is the one with
the lower mean FID-digits over the three seeds; the goals (``GOALS``) are checked for each.

Results: benchmarks/results/onestep_heldout.json (``--quick`` writes only to ``--json``). Full size:
about 4 CPU-minutes on this 2-core machine (the teacher's 3 × 1000 DDIM-50 samples are most of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from diffkit.assets import asset_path
from diffkit.metrics.digits import (balanced_labels, fid_digits, load_reference_stats, mean_std, sample_digits,
                                    top1_accuracy)
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines import load_pipeline
from diffkit.weights import file_sha256

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402  (sibling module of the scripts)

ROOT = Path(__file__).resolve().parent.parent
NAME = "onestep_heldout"
#: issue #20 item 5: FID-digits ≤ 2× the teacher's (stretch 1.5×), top-1 ≥ 0.97, ≥ 40× the teacher's images/s
GOALS = {"fid_ratio_max": 2.0, "fid_ratio_stretch": 1.5, "top1_min": 0.97, "speedup_min": 40.0}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits-onestep",
                   help="comma-separated one-step generator folders or asset names (default %(default)s)")
    p.add_argument("--teacher", default="digits-unet")
    p.add_argument("--seeds", default="3,4,5", help="held-out seeds (default %(default)s)")
    p.add_argument("--n", type=int, default=None, help="samples per seed (default 1000; --quick 50)")
    p.add_argument("--speed-batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n = 50, one seed, batch 20")
    p.add_argument("--json", default=None, help="results file (default benchmarks/results/onestep_heldout.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.speed_batch = a.seeds.split(",")[0], 20
    a.n = a.n or (50 if a.quick else 1000)
    if a.n % 10:
        p.error(f"--n must be a multiple of 10 (class-balanced sets), got {a.n}")
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    return a


def images_per_second(pipes: dict, labels, reps: int) -> dict:
    """Images/s of each ``{name: (pipe, steps)}``, timed in interleaved rounds (every pipe once per round, so
    a change of machine load falls on all of them alike); median over rounds."""
    for pipe, steps in pipes.values():  # warm-up
        pipe(class_labels=labels[:10], num_inference_steps=steps, seed=0, output_type="pt", progress=False)
    times = {k: [] for k in pipes}
    for r in range(reps):
        for k, (pipe, steps) in pipes.items():
            calls = 10 if steps == 1 else 1  # a one-step call is short: time ten in a row
            t0 = time.perf_counter()
            for c in range(calls):
                pipe(class_labels=labels, num_inference_steps=steps, seed=r * calls + c, output_type="pt",
                     progress=False)
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: len(labels) / statistics.median(v) for k, v in times.items()}


def score(pipe, labels, seeds, steps, net, ref) -> dict:
    per_seed = []
    for s in seeds:
        x = sample_digits(pipe, labels, seed=s, steps=steps)
        r = fid_digits(x, net, ref)
        per_seed.append({"seed": s, "fid": r.fid, "kid": r.kid, "top1": top1_accuracy(x, labels, net)})
        print(f"  seed {s}: FID-digits {r.fid:.4f}, top-1 {per_seed[-1]['top1']:.3f}", flush=True)
    return {"per_seed": per_seed, "fid": mean_std([r["fid"] for r in per_seed]),
            "kid": mean_std([r["kid"] for r in per_seed]), "top1": mean_std([r["top1"] for r in per_seed])}


def training_facts(folder: Path) -> dict:
    """The mode and step budget recorded by the exporter (distill.json), if present."""
    f = folder / "distill.json"
    if not f.exists():
        return {}
    facts = json.loads(f.read_text())
    cfg = facts.get("config", {})
    return {"mode": cfg.get("mode"), "generator_steps": facts.get("generator_steps"),
            "generator_timestep": facts.get("generator_timestep")}


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    net, ref = load_feature_net("digits-features"), load_reference_stats()
    labels, speed_labels = balanced_labels(a.n), balanced_labels(a.speed_batch)
    teacher = load_pipeline(a.teacher)
    teacher.set_progress_bar_config(disable=True)
    print(f"teacher {a.teacher}, DDIM-50:", flush=True)
    t = score(teacher, labels, a.seed_list, 50, net, ref)
    models, pipes = {}, {"teacher": (teacher, 50)}
    for m in a.models.split(","):
        d = asset_path(m, required=("model_index.json",))
        pipe = load_pipeline(str(d))
        pipe.set_progress_bar_config(disable=True)
        print(f"{m}:", flush=True)
        r = score(pipe, labels, a.seed_list, 1, net, ref)
        r["fid_ratio_teacher"] = r["fid"][0] / t["fid"][0]
        r["training"] = training_facts(d)
        r["folder"] = str(d.resolve().relative_to(ROOT)) if d.resolve().is_relative_to(ROOT) else str(d)
        # the weights themselves identify the generator (a shipped folder may be renamed after this run)
        r["unet_sha256"] = file_sha256(d / "unet" / "diffusion_pytorch_model.safetensors")
        key = r["training"].get("mode") or m
        if key in models:
            raise SystemExit(f"--models: two generators trained in mode {key!r}; the results key them by mode")
        models[key], pipes[key] = r, (pipe, 1)
    speed = images_per_second(pipes, speed_labels, 2 if a.quick else 3)
    t["images_per_s"] = speed["teacher"]
    for key, r in models.items():
        r["images_per_s"] = speed[key]
        r["speedup"] = r["images_per_s"] / t["images_per_s"]
        r["goals"] = {"fid_ratio_met": r["fid_ratio_teacher"] <= GOALS["fid_ratio_max"],
                      "fid_ratio_stretch_met": r["fid_ratio_teacher"] <= GOALS["fid_ratio_stretch"],
                      "top1_met": r["top1"][0] >= GOALS["top1_min"],
                      "speedup_met": r["speedup"] >= GOALS["speedup_min"]}

    best = min(models, key=lambda m: models[m]["fid"][0])
    data = {"seeds": a.seed_list, "n": a.n, "speed_batch": a.speed_batch, "goals": GOALS, "teacher": t,
            "models": models, "better": best}
    print(f"\n{'generator':<40} {'mode':<12} {'FID-digits':>16} {'× teacher':>10} {'top-1':>7} {'img/s':>8} "
          f"{'speed-up':>9}")
    print(f"{'teacher DDIM-50':<40} {'':<12} {t['fid'][0]:>8.4f} ± {t['fid'][1]:.4f} {1.0:>10.2f} "
          f"{t['top1'][0]:>7.3f} {t['images_per_s']:>8.1f} {1.0:>9.1f}")
    for m, r in models.items():
        print(f"{r['folder']:<40} {str(r['training'].get('mode')):<12} {r['fid'][0]:>8.4f} ± {r['fid'][1]:.4f} "
              f"{r['fid_ratio_teacher']:>10.2f} {r['top1'][0]:>7.3f} {r['images_per_s']:>8.0f} {r['speedup']:>9.1f}")
    print(f"better (lower mean FID-digits on seeds {a.seed_list}): the generator trained in mode {best} "
          f"({models[best]['folder']})")
    save_results(data, NAME, json_path=a.json, quick=a.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
