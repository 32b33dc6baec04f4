"""Quality report of the digits teacher under the FID-digits protocol (diffkit.metrics.digits), and
BDIA-DDIM vs DDIM sample quality on it.

    diffkit bench digits_quality                  # full report -> benchmarks/results/digits_quality.json
    diffkit bench digits_quality --quick          # small n, few steps: a smoke run (writes only to --json PATH)
    diffkit bench digits_quality --card-only      # rewrite assets/digits-unet/README.md from the committed JSON
    python benchmarks/digits_quality.py --write-card  # also rewrite the model card + PNGs

Measures, for class-conditional DDIM-50 samples (class-balanced labels, eta 0):
feature-net top-1 at guidance 1 (every seed) and 2, 4 (seed 0, n = --guidance-n);
FID-digits and KID against the train split at n = --n for each seed (mean ± std); the
held-out test split at its own size n_test, and the samples at that same n (the first
n_test-per-class samples matching the test split's label counts) for an equal-n
comparison; the memorisation ratio.

BDIA-DDIM vs DDIM (``comparison``): at each of --compare-steps (10, 20, 50), the same n, seeds
and noise (sample k's noise from (seed, k)) through the one sampling driver
(:func:`diffkit.sampling.plan_sampling`), DDIM = the teacher's own DDIMScheduler, BDIA-DDIM =
the registry's ``bdia-ddim`` at its shipped default γ (recorded in the JSON; no γ is tuned
here); FID-digits and top-1 per seed, their mean ± std, the BDIA − DDIM paired difference per
seed (same noise) and the ratio of the mean FIDs. The DDIM-50 samples are the teacher's run above.

Full size: n = 1000 × seeds 0, 1, 2; measured 1 torch thread on the shared 2-core machine:
see ``wall_time_s`` in the JSON (54 min under a load average of ~14). ``--cache DIR`` keeps each
(sampler, steps, seed) sample set, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import default_json, load_results, write_results  # noqa: E402

from diffkit.assets import asset_path  # noqa: E402
from diffkit.data import digits_tensors  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.metrics.digits import (PROTOCOL, balanced_labels, classify, fid_digits, load_reference_stats,  # noqa: E402
                                    mean_std, memorisation_ratio)
from diffkit.models.digits_features import load_feature_net  # noqa: E402
from diffkit.pipelines import load_pipeline  # noqa: E402
from diffkit.sampling import plan_sampling  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "digits_quality"
#: the registry sampler compared with the teacher's own DDIM
BDIA = "bdia-ddim"


def parse():
    p = argparse.ArgumentParser(description="FID-digits quality report of the digits teacher")
    p.add_argument("--model", default="digits-unet")
    p.add_argument("--n", type=int, default=1000, help="samples per seed (multiple of 10)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--compare-steps", default="10,20,50",
                   help="step counts of the BDIA-DDIM vs DDIM comparison (empty: skip it)")
    p.add_argument("--guidance", default="2,4", help="extra guidance scales for top-1 (guidance 1 is always run)")
    p.add_argument("--guidance-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="folder keeping each sample set (resume an interrupted run)")
    p.add_argument("--quick", action="store_true", help="n=50, seeds 0,1, 10 steps, comparison at 5,10, guidance-n 20")
    p.add_argument("--write-card", action="store_true", help="rewrite the model card and PNGs in the asset folder")
    p.add_argument("--card-only", action="store_true",
                   help="only rewrite the model card from the results JSON of an earlier full run")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/digits_quality.json "
                   "for a full run, none for --quick)")
    a = p.parse_args()
    if a.quick:
        a.n, a.seeds, a.steps, a.compare_steps, a.guidance_n = 50, "0,1", 10, "5,10", 20
    if a.json is None:
        a.json = default_json(NAME, a.quick)
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


class Samples:
    """Sample sets of the teacher: own sampler (None) or a registry name, at a step count, per seed;
    kept under ``cache`` (if given) so an interrupted run resumes."""

    def __init__(self, pipe, labels, cache=None, batch_size=500):
        self.pipe, self.labels, self.batch_size = pipe, labels, batch_size
        self.cache = Path(cache) if cache else None
        self.plans, self.seconds = {}, {}

    def plan(self, sampler, steps):
        if (sampler, steps) not in self.plans:
            self.plans[sampler, steps] = plan_sampling(self.pipe, sampler, steps=steps)
        return self.plans[sampler, steps]

    def get(self, sampler, steps, seed, guidance=1.0, labels=None):
        labels = self.labels if labels is None else labels
        key = f"{sampler or 'own'}-{steps}-s{seed}-g{guidance}-n{len(labels)}"
        f = self.cache / f"{key}.pt" if self.cache else None
        if f is not None and f.exists():
            blob = torch.load(f)
            self.seconds[key] = blob["seconds"]
            return blob["x"]
        plan = self.plan(sampler, steps)
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(labels), self.batch_size):
            lab = labels[i:i + self.batch_size]
            out.append(plan.run(lab, seed=seed, sample_indices=range(i, i + len(lab)),
                                guidance_scale=guidance).images.float().cpu())
        x = torch.cat(out)
        self.seconds[key] = time.perf_counter() - t0
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"x": x, "seconds": self.seconds[key]}, f)
        return x


def compare(samples: Samples, steps_list, seeds, net, ref, labels, teacher_rows, teacher_steps):
    """BDIA-DDIM (registry default γ) vs DDIM at each step count: FID-digits and top-1 per seed."""
    rows = []
    for steps in steps_list:
        per = {"ddim": [], "bdia": []}
        for s in seeds:
            for name, sampler in (("ddim", None), ("bdia", BDIA)):
                if name == "ddim" and steps == teacher_steps:  # the teacher's own DDIM run above
                    t = next(r for r in teacher_rows if r["seed"] == s)
                    per[name].append({"seed": s, "fid": t["fid"], "top1": t["top1"]})
                    continue
                x = samples.get(sampler, steps, s)
                per[name].append({"seed": s, "fid": fid_digits(x, net, ref).fid,
                                  "top1": float((classify(x, net) == labels.numpy()).mean())})
            print(f"steps {steps} seed {s}: FID DDIM {per['ddim'][-1]['fid']:.4f}  BDIA {per['bdia'][-1]['fid']:.4f}"
                  f"  top-1 DDIM {per['ddim'][-1]['top1']:.4f}  BDIA {per['bdia'][-1]['top1']:.4f}", flush=True)
        row = {"steps": steps}
        for name in ("ddim", "bdia"):
            row[name] = {"fid": mean_std([r["fid"] for r in per[name]]),
                         "top1": mean_std([r["top1"] for r in per[name]]), "per_seed": per[name]}
        diff = [b["fid"] - d["fid"] for b, d in zip(per["bdia"], per["ddim"])]
        row["fid_diff_bdia_minus_ddim"] = mean_std(diff)
        row["fid_ratio_bdia_over_ddim"] = row["bdia"]["fid"][0] / row["ddim"]["fid"][0]
        row["bdia_better_seeds"] = int(sum(d < 0 for d in diff))
        rows.append(row)
    return rows


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    if a.card_only:
        d = asset_path(a.model)
        res = json.loads(Path(a.json).read_text()) if a.json else load_results(NAME)
        (d / "README.md").write_text(card(json.loads((d / "training.json").read_text()), res))
        print(f"wrote {d / 'README.md'}")
        return
    pipe = load_pipeline(a.model)
    pipe.set_progress_bar_config(disable=True)
    net = load_feature_net()
    ref = load_reference_stats()
    x_train, _ = digits_tensors("train")
    x_test, y_test = digits_tensors("test")
    seeds = [int(s) for s in a.seeds.split(",")]
    labels = balanced_labels(a.n)
    samples = Samples(pipe, labels, a.cache)
    res = {"protocol": PROTOCOL, "model": str(a.model), "sampler": f"DDIM-{a.steps} (eta 0)", "n": a.n, "seeds": seeds,
           "n_test": int(len(y_test)), "n_train_reference": ref.n, "per_seed": [], "quick": a.quick}
    t_all = time.perf_counter()

    # Held-out test split: the data's own floor at its own size.
    r_test = fid_digits(x_test, net, ref)
    res["test_split"] = {"n": r_test.n, "fid": r_test.fid, "kid": r_test.kid, "kid_std": r_test.kid_std,
                         "top1": float((classify(x_test, net) == y_test.numpy()).mean())}
    print(f"test split (n={r_test.n}): FID {r_test.fid:.3f}  KID {r_test.kid:.5f}  "
          f"top-1 {res['test_split']['top1']:.4f}")

    first = None
    sub = test_label_subset(labels, y_test) if a.n >= 400 else None
    for s in seeds:
        x = samples.get(None, a.steps, s)
        dt = samples.seconds[f"own-{a.steps}-s{s}-g1.0-n{a.n}"]
        first = x if first is None else first
        top1 = float((classify(x, net) == labels.numpy()).mean())
        r = fid_digits(x, net, ref)
        mem = memorisation_ratio(x, x_train, x_test)
        row = {"seed": s, "top1": top1, "fid": r.fid, "kid": r.kid, "kid_std": r.kid_std,
               "memorisation_ratio": mem.ratio, "median_nn_generated": mem.median_generated,
               "median_nn_test": mem.median_test, "sample_time_s": dt}
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

    steps_list = [int(v) for v in a.compare_steps.split(",") if v]
    if steps_list:
        res["comparison_sampler"] = BDIA
        res["comparison_gamma"] = float(samples.plan(BDIA, steps_list[0]).pipe.scheduler.config.gamma)
        res["comparison_gamma_source"] = "registry default (BDIADDIMScheduler's gamma default; not tuned)"
        res["comparison"] = compare(samples, steps_list, seeds, net, ref, labels, res["per_seed"], a.steps)

    res["guidance"] = {"1.0": {"top1": summ["top1"][0], "n": a.n * len(seeds)}}
    glabels = balanced_labels(a.guidance_n)
    for g in [float(v) for v in a.guidance.split(",") if v]:
        x = samples.get(None, a.steps, seeds[0], guidance=g, labels=glabels)
        top1 = float((classify(x, net) == glabels.numpy()).mean())
        r = fid_digits(x, net, ref)
        res["guidance"][str(g)] = {"top1": top1, "fid": r.fid, "n": a.guidance_n, "seed": seeds[0]}
        print(f"guidance {g}: top-1 {top1:.4f}  FID {r.fid:.3f} (n={a.guidance_n}, seed {seeds[0]})", flush=True)
    res["wall_time_s"] = time.perf_counter() - t_all

    print()
    print(table(res))
    if "comparison" in res:
        print()
        print(comparison_table(res))
    if a.json:
        print(f"wrote {write_results(res, a.json, script=__file__)}")
    if "comparison" in res:
        check_claims(res)
    if a.write_card:
        d = asset_path(a.model)
        per_class = torch.cat([first[labels == c][:10] for c in range(10)])  # row c = class c
        save_grid(per_class, str(d / "samples_per_class.png"), nrow=10, upscale=4)
        save_grid(first[:64], str(d / "samples.png"), nrow=8, upscale=4)
        (d / "README.md").write_text(card(json.loads((d / "training.json").read_text()), res))
        print(f"wrote {d / 'README.md'}")


def fmt(ms, p=3) -> str:
    return f"{ms[0]:.{p}f} ± {ms[1]:.{p}f}"


def check_claims(res):
    """The comparison's qualitative claim, with a loose bound: at the fewest steps compared, BDIA-DDIM
    at its default γ samples worse than DDIM (higher mean FID-digits on the same noise)."""
    r = res["comparison"][0]
    assert r["bdia"]["fid"][0] > r["ddim"]["fid"][0], (
        f"at {r['steps']} steps BDIA-DDIM FID-digits {r['bdia']['fid'][0]:.4f} is not above DDIM's "
        f"{r['ddim']['fid'][0]:.4f}: the README's comparison no longer holds")


def comparison_table(res) -> str:
    lines = [f"| steps | DDIM FID-digits | BDIA-DDIM γ={res['comparison_gamma']:g} FID-digits | BDIA − DDIM (paired) "
             "| BDIA/DDIM | DDIM top-1 | BDIA top-1 |", "|---|---|---|---|---|---|---|"]
    for r in res["comparison"]:
        lines.append(f"| {r['steps']} | {fmt(r['ddim']['fid'], 4)} | {fmt(r['bdia']['fid'], 4)} | "
                     f"{r['fid_diff_bdia_minus_ddim'][0]:+.4f} ± {r['fid_diff_bdia_minus_ddim'][1]:.4f} | "
                     f"{r['fid_ratio_bdia_over_ddim']:.2f} | {fmt(r['ddim']['top1'])} | {fmt(r['bdia']['top1'])} |")
    return "\n".join(lines)


def table(res) -> str:
    s, n = res["summary"], res["n"]
    lines = ["| set | n | feature-net top-1 | FID-digits | KID |", "|---|---|---|---|---|"]
    steps = res['sampler'].split('-')[1].split()[0]
    lines.append(f"| DDIM-{steps} samples, guidance 1, seeds {','.join(map(str, res['seeds']))} "
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
          f"{s['fid_equal_n'][0]:.3f} ± {s['fid_equal_n'][1]:.3f} against the test split's "
          f"{res['test_split']['fid']:.3f} "
          f"(ratio {s['fid_equal_n'][0] / res['test_split']['fid']:.2f})") if "fid_equal_n" in s else ""
    optim = (f"AdamW lr {facts['learning_rate']}, {facts['warmup_steps']} warm-up steps then constant; "
             f"grad-norm clip {facts['grad_clip']}; EMA {facts['ema_decay']}")
    sched = "DDIMScheduler config of the training schedule (linear β 1e-4…0.02, 1,000 steps, clip_sample off)"
    arch = "block_out_channels (32, 64), 2 ResNet layers per block, attention in the mid block"
    minutes = f"{res['wall_time_s'] / 60:.0f} min on the shared 2-core machine"
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
| steps × batch | {facts['steps']} × {facts['batch_size']} ({optim}) |
| loss | ε-prediction DDPM loss (L_simple), label dropout {facts['label_dropout']} to the null class |
| noise schedule | `scheduler/`: {sched} |
| wall time | {facts['wall_time_s'] / 60:.1f} min ({facts['processes']} process, 1 torch thread) |
| machine | {facts['machine']}, shared with ~5 other jobs (load average 6–10 during training) |
| data | {facts['data']} |
| parameters | {facts['parameters']:,} ({arch}) |
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

Reproduce: `python benchmarks/digits_quality.py --write-card` ({minutes}).

![samples](samples.png)

Per class (row k = digit k, 10 samples each, guidance 1, seed {res['seeds'][0]}):

![per-class samples](samples_per_class.png)
"""


if __name__ == "__main__":
    sys.exit(main())
