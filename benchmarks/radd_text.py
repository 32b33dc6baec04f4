"""The shipped character-level RADD model (assets/text-radd): caching, draw precision, NLL, sample quality.

(a) cache speed-up on the shipped model: wall time and NFE, cached vs uncached, at
    n ∈ {L/4, L, 2L, 4L}, batch 1 and 8, against the law's ideal n / E-NFE (E-NFE = n(1-(1-1/n)^l)).
(b) the draw's precision: diffkit's two-stage float64 draw vs the official joint float32 race
    (float16 / float32 probability buffer) -- NFE and unmasking curves against the law, with a
    uniform model over a 50,257-token vocabulary, l = 1024, n ∈ {1024, 4096} (a ~100-character
    vocabulary cannot show the effect: the race's deficit grows with V).
(c) held-out NLL bound (λ-DCE and k-DCE, bits/char) vs number of Monte Carlo draws per block.
(d) sample quality proxy: perplexity of samples under a character bigram model fitted on the
    train split, and their unigram entropy, at several step counts (held-out text for reference).

Times are CPU seconds of this process (one torch thread: robust to other jobs on the shared machine).

    diffkit bench radd_text --parts a     # full size -> benchmarks/results/radd_text_a.json
    diffkit bench radd_text --parts b     #           -> benchmarks/results/radd_text_b.json
    diffkit bench radd_text --parts cd    #           -> benchmarks/results/radd_text_cd.json
    python benchmarks/radd_text.py --quick [--json PATH]   # CI size: all four parts, one JSON if --json

A full run writes one results file per group (a, b, cd) as soon as that group is done; ``--parts``
must then be a union of whole groups (``abcd``, the default, writes all three).
Full size on one thread of the 2-core x86_64 machine (CPU time of the process): part a 179 s, b 3 s,
c and d 214 s together (c: the 64-draw rows dominate); the whole `--parts abcd` run took 404 CPU-seconds
(user + system) and 16.5 min of wall time under a load of ~5 from other jobs. --quick: about 12 CPU-seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import COMMAND_ENV, save_results  # noqa: E402

from diffkit.assets import asset_path  # noqa: E402
from diffkit.pipelines.discrete import load_text_pipeline  # noqa: E402
from diffkit.samplers.absorbing import expected_nfe  # noqa: E402
from diffkit.samplers.radd import RADDScheduler  # noqa: E402
from diffkit.samplers.radd_reference import joint_race_unmask_uniform  # noqa: E402
from diffkit.text_corpus import BigramModel, corpus_alphabet, corpus_split, unigram_entropy_bits  # noqa: E402
from diffkit.text_train import heldout_nll_bound  # noqa: E402

V_GPT2 = 50257
#: the results files of a full run: parts -> file stem
GROUPS = {"a": "radd_text_a", "b": "radd_text_b", "cd": "radd_text_cd"}


def _pipe(model):
    pipe = load_text_pipeline(str(asset_path(model, required=("model_index.json",))))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _best(fn, repeat: int) -> float:
    """Best CPU time of the process over ``repeat`` calls (one torch thread)."""
    best = math.inf
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


# ------------------------------------------------------------------ (a)
def part_a(pipe, quick: bool) -> list[dict]:
    L = int(pipe.transformer.config.length)
    ratios = [0.25, 1, 4] if quick else [0.25, 1, 2, 4]
    batches = [1, 8]
    repeat = 1 if quick else 3
    print(f"\n## (a) Cache speed-up on the shipped model (L = l = {L}, unprompted), "
          f"{torch.get_num_threads()} thread(s), {_machine()}; CPU seconds of this process\n")
    print("| batch | n | E-NFE law | NFE cached (rows/sample) | NFE uncached | no cache (CPU s) | cached (CPU s) | "
          "speed-up | ideal n/E-NFE | same samples |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    pipe(batch_size=1, num_inference_steps=8, output_type="ids")  # warm-up
    for B in batches:
        for r in ratios:
            if quick and B > 1 and r > 0.25:  # CI: the long batch-8 rows only in the full run
                continue
            n = int(r * L)
            res = {}
            t_u = _best(lambda: res.__setitem__("u", pipe(batch_size=B, num_inference_steps=n, use_cache=False,
                                                          output_type="ids", seed=1)), repeat)
            t_c = _best(lambda: res.__setitem__("c", pipe(batch_size=B, num_inference_steps=n, use_cache=True,
                                                          output_type="ids", seed=1)), repeat)
            law = expected_nfe(n, L)
            same = torch.equal(res["u"].sequences, res["c"].sequences)
            print(f"| {B} | {n} | {law:.1f} | {res['c'].nfe:.1f} | {res['u'].nfe:.0f} | {t_u:.2f} | {t_c:.2f} | "
                  f"{t_u / t_c:.2f}x | {n / law:.2f}x | {'yes' if same else 'no'} |")
            rows.append(dict(batch=B, n=n, L=L, law=law, nfe_cached=res["c"].nfe, nfe_uncached=res["u"].nfe,
                             nfe_changes=res["c"].nfe_changes, uncached_s=t_u, cached_s=t_c, speedup=t_u / t_c,
                             ideal=n / law, identical=same))
    return rows


# ------------------------------------------------------------------ (b)
def _two_stage(n: int, length: int, samples: int, seed: int):
    """Reveal step of every position (the pipeline's stage-1 draw, float64), uniform model."""
    sched = RADDScheduler(num_inference_steps=n, mask_token_id=V_GPT2)
    sched.set_timesteps(n)
    x = torch.full((samples, length), V_GPT2)
    gens = [torch.Generator().manual_seed(seed * 1000 + b) for b in range(samples)]
    steps = sched.reveal_steps(x, gens)
    counts = torch.stack([torch.bincount(r, minlength=n) for r in steps])  # [S, n] reveals per step
    return counts, sched.times


def _race(n: int, length: int, samples: int, seed: int, buffer_dtype):
    """The official joint race (float32 draw, ``buffer_dtype`` probabilities), uniform model, per step."""
    sched = RADDScheduler(num_inference_steps=n, mask_token_id=V_GPT2)
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    masked = torch.full((samples,), length, dtype=torch.long)
    rows = torch.arange(samples)
    counts = torch.zeros(samples, n, dtype=torch.long)
    for i, psi in enumerate(sched.psis):
        total = int(masked.sum())
        if total == 0:
            break
        hit = joint_race_unmask_uniform(total, V_GPT2, psi, final=i == n - 1, generator=g, buffer_dtype=buffer_dtype)
        c = torch.zeros(samples, dtype=torch.long).index_add_(0, rows.repeat_interleave(masked), hit.long())
        counts[:, i] = c
        masked -= c
    return counts


def part_b(quick: bool) -> list[dict]:
    length = 1024
    grid = [1024, 4096]
    samples, race_samples = (4, 2) if quick else (32, 8)
    fracs = [0.5, 0.9, 0.99, 0.999]
    print(f"\n## (b) Draw precision: uniform model, V = {V_GPT2}, l = {length}\n")
    print("NFE = steps with >= 1 reveal (mean over samples, % vs the law). Masked fraction after "
          "step i: law = t_(i+1) (log-linear, stay probability s/t per step).\n")
    print("| n | law E-NFE | two-stage float64 | race fp32 buffer | race fp16 buffer | masked at t≈ "
          + " / ".join(f"{1 - f:g}" for f in fracs) + ": law | two-stage | race fp16 |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for n in grid:
        law = expected_nfe(n, length)
        ts, times = _two_stage(n, length, samples, seed=n)
        r32 = _race(n, length, race_samples, n + 1, torch.float32)
        r16 = _race(n, length, race_samples, n + 2, torch.float16)

        def nfe(c):
            return [(r > 0).sum().item() for r in c]

        def masked_after(c, i):
            return 1.0 - float(c[:, :i + 1].sum()) / (c.shape[0] * length)

        idx = [min(n - 2, int(f * n)) for f in fracs]
        curve = {name: [masked_after(c, i) for i in idx] for name, c in (("two_stage", ts), ("race_fp16", r16),
                                                                          ("race_fp32", r32))}
        curve["law"] = [times[i + 1] for i in idx]

        def fmt(v):
            m = statistics.fmean(v)
            return f"{m:.1f} ({100 * (m / law - 1):+.1f}%)"

        def cf(v):
            return " / ".join(f"{x:.4f}" for x in v)

        print(f"| {n} | {law:.1f} | {fmt(nfe(ts))} | {fmt(nfe(r32))} | {fmt(nfe(r16))} | {cf(curve['law'])} | "
              f"{cf(curve['two_stage'])} | {cf(curve['race_fp16'])} |")
        row = dict(n=n, l=length, law=law, two_stage=nfe(ts), race_fp32=nfe(r32), race_fp16=nfe(r16),
                   curve_steps=idx, curve=curve)
        for k in ("two_stage", "race_fp32", "race_fp16"):  # the means the README quotes, and their gap to the law
            row[f"{k}_mean"] = statistics.fmean(row[k])
            row[f"{k}_vs_law"] = row[f"{k}_mean"] / law - 1
        rows.append(row)
    return rows


# ------------------------------------------------------------------ (c)
ESTIMATORS = (("lambda-dce", "λ-DCE"), ("k-dce", "k-DCE"))


def part_c(pipe, quick: bool) -> list[dict]:
    """The held-out bound of the model card (diffkit.text_train.heldout_nll_bound: block k with
    seed k, the rule of ``diffkit text nll``), both estimators, vs draws per block."""
    draws = [1, 4, 16] if quick else [1, 4, 16, 64]
    max_blocks = 8 if quick else None
    print("\n## (c) Held-out NLL bound vs Monte Carlo draws per block (λ-DCE: stratified λ, the training "
          "loss; k-DCE: the CLI's default, finite variance)\n")
    print("| estimator | draws / block | blocks | characters | bound (bits/char) | MC std. error |")
    print("|---|---|---|---|---|---|")
    rows = []
    for est, label in ESTIMATORS:
        for d in draws:
            t = time.process_time()
            r = heldout_nll_bound(pipe.transformer, pipe.tokenizer, d, max_blocks, estimator=est)
            r["seconds"] = time.process_time() - t
            se = "n/a" if d == 1 else f"{r['stderr_bits']:.3f}"
            print(f"| {label} | {d} | {r['blocks']} | {r['chars']} | {r['bits_per_char']:.3f} | {se} |")
            rows.append(r)
    return rows


# ------------------------------------------------------------------ (d)
def part_d(pipe, quick: bool) -> list[dict]:
    steps = [16, 64] if quick else [16, 64, 256, 1024]
    n = 4 if quick else 32
    bg = BigramModel(corpus_split("train"), corpus_alphabet())
    held = corpus_split("heldout")
    print(f"\n## (d) Sample quality proxy: {n} unprompted samples per step count (cached, float64 draw)\n")
    print("| steps | bigram perplexity | unigram entropy (bits/char) | mean NFE | CPU s |")
    print("|---|---|---|---|---|")
    print(f"| held-out text | {bg.perplexity(held):.2f} | {unigram_entropy_bits(held):.3f} | | |")
    held_ppl = bg.perplexity(held)  # per character; its log2 is the bigram model's bits/char on held-out text
    rows = [dict(steps="heldout", bigram_ppl=held_ppl, bigram_bits=math.log2(held_ppl),
                 unigram_entropy=unigram_entropy_bits(held))]
    for s in steps:
        t = time.process_time()
        out = pipe(batch_size=n, num_inference_steps=s, seed=0)
        dt = time.process_time() - t
        ppl = statistics.fmean(bg.perplexity(x) for x in out.texts)  # mean of per-sample perplexities
        ent = unigram_entropy_bits("".join(out.texts))
        print(f"| {s} | {ppl:.2f} | {ent:.3f} | {out.nfe:.1f} | {dt:.1f} |")
        rows.append(dict(steps=s, bigram_ppl=ppl, unigram_entropy=ent, nfe=out.nfe, seconds=dt,
                         example=out.texts[0]))
    return rows


def _machine() -> str:
    return (f"{torch.cuda.get_device_name()}" if torch.cuda.is_available()
            else f"{platform.machine()} {os.cpu_count()}-core CPU")


def _groups(parts: str, full: bool) -> list[str]:
    """The results files a run writes: each group of GROUPS in ``parts`` (a full run's parts must be whole
    groups), or all parts in one file (``--json``)."""
    if not full:
        return ["".join(sorted(set(parts)))]
    groups = [g for g in GROUPS if set(g) <= set(parts)]
    if set("".join(groups)) != set(parts):
        files = ", ".join(f"{v}.json (parts {k})" for k, v in GROUPS.items())
        raise SystemExit(f"--parts {parts!r}: a full run writes {files}; give whole groups "
                         "(e.g. --parts cd), or --json PATH for another subset")
    return groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (CI: well under a minute)")
    p.add_argument("--parts", default="abcd", help="which benchmarks to run (subset of 'abcd')")
    p.add_argument("--model", default="text-radd", help="text pipeline folder or asset name")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small ops: 1 is fastest)")
    p.add_argument("--json", default=None, help="write all parts' results to this JSON file (default: a full run "
                   "through `diffkit bench radd_text` writes benchmarks/results/radd_text_{a,b,cd}.json; "
                   "--quick writes none)")
    args = p.parse_args(argv)
    bad = set(args.parts) - set("abcd")
    if bad or not args.parts:
        raise SystemExit(f"--parts must be letters of 'abcd', got {args.parts!r}")
    groups = _groups(args.parts, full=not args.quick and not args.json)
    if not args.quick and not args.json and not os.environ.get(COMMAND_ENV):  # fail now, not after the run
        raise SystemExit("a full run writes benchmarks/results/radd_text_*.json: run it as `diffkit bench radd_text "
                         f"--parts {args.parts}` (or pass --json PATH)")
    torch.set_num_threads(args.threads)
    pipe = _pipe(args.model) if set(args.parts) & set("acd") else None
    fns = {"a": lambda: part_a(pipe, args.quick), "b": lambda: part_b(args.quick),
           "c": lambda: part_c(pipe, args.quick), "d": lambda: part_d(pipe, args.quick)}
    for group in groups:
        t0 = time.process_time()
        result = dict(quick=args.quick, threads=args.threads, torch=torch.__version__, machine=_machine())
        with torch.no_grad():
            for part in "abcd":
                if part in group and part in args.parts:
                    result[part] = fns[part]()
        result["cpu_s"] = time.process_time() - t0
        print(f"\n(parts {group}: {result['cpu_s']:.0f} CPU s)")
        save_results(result, GROUPS.get(group, "radd_text"), json_path=args.json, quick=args.quick,
                     script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
