"""Quality and speed of the shipped one-step digits generator (assets/digits-onestep).

    diffkit bench digits_onestep_card --write-card     # evaluate, write results + card (README.md, samples.png)
    diffkit bench digits_onestep_card --quick --json /tmp/x.json   # small n, no card: a smoke run

FID-digits protocol ``fid-digits/v1`` (diffkit.metrics.digits): n class-balanced one-step
samples per seed (sample k's noise from (seed, k)), FID/KID against the train split,
feature-net top-1; the memorisation ratio on seed 0's samples; images per second of the
one-step generator and of the teacher's DDIM-50 sampler at the same batch and thread
count. The teacher's FID-digits is read (unrounded) from benchmarks/results/digits_quality.json,
and the card's ratio is computed here from unrounded values and stored in the JSON.
Results go to benchmarks/results/digits_onestep.json (``--quick`` writes only to ``--json``).
Full size (n = 1000 × 3 seeds): about 1 CPU-minute on this 2-core machine, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diffkit.assets import asset_path
from diffkit.images import save_grid
from diffkit.metrics.digits import (balanced_labels, fid_digits, load_reference_stats, mean_std, memorisation_ratio,
                                    sample_digits, top1_accuracy)
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines import load_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, load_results, write_results  # noqa: E402  (sibling module of the scripts)

ROOT = Path(__file__).resolve().parent.parent
#: the card's acceptance bounds (stored in the JSON with the verdicts)
ACCEPT = {"fid_ratio_max": 3.0, "fid_ratio_goal": 2.0, "top1_min": 0.9, "memorisation_min": 0.8}


def teacher_fid(name: str = "digits_quality") -> dict:
    """The teacher's DDIM-50 FID-digits (mean, std over seeds), unrounded, from its committed results."""
    q = load_results(name)
    mean, std = q["summary"]["fid"][:2]
    return {"fid": [mean, std], "n": q["n"], "seeds": q["seeds"], "source": f"benchmarks/results/{name}.json"}


def parse(argv=None):
    p = argparse.ArgumentParser(description="quality and speed of the one-step digits generator")
    p.add_argument("--model", default="digits-onestep")
    p.add_argument("--teacher", default="digits-unet")
    p.add_argument("--n", type=int, default=None, help="samples per seed (default 1000; --quick 100)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--speed-batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n=100 (unless --n), seed 0, batch 20, no card")
    p.add_argument("--teacher-n", type=int, default=0,
                   help="also score the teacher's DDIM-50 at this n (seed = the first seed): an equal-n comparison "
                        "(FID-digits falls with n; the card's teacher figure is at n = 1000)")
    p.add_argument("--write-card", action="store_true")
    p.add_argument("--note", default="", help="extra line for the card's Training section (e.g. a second phase)")
    p.add_argument("--results-name", default="digits_onestep",
                   help="results file stem and the card's figure-marker name (default %(default)s; the second shipped "
                        "generator uses digits_onestep_<mode>)")
    p.add_argument("--json", default=None,
                   help="results file (default benchmarks/results/<results-name>.json; --quick: none)")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.speed_batch, a.write_card = "0", 20, False
    a.n = a.n or (100 if a.quick else 1000)
    a.json = a.json or default_json(a.results_name, a.quick)
    return a


def images_per_second(pipe, labels, steps, reps):
    pipe(class_labels=labels[:10], num_inference_steps=steps, seed=0, output_type="pt", progress=False)  # warm-up
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        pipe(class_labels=labels, num_inference_steps=steps, seed=r, output_type="pt", progress=False)
        times.append(time.perf_counter() - t0)
    return len(labels) / statistics.median(times)


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    d = asset_path(a.model, required=("model_index.json",))
    pipe, teacher = load_pipeline(str(d)), load_pipeline(a.teacher)
    for p in (pipe, teacher):
        p.set_progress_bar_config(disable=True)
    net, ref = load_feature_net("digits-features"), load_reference_stats()
    labels = balanced_labels(a.n)
    seeds = [int(s) for s in a.seeds.split(",")]
    per_seed, mem = [], None
    for s in seeds:
        x = sample_digits(pipe, labels, seed=s, steps=1)
        r = fid_digits(x, net, ref)
        per_seed.append({"seed": s, "fid": r.fid, "kid": r.kid, "top1": top1_accuracy(x, labels, net)})
        if mem is None:
            m = memorisation_ratio(x)
            mem = {"ratio": m.ratio, "median_generated": m.median_generated, "median_test": m.median_test, "n": m.n}
        print(f"seed {s}: FID-digits {r.fid:.4f}, KID {r.kid:.5f}, top-1 {per_seed[-1]['top1']:.3f}", flush=True)
    same_n = None
    if a.teacher_n:
        tl = balanced_labels(a.teacher_n)
        same_n = {"n": a.teacher_n, "seed": seeds[0], "fid": fid_digits(sample_digits(teacher, tl, seed=seeds[0]),
                                                                          net, ref).fid}
        print(f"teacher DDIM-50 at n = {a.teacher_n}, seed {seeds[0]}: FID-digits {same_n['fid']:.4f}", flush=True)
    sl = balanced_labels(a.speed_batch)
    ips_one = images_per_second(pipe, sl, 1, 5)
    ips_teacher = images_per_second(teacher, sl, 50, 1 if a.quick else 2)
    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU (shared), torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    teacher_q = teacher_fid()
    fid = mean_std([r["fid"] for r in per_seed])
    top1 = mean_std([r["top1"] for r in per_seed])
    ratio = fid[0] / teacher_q["fid"][0]
    model = str(d.resolve().relative_to(ROOT)) if d.resolve().is_relative_to(ROOT) else str(d)
    res = {"model": model, "n": a.n, "seeds": seeds, "per_seed": per_seed,
           "fid": fid, "kid": mean_std([r["kid"] for r in per_seed]), "top1": top1, "memorisation": mem,
           "images_per_s": {"one_step": ips_one, "teacher_ddim50": ips_teacher, "batch": a.speed_batch,
                            "speedup": ips_one / ips_teacher},
           "teacher_fid_ddim50": teacher_q, "fid_ratio_teacher": ratio, "teacher_same_n": same_n,
           "acceptance": {**ACCEPT, "fid_ratio_ok": ratio <= ACCEPT["fid_ratio_max"],
                          "fid_ratio_goal_met": ratio <= ACCEPT["fid_ratio_goal"],
                          "top1_ok": top1[0] >= ACCEPT["top1_min"],
                          "memorisation_ok": mem["ratio"] >= ACCEPT["memorisation_min"]},
           "machine": machine}
    if a.json:
        write_results(res, a.json, script=__file__, argv=argv)
    f, t = res["fid"], res["top1"]
    print(f"FID-digits {f[0]:.4f} ± {f[1]:.4f} (n={a.n}, seeds {seeds}; {ratio:.2f}× the teacher's "
          f"DDIM-50), top-1 {t[0]:.3f} ± {t[1]:.3f}, memorisation ratio {mem['ratio']:.3f}; images/s one-step "
          f"{ips_one:.0f} vs DDIM-50 {ips_teacher:.1f} ({ips_one / ips_teacher:.0f}×) at batch {a.speed_batch}")
    if a.write_card:
        out = pipe(class_labels=[k % 10 for k in range(100)], seed=0, output_type="pt")
        save_grid(out.images, str(d / "samples.png"), nrow=10, upscale=4)
        (d / "README.md").write_text(card(d, res, a.note, a.results_name))
        print(f"wrote {d / 'README.md'} and {d / 'samples.png'}")
    return 0


def card(d: Path, res: dict, note: str = "", results_name: str = "digits_onestep") -> str:
    facts = json.loads((d / "distill.json").read_text()) if (d / "distill.json").exists() else {}
    cfg = facts.get("config", {})
    s1 = facts.get("stage1") or {}
    f, k, t, m, ips = res["fid"], res["kid"], res["top1"], res["memorisation"], res["images_per_s"]
    tq, acc, ratio = res["teacher_fid_ddim50"], res["acceptance"], res["fid_ratio_teacher"]
    n_params = None
    try:
        from safetensors.torch import load_file

        n_params = sum(v.numel() for v in load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors")).values())
    except Exception:
        pass
    ok = lambda c: "yes" if c else "no"  # noqa: E731
    rows = [f"| {r['seed']} | {r['fid']:.4f} | {r['kid']:.5f} | {r['top1']:.3f} |" for r in res["per_seed"]]
    steps_row = (f"{facts.get('generator_steps')} × {cfg.get('batch_size')} ({cfg.get('fake_updates')} fake-score "
                 f"update(s) per step)")
    lr_row = (f"generator {cfg.get('lr_generator')}, fake score {cfg.get('lr_fake')} (Adam β {cfg.get('betas')}, "
              f"warm-up {cfg.get('warmup_steps')} steps, clip {cfg.get('grad_clip')})")
    stage1_line = (f"{s1.get('stage1_steps')} steps, {s1.get('nodes')} nodes, {s1.get('wall_time_s')} s"
                   if s1 else "none (mode without a path)")
    fig, src = f"<!-- fig:{results_name} -->", f"benchmarks/results/{results_name}.json"
    held = _heldout_section(d, cfg.get('mode'))
    return f"""# {d.name}: a one-step generator distilled from the digits teacher (mode `{cfg.get('mode')}`)

A copy of the class-conditional digits teacher (`assets/digits-unet`, ε-prediction UNet2DModel,
{n_params or '≈0.92 M'} parameters) trained by score distillation (`diffkit.distill.DisBackTrainer`,
mode `{cfg.get('mode')}`) to produce an 8×8 digit in **one network evaluation**:
x = x̂0(std_vp(t_g)·z, t_g) at generator timestep t_g = {facts.get('generator_timestep')}
(σ_init = {facts.get('sigma_init', float('nan')):.2f}). Saved as a diffusers `OneStepPipeline` folder.

```python
from diffkit.pipelines import load_pipeline
pipe = load_pipeline("{d.name}")                     # OneStepPipeline, 1 UNet call per image
images = pipe(class_labels=[0, 1, 2], seed=0, output_type="pt").images   # [-1, 1]
```

`examples/onestep_sampling.py` samples it; `diffkit demo --only distill` shows it beside the teacher.

![samples](samples.png)

## Quality (FID-digits protocol `fid-digits/v1`)

One-step samples, class-balanced labels, n = {res['n']} per seed, noise of sample k from (seed, k); features
of `assets/digits-features`; reference statistics of the train split. Teacher: DDIM-50, same protocol,
n = {tq['n']}, seeds {','.join(map(str, tq['seeds']))} (`{tq['source']}`). Figures from
`{src}`:

{fig}
Teacher FID-digits {tq['fid'][0]:.4f} ± {tq['fid'][1]:.4f}.

| seed | FID-digits | KID | feature-net top-1 |
|---|---|---|---|
{chr(10).join(rows)}
| **mean ± std** | **{f[0]:.4f} ± {f[1]:.4f}** | {k[0]:.5f} ± {k[1]:.5f} | **{t[0]:.3f} ± {t[1]:.3f}** |

- FID-digits / teacher's DDIM-50 FID-digits: **{ratio:.2f}×**
  (acceptance ≤ {acc['fid_ratio_max']:g}×: {ok(acc['fid_ratio_ok'])}; goal ≤ {acc['fid_ratio_goal']:g}×:
  {ok(acc['fid_ratio_goal_met'])}).
- Feature-net top-1 {t[0]:.3f} (acceptance ≥ {acc['top1_min']:.2f}: {ok(acc['top1_ok'])}).
- Memorisation ratio (median nearest-train-image distance of seed {res['seeds'][0]}'s samples / that of the test
  split): **{m['ratio']:.3f}** ({m['median_generated']:.3f} / {m['median_test']:.3f}; acceptance ≥
  {acc['memorisation_min']:g}: {ok(acc['memorisation_ok'])}).
<!-- /fig -->

## Speed

Images per second at batch {ips['batch']}, {res['machine']}, median of timed calls
(the teacher samples with DDIM, 50 network evaluations per image; this generator with 1):

{fig}
| sampler | images/s |
|---|---|
| this one-step generator | {ips['one_step']:.0f} |
| teacher, DDIM-50 | {ips['teacher_ddim50']:.1f} |

Speed-up **{ips['speedup']:.0f}×**.
<!-- /fig -->

(The machine is shared; absolute numbers vary with load, the ratio less.)
{held}
## Training

| | |
|---|---|
| method | {facts.get('method')} |
| generator steps × batch | {steps_row} |
| learning rates | {lr_row} |
| DM weighting / t-range | {cfg.get('weighting')} / {cfg.get('t_range')} |
| EMA | {cfg.get('ema_decay')} (the exported weights) |
| Stage 1 | {stage1_line} |
| Stage 2 wall time | {facts.get('wall_time_s')} s, 1 process, 1 torch thread |
| command | `{facts.get('command')}` |
| seed | {cfg.get('seed')} |

{note}

Rebuild from scratch: `diffkit.assets.REBUILD['{d.name}']`. Evaluate again with
`diffkit bench digits_onestep_card --model {d.name} --results-name {results_name} --write-card`.
"""


def _heldout_section(d: Path, mode: str) -> str:
    """The held-out comparison of the shipped generators (benchmarks/results/onestep_heldout.json), if it holds
    a generator trained in this one's ``mode`` (the generators are told apart by the mode that trained them)."""
    try:
        h = load_results("onestep_heldout")
    except FileNotFoundError:
        return ""
    models = h["models"].values()
    if mode not in [r["training"].get("mode") for r in models]:
        return ""
    t = h["teacher"]
    rows = [f"| trained in mode `{r['training'].get('mode')}` | {r['fid'][0]:.4f} ± {r['fid'][1]:.4f} | "
            f"{r['fid_ratio_teacher']:.2f}× | {r['top1'][0]:.3f} |" for r in models]
    better = h["models"][h["better"]]["training"].get("mode")
    return f"""
## Held-out comparison of the shipped one-step generators

Seeds {', '.join(map(str, h['seeds']))} (never used to choose a checkpoint or a setting), n = {h['n']} per seed,
same protocol; teacher DDIM-50 on the same seeds, measured in the same run
(`diffkit bench onestep_heldout`, `benchmarks/results/onestep_heldout.json`):

<!-- fig:onestep_heldout -->
| generator | FID-digits | × teacher | top-1 |
|---|---|---|---|
| teacher, DDIM-50 | {t['fid'][0]:.4f} ± {t['fid'][1]:.4f} | — | {t['top1'][0]:.3f} |
{chr(10).join(rows)}
<!-- /fig -->

The one with the lower mean FID-digits on these seeds ships as `assets/digits-onestep`: the one trained in
mode `{better}`.
"""


if __name__ == "__main__":
    sys.exit(main())
