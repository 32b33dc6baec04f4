"""Quality and speed of the shipped one-step digits generator (assets/digits-onestep).

    python benchmarks/digits_onestep_card.py --write-card     # evaluate, rewrite README.md + samples.png
    python benchmarks/digits_onestep_card.py --quick          # small n, no card: a smoke run

FID-digits protocol ``fid-digits/v1`` (diffkit.metrics.digits): n class-balanced one-step
samples per seed (sample k's noise from (seed, k)), FID/KID against the train split,
feature-net top-1; the memorisation ratio on seed 0's samples; images per second of the
one-step generator and of the teacher's DDIM-50 sampler at the same batch and thread
count. Results go to benchmarks/results/digits_onestep.json.
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

ROOT = Path(__file__).resolve().parent.parent
TEACHER_FID = (0.036, 0.008)  # DDIM-50, n = 1000, seeds 0,1,2 (assets/digits-unet/README.md)


def parse(argv=None):
    p = argparse.ArgumentParser(description="quality and speed of the one-step digits generator")
    p.add_argument("--model", default="digits-onestep")
    p.add_argument("--teacher", default="digits-unet")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--speed-batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n=100, seed 0, batch 20")
    p.add_argument("--write-card", action="store_true")
    p.add_argument("--note", default="", help="extra line for the card's Training section (e.g. a second phase)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "digits_onestep.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.seeds, a.speed_batch = 100, "0", 20
        a.json = str(Path(a.json).with_name("digits_onestep_quick.json"))
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
    from diffkit.assets import asset_path
    from diffkit.atomic import write_json_atomically
    from diffkit.images import save_grid
    from diffkit.metrics.digits import (balanced_labels, fid_digits, load_reference_stats, mean_std,
                                        memorisation_ratio, sample_digits, top1_accuracy)
    from diffkit.models.digits_features import load_feature_net
    from diffkit.pipelines import load_pipeline

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
    sl = balanced_labels(a.speed_batch)
    ips_one = images_per_second(pipe, sl, 1, 5)
    ips_teacher = images_per_second(teacher, sl, 50, 1 if a.quick else 2)
    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU (shared), torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    res = {"model": str(d), "n": a.n, "seeds": seeds, "per_seed": per_seed,
           "fid": mean_std([r["fid"] for r in per_seed]), "kid": mean_std([r["kid"] for r in per_seed]),
           "top1": mean_std([r["top1"] for r in per_seed]), "memorisation": mem,
           "images_per_s": {"one_step": ips_one, "teacher_ddim50": ips_teacher, "batch": a.speed_batch,
                            "speedup": ips_one / ips_teacher},
           "teacher_fid_ddim50": TEACHER_FID, "machine": machine}
    write_json_atomically(a.json, res)
    f, t = res["fid"], res["top1"]
    print(f"FID-digits {f[0]:.4f} ± {f[1]:.4f} (n={a.n}, seeds {seeds}; {f[0] / TEACHER_FID[0]:.2f}× the teacher's "
          f"DDIM-50), top-1 {t[0]:.3f} ± {t[1]:.3f}, memorisation ratio {mem['ratio']:.3f}; images/s one-step "
          f"{ips_one:.0f} vs DDIM-50 {ips_teacher:.1f} ({ips_one / ips_teacher:.0f}×) at batch {a.speed_batch}")
    if a.write_card:
        out = pipe(class_labels=[k % 10 for k in range(100)], seed=0, output_type="pt")
        save_grid(out.images, str(d / "samples.png"), nrow=10, upscale=4)
        (d / "README.md").write_text(card(d, res, a.note))
        print(f"wrote {d / 'README.md'} and {d / 'samples.png'}")
    return 0


def card(d: Path, res: dict, note: str = "") -> str:
    facts = json.loads((d / "distill.json").read_text()) if (d / "distill.json").exists() else {}
    cfg = facts.get("config", {})
    s1 = facts.get("stage1") or {}
    f, k, t, m, ips = res["fid"], res["kid"], res["top1"], res["memorisation"], res["images_per_s"]
    n_params = None
    try:
        from safetensors.torch import load_file

        n_params = sum(v.numel() for v in load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors")).values())
    except Exception:
        pass
    ok = lambda c: "yes" if c else "no"  # noqa: E731
    rows = [f"| {r['seed']} | {r['fid']:.4f} | {r['kid']:.5f} | {r['top1']:.3f} |" for r in res["per_seed"]]
    stage1_line = (f"{s1.get('stage1_steps')} steps, {s1.get('nodes')} nodes, {s1.get('wall_time_s')} s"
                   if s1 else "none (mode without a path)")
    return f"""# digits-onestep: a one-step generator distilled from the digits teacher

A copy of the class-conditional digits teacher (`assets/digits-unet`, ε-prediction UNet2DModel,
{n_params or '≈0.92 M'} parameters) trained by score distillation (`diffkit.distill.DisBackTrainer`,
mode `{cfg.get('mode')}`) to produce an 8×8 digit in **one network evaluation**:
x = x̂0(std_vp(t_g)·z, t_g) at generator timestep t_g = {facts.get('generator_timestep')}
(σ_init = {facts.get('sigma_init', float('nan')):.2f}). Saved as a diffusers `OneStepPipeline` folder.

```python
from diffkit.pipelines import load_pipeline
pipe = load_pipeline("digits-onestep")                     # OneStepPipeline, 1 UNet call per image
images = pipe(class_labels=[0, 1, 2], seed=0, output_type="pt").images   # [-1, 1]
```

`examples/onestep_sampling.py` samples it; `diffkit demo --only distill` shows it beside the teacher.

![samples](samples.png)

## Quality (FID-digits protocol `fid-digits/v1`)

One-step samples, class-balanced labels, n = {res['n']} per seed, noise of sample k from (seed, k); features
of `assets/digits-features`; reference statistics of the train split. Teacher (DDIM-50, same protocol,
n = 1000, seeds 0,1,2): FID-digits {res['teacher_fid_ddim50'][0]} ± {res['teacher_fid_ddim50'][1]}.

| seed | FID-digits | KID | feature-net top-1 |
|---|---|---|---|
{chr(10).join(rows)}
| **mean ± std** | **{f[0]:.4f} ± {f[1]:.4f}** | {k[0]:.5f} ± {k[1]:.5f} | **{t[0]:.3f} ± {t[1]:.3f}** |

- FID-digits / teacher's DDIM-50 FID-digits: **{f[0] / res['teacher_fid_ddim50'][0]:.2f}×**
  (acceptance ≤ 3×: {ok(f[0] <= 3 * res['teacher_fid_ddim50'][0])}; goal ≤ 2×: {ok(f[0] <= 2 * res['teacher_fid_ddim50'][0])}).
- Feature-net top-1 {t[0]:.3f} (acceptance ≥ 0.90: {ok(t[0] >= 0.9)}).
- Memorisation ratio (median nearest-train-image distance of seed {res['seeds'][0]}'s samples / that of the test
  split): **{m['ratio']:.3f}** ({m['median_generated']:.3f} / {m['median_test']:.3f}; acceptance ≥ 0.8:
  {ok(m['ratio'] >= 0.8)}).

## Speed

Images per second at batch {ips['batch']}, {res['machine']}, median of timed calls:

| sampler | network evaluations | images/s |
|---|---|---|
| this one-step generator | 1 | {ips['one_step']:.0f} |
| teacher, DDIM-50 | 50 | {ips['teacher_ddim50']:.1f} |

Speed-up **{ips['speedup']:.0f}×** (the machine is shared; absolute numbers vary with load, the ratio less).

## Training

| | |
|---|---|
| method | {facts.get('method')} |
| generator steps × batch | {facts.get('generator_steps')} × {cfg.get('batch_size')} ({cfg.get('fake_updates')} fake-score update(s) per step) |
| learning rates | generator {cfg.get('lr_generator')}, fake score {cfg.get('lr_fake')} (Adam β {cfg.get('betas')}, warm-up {cfg.get('warmup_steps')} steps, clip {cfg.get('grad_clip')}) |
| DM weighting / t-range | {cfg.get('weighting')} / {cfg.get('t_range')} |
| EMA | {cfg.get('ema_decay')} (the exported weights) |
| Stage 1 | {stage1_line} |
| Stage 2 wall time | {facts.get('wall_time_s')} s, 1 process, 1 torch thread |
| command | `{facts.get('command')}` |
| seed | {cfg.get('seed')} |

{note}

Settings were chosen by the convergence experiment (`benchmarks/disback_convergence.py`, README section
"DisBack convergence"). Evaluate again with `python benchmarks/digits_onestep_card.py --write-card`.
"""


if __name__ == "__main__":
    sys.exit(main())
