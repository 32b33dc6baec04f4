"""How FID-digits moves with n (small-n bias), and what digits feature extraction costs on CPU.

    diffkit bench fid_small_n                  # full size -> benchmarks/results/fid_small_n.json
    python benchmarks/fid_small_n.py --quick   # CI size: real-data rows only (--json PATH to keep it)

Full size: not yet measured (estimate ~4 min of CPU on one thread of the 2-core x86_64 machine, most
of it the teacher's 3 × 1,000 DDIM-50 samples; --quick: about 10 s of CPU).

Table 1: FID-digits against the shipped train-split statistics (n_ref = 1,442), mean ± std over
seeds, for class-balanced sets of n images:
- "train subset": images *from* the reference set itself: any FID above 0 is pure small-n bias;
- "test split": held-out real digits (the data's floor at that n; at most 355 images);
- "teacher DDIM-S": class-balanced samples of assets/digits-unet (guidance 1), if shipped.
Seeds pick the subsets / the sample noise. FID at small n is biased upward: compare only at
equal n.

Table 2: feature-extraction time per 1,000 images (batch 1,000 and 100) on this CPU for the
digits network (quantisation + forward); a randomly initialised network of the same shape
when the shipped one is missing (said in the table).

Needs assets/digits-features for table 1; without it the table is skipped with a message (and a
full run fails: its JSON would lack the table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.assets import AssetError  # noqa: E402
from diffkit.data import digits_tensors  # noqa: E402
from diffkit.metrics import ModelSamples, ProtocolWarning, compute_fid, compute_stats, load_stats  # noqa: E402
from diffkit.metrics.features import DigitsFeatures  # noqa: E402
from diffkit.metrics.fid import resolve_reference  # noqa: E402
from diffkit.models.digits_features import DigitsFeatureNet  # noqa: E402
from diffkit.pipelines import load_pipeline  # noqa: E402


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices, n/10 per class, chosen by a seeded permutation within each class."""
    g = torch.Generator().manual_seed(seed)
    per = n // 10
    out = []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        if per > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, {per} requested")
        out.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(out)


def fid_table(ns, seeds, steps, batch_size, teacher: bool):
    warnings.simplefilter("ignore", ProtocolWarning)  # small n is the point of this table
    rows = []
    for name, split in (("train subset", "train"), ("test split", "test")):
        x, y = digits_tensors(split)
        for n in ns:
            if n // 10 <= min(int((y == c).sum()) for c in range(10)):
                rows.append((name, n, [compute_fid(x[balanced_subset(y, n, s)], "digits-train").value for s in seeds]))
    if not teacher:
        return rows
    try:
        pipe = load_pipeline("digits-unet")
    except AssetError as e:
        print(f"(teacher rows skipped: {str(e).split(';')[0]})")
        return rows
    # one draw of max(ns) samples per seed; prefixes of k % 10 labels stay class-balanced
    draws = {}
    for s in seeds:
        t0 = time.perf_counter()
        draws[s] = compute_stats(ModelSamples(pipe, "ddim", steps=steps, seed=s), features="digits", n=max(ns),
                                 batch_size=batch_size)
        print(f"(seed {s}: {max(ns)} DDIM-{steps} samples + features in {time.perf_counter() - t0:.0f} s)")
    for n in ns:
        rows.append((f"teacher DDIM-{steps}", n, [compute_fid(draws[s], "digits-train", n=n).value for s in seeds]))
    return rows


def timing_table(reps):
    try:
        fx, what = DigitsFeatures("digits-features"), "shipped digits network"
    except (AssetError, ValueError):
        torch.manual_seed(0)
        fx, what = DigitsFeatures(DigitsFeatureNet()), "random-init network of the shipped shape (asset missing)"
    params = sum(p.numel() for p in fx.net.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (1000, 1, 8, 8), generator=g).float() * (255 / 16)
    rows = []
    for bs in (1000, 100):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for i in range(0, 1000, bs):
                fx(x[i:i + bs])
            times.append(time.perf_counter() - t0)
        rows.append((bs, statistics.median(times) * 1e3))
    return what, params, rows


def summarise(rows) -> list[dict]:
    out = []
    for name, n, vals in rows:
        out.append({"set": name, "n": n, "values": vals, "mean": statistics.mean(vals),
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: fewer n, 2 seeds, no teacher sampling")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the teacher rows")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/fid_small_n.json for a "
                    "full run through `diffkit bench fid_small_n`; none for --quick)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.process_time()
    out = {"quick": args.quick, "threads": torch.get_num_threads(), "steps": args.steps}

    what, params, trows = timing_table(reps=2 if args.quick else 7)
    print(f"## Digits feature extraction on CPU ({torch.get_num_threads()} threads; {what}, {params:,} parameters)\n")
    print("| batch | ms per 1,000 images |\n|---:|---:|")
    for bs, ms in trows:
        print(f"| {bs} | {ms:.1f} |")
    out["timing"] = {"network": what, "parameters": params,
                     "rows": [{"batch": bs, "ms_per_1000": ms} for bs, ms in trows]}

    try:
        ref = load_stats(resolve_reference("digits-train"))
    except AssetError as e:
        print(f"\nFID-digits table skipped: {e}")
        if not args.quick:
            raise
        return 0
    ns, seeds = ([50, 200], [0, 1]) if args.quick else ([50, 100, 200, 350, 500, 1000], list(range(args.seeds)))
    t0 = time.perf_counter()
    rows = summarise(fid_table(ns, seeds, args.steps, args.batch_size, teacher=not args.quick))
    print(f"\n## FID-digits vs n (reference: train split, n_ref = {ref.n}; {len(seeds)} seeds, mean ± std)\n")
    print("| set | n | FID-digits |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['mean']:.3f} ± {r['std']:.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    out.update(n_ref=ref.n, seeds=seeds, fid=rows)
    by = {(r["set"], r["n"]): r["mean"] for r in rows}
    if ("train subset", 50) in by and ("train subset", max(ns)) in by:  # the bias at n = 50, in units of n = max
        out["train_subset_bias_ratio"] = by[("train subset", 50)] / by[("train subset", max(ns))]
    out["cpu_s"] = time.process_time() - t_all
    save_results(out, "fid_small_n", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
