"""Quality report of the digits teacher under the FID-digits protocol (diffkit.metrics.digits).

    python benchmarks/digits_quality.py                 # full report (n = 1000, seeds 0,1,2; long on 2 cores)
    python benchmarks/digits_quality.py --quick         # small n, few steps: a smoke run
    python benchmarks/digits_quality.py --write-card    # also rewrite assets/digits-unet/README.md + PNGs

Measures, for class-conditional DDIM-50 samples (class-balanced labels, eta 0):
feature-net top-1 at guidance 1 (every seed) and 2, 4 (seed 0, n = --guidance-n);
FID-digits and KID against the train split at n = --n for each seed (mean ± std); the
held-out test split at its own size n_test, and the samples at that same n (the first
n_test-per-class samples matching the test split's label counts) for an equal-n
comparison; the memorisation ratio. Results go to benchmarks/results/digits_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parse():
    p = argparse.ArgumentParser(description="FID-digits quality report of the digits teacher")
    p.add_argument("--model", default="digits-unet")
    p.add_argument("--n", type=int, default=1000, help="samples per seed (multiple of 10)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", default="2,4", help="extra guidance scales for top-1 (guidance 1 is always run)")
    p.add_argument("--guidance-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="n=50, seeds 0,1, 10 steps, guidance-n 20")
    p.add_argument("--write-card", action="store_true", help="rewrite the model card and PNGs in the asset folder")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite the model card from the results JSON of an earlier full run")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "digits_quality.json"))
    a = p.parse_args()
    if a.quick:
        a.n, a.seeds, a.steps, a.guidance_n = 50, "0,1", 10, 20
        if a.json == p.get_default("json"):
            a.json = str(ROOT / "benchmarks" / "results" / "digits_quality_quick.json")
    return a


def test_label_subset(labels: torch.Tensor, test_labels: torch.Tensor) -> torch.Tensor:
    """Indices into ``labels`` giving exactly the test split's label counts (first ones of each class)."""
    idx = []
    for c in range(10):
        need = int((test_labels == c).sum())
        have = torch.nonzero(labels == c).flatten()
        if len(have) < need:
            raise ValueError(f"need {need} samples of class {c} for the equal-n comparison, have {len(have)}")
        idx.append(have[:need])
    return torch.cat(idx)


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    if a.card_only:
        from diffkit.assets import asset_path

        d = asset_path(a.model)
        res = json.loads(Path(a.json).read_text())
        (d / "README.md").write_text(card(json.loads((d / "training.json").read_text()), res))
        print(f"wrote {d / 'README.md'}")
        return
    from diffkit.data import digits_tensors
    from diffkit.images import save_grid
    from diffkit.metrics.digits import (PROTOCOL, balanced_labels, classify, fid_digits, load_reference_stats,
                                        mean_std, memorisation_ratio, sample_digits)
    from diffkit.models.digits_features import load_feature_net
    from diffkit.pipelines import load_pipeline

    pipe = load_pipeline(a.model)
    pipe.set_progress_bar_config(disable=True)
    net = load_feature_net()
    ref = load_reference_stats()
    x_train, _ = digits_tensors("train")
    x_test, y_test = digits_tensors("test")
    seeds = [int(s) for s in a.seeds.split(",")]
    labels = balanced_labels(a.n)
    res = {"protocol": PROTOCOL, "model": str(a.model), "sampler": f"DDIM-{a.steps} (eta 0)", "n": a.n, "seeds": seeds,
           "n_test": int(len(y_test)), "n_train_reference": ref.n, "per_seed": [], "quick": a.quick}
    t_all = time.perf_counter()

    # Held-out test split: the data's own floor at its own size.
    r_test = fid_digits(x_test, net, ref)
    res["test_split"] = {"n": r_test.n, "fid": r_test.fid, "kid": r_test.kid, "kid_std": r_test.kid_std,
                         "top1": float((classify(x_test, net) == y_test.numpy()).mean())}
    print(f"test split (n={r_test.n}): FID {r_test.fid:.3f}  KID {r_test.kid:.5f}  top-1 {res['test_split']['top1']:.4f}")

    first = None
    sub = test_label_subset(labels, y_test) if a.n >= 400 else None
    for s in seeds:
        t0 = time.perf_counter()
        x = sample_digits(pipe, labels, seed=s, steps=a.steps, guidance=1.0)
        dt = time.perf_counter() - t0
        first = x if first is None else first
        top1 = float((classify(x, net) == labels.numpy()).mean())
        r = fid_digits(x, net, ref)
        mem = memorisation_ratio(x, x_train, x_test)
        row = {"seed": s, "top1": top1, "fid": r.fid, "kid": r.kid, "kid_std": r.kid_std, "memorisation_ratio": mem.ratio,
               "median_nn_generated": mem.median_generated, "median_nn_test": mem.median_test, "sample_time_s": dt}
        if sub is not None:
            r_eq = fid_digits(x[sub], net, ref)
            row.update(fid_equal_n=r_eq.fid, kid_equal_n=r_eq.kid, equal_n=r_eq.n)
        res["per_seed"].append(row)
        print(f"seed {s}: top-1 {top1:.4f}  FID {r.fid:.3f}  KID {r.kid:.5f}  memorisation {mem.ratio:.3f}"
              + (f"  FID@n={row['equal_n']} {row['fid_equal_n']:.3f}" if sub is not None else "")
              + f"  ({dt:.0f} s to sample)", flush=True)
    summ = {}
    for k in ("top1", "fid", "kid", "memorisation_ratio", "fid_equal_n", "kid_equal_n"):
        if k in res["per_seed"][0]:
            summ[k] = mean_std([r[k] for r in res["per_seed"]])
    res["summary"] = summ

    res["guidance"] = {"1.0": {"top1": summ["top1"][0], "n": a.n * len(seeds)}}
    glabels = balanced_labels(a.guidance_n)
    for g in [float(v) for v in a.guidance.split(",") if v]:
        x = sample_digits(pipe, glabels, seed=seeds[0], steps=a.steps, guidance=g)
        top1 = float((classify(x, net) == glabels.numpy()).mean())
        r = fid_digits(x, net, ref)
        res["guidance"][str(g)] = {"top1": top1, "fid": r.fid, "n": a.guidance_n, "seed": seeds[0]}
        print(f"guidance {g}: top-1 {top1:.4f}  FID {r.fid:.3f} (n={a.guidance_n}, seed {seeds[0]})", flush=True)
    res["wall_time_s"] = time.perf_counter() - t_all

    print()
    print(table(res))
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.json}")
    if a.write_card:
        from diffkit.assets import asset_path

        d = asset_path(a.model)
        per_class = torch.cat([first[labels == c][:10] for c in range(10)])  # row c = class c
        save_grid(per_class, str(d / "samples_per_class.png"), nrow=10, upscale=4)
        save_grid(first[:64], str(d / "samples.png"), nrow=8, upscale=4)
        (d / "README.md").write_text(card(json.loads((d / "training.json").read_text()), res))
        print(f"wrote {d / 'README.md'}")


def table(res) -> str:
    s, n = res["summary"], res["n"]
    fmt = lambda ms, p=3: f"{ms[0]:.{p}f} ± {ms[1]:.{p}f}"
    lines = [f"| set | n | feature-net top-1 | FID-digits | KID |", "|---|---|---|---|---|"]
    lines.append(f"| DDIM-{res['sampler'].split('-')[1].split()[0]} samples, guidance 1, seeds {','.join(map(str, res['seeds']))} "
                 f"| {n} per seed | {fmt(s['top1'], 4)} | {fmt(s['fid'])} | {fmt(s['kid'], 5)} |")
    if "fid_equal_n" in s:
        lines.append(f"| same samples, subset with the test split's label counts | {res['n_test']} per seed | | "
                     f"{fmt(s['fid_equal_n'])} | {fmt(s['kid_equal_n'], 5)} |")
    t = res["test_split"]
    lines.append(f"| held-out test split (data floor) | {t['n']} | {t['top1']:.4f} | {t['fid']:.3f} | {t['kid']:.5f} |")
    for g, v in res["guidance"].items():
        if g != "1.0":
            lines.append(f"| samples, guidance {g}, seed {v['seed']} | {v['n']} | {v['top1']:.4f} | {v['fid']:.3f} | |")
    return "\n".join(lines)


def card(facts: dict, res: dict) -> str:
    cmd = facts.get("command") or ""
    equiv = re.sub(r"\s--resume(\s+\S+)?", "", cmd)
    note = ""
    if "--resume" in cmd:
        note = (f"\nThe shipped weights were exported with `{cmd}` from the step-{facts['steps']} checkpoint of a "
                f"run started with a larger `--max-steps` and stopped there. The learning rate is constant after "
                f"warm-up and every random draw is keyed to (seed, sample index), so this equals the uninterrupted "
                f"command above (resume exactness is tested in `tests/train/test_train.py`).\n")
    s = res["summary"]
    mem = s["memorisation_ratio"]
    g = res["guidance"]
    eq = (f"; at equal n = {res['n_test']} (samples subset to the test split's label counts) the samples score "
          f"{s['fid_equal_n'][0]:.3f} ± {s['fid_equal_n'][1]:.3f} against the test split's {res['test_split']['fid']:.3f} "
          f"(ratio {s['fid_equal_n'][0] / res['test_split']['fid']:.2f})") if "fid_equal_n" in s else ""
    return f"""# digits-unet: the class-conditional digits teacher

A diffusers `UNet2DModel` (ε-prediction) trained on the 8×8 handwritten digits that ship with
scikit-learn, class-conditional with `num_class_embeds = 11` (digits 0–9, null class 10 for
classifier-free guidance). Saved with `save_pretrained` (safetensors, EMA weights, float32).

```python
from diffkit.pipelines import load_pipeline
pipe = load_pipeline("digits-unet")            # ClassConditionalPipeline (keeps its DDIM scheduler)
images = pipe(class_labels=[0, 1, 2], num_inference_steps=50, seed=0, output_type="pt").images  # [-1, 1]

from diffusers import UNet2DModel              # plain diffusers
unet = UNet2DModel.from_pretrained("assets/digits-unet", subfolder="unet")
```

## Training

| | |
|---|---|
| command | `{equiv}` |
| steps × batch | {facts['steps']} × {facts['batch_size']} (AdamW lr {facts['learning_rate']}, {facts['warmup_steps']} warm-up steps then constant; grad-norm clip {facts['grad_clip']}; EMA {facts['ema_decay']}) |
| loss | ε-prediction DDPM loss (L_simple), label dropout {facts['label_dropout']} to the null class |
| noise schedule | `scheduler/`: DDIMScheduler config of the training schedule (linear β 1e-4…0.02, 1,000 steps, clip_sample off) |
| wall time | {facts['wall_time_s'] / 60:.1f} min ({facts['processes']} process, 1 torch thread) |
| machine | {facts['machine']}, shared with ~5 other jobs (load average 6–10 during training) |
| data | {facts['data']} |
| parameters | {facts['parameters']:,} (block_out_channels (32, 64), 2 ResNet layers per block, attention in the mid block) |
| final loss | {facts['final_loss']:.4f} (mean of the last {facts['final_loss_window_steps']} steps) |
{note}
## Quality (FID-digits protocol `{res['protocol']}`)

Samples: {res['sampler']}, class-balanced labels, guidance 1 unless stated; features from
`assets/digits-features` (test accuracy in its card); reference statistics of the full
train split (n = {res['n_train_reference']}). FID is biased upwards at small n: compare numbers at equal n only.

{table(res)}

- Feature-net top-1 of DDIM-50 samples: guidance 1 **{g['1.0']['top1']:.4f}** (n = {g['1.0']['n']}),
  {", ".join(f"guidance {k} {v['top1']:.4f} (n = {v['n']})" for k, v in g.items() if k != '1.0')}.
  Guided samples saturate; digits benchmarks use guidance 1 unless they say otherwise.
- FID-digits, n = {res['n']}, seeds {', '.join(map(str, res['seeds']))}: {s['fid'][0]:.3f} ± {s['fid'][1]:.3f}
  (KID {s['kid'][0]:.5f} ± {s['kid'][1]:.5f}); held-out test split at its own size n = {res['n_test']}:
  {res['test_split']['fid']:.3f} (KID {res['test_split']['kid']:.5f}){eq}. KID (unbiased MMD², polynomial
  kernel, 100 subsets) is zero within its noise for both the samples and the test split at these n;
  negative values are that noise.
- Memorisation ratio (median distance to the nearest training image, samples / test images):
  {mem[0]:.3f} ± {mem[1]:.3f} (≈ 1: no copying).

Reproduce: `python benchmarks/digits_quality.py --write-card` ({res['wall_time_s'] / 60:.0f} min on the shared 2-core machine).

![samples](samples.png)

Per class (row k = digit k, 10 samples each, guidance 1, seed {res['seeds'][0]}):

![per-class samples](samples_per_class.png)
"""


if __name__ == "__main__":
    sys.exit(main())
