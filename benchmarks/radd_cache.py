"""RADD sampling: the E-NFE law, the official float32/float16 race that breaks it, and the
per-row cache's wall-time ratio.

Part 1 -- NFE law with a uniform model over GPT-2's 50,257 tokens (no network: the model's
log-probs are constant), l = 1024 generated tokens: diffkit's two-stage draw (RADDScheduler)
against n(1 - (1 - 1/n)^l) and against ``samplers/radd_reference.py``'s reimplementation of the
official joint race (float32 draw, float16 or float32 probability buffer).

Part 2 -- the cache on a tiny random RADD on this machine: wall time of the sampler without cache
(every row, every step) and with the per-row cache (only changed rows are re-run, only steps that
reveal a token are visited). The cache cuts the network calls from n to about E-NFE per row by
construction, so its wall-time ratio is about n / E-NFE (the "ideal" column) whenever the network
dominates the step; the table measures how close the sampler gets to it.

    diffkit bench radd_cache                  # full size -> benchmarks/results/radd_cache.json
    python benchmarks/radd_cache.py --quick   # CI size (--json PATH to keep it)

Full size: about 4.6 min of CPU (276 s user + system) on one thread of the 2-core x86_64 machine
(37 min of wall time there under a load of ~14 from other jobs; --quick: about 30 s of CPU).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers.configuration_utils import FrozenDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.models.radd import tiny_radd_transformer  # noqa: E402
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline  # noqa: E402
from diffkit.samplers.absorbing import expected_nfe  # noqa: E402
from diffkit.samplers.radd import RADDScheduler  # noqa: E402
from diffkit.samplers.radd_reference import simulate_joint_race_nfe  # noqa: E402

V_GPT2 = 50257


def two_stage_nfe(n: int, length: int, vocab: int, samples: int, seed: int = 0) -> list[int]:
    """Steps with a reveal per sample, RADDScheduler, uniform model (an expanded constant output)."""
    sched = RADDScheduler(num_inference_steps=n, mask_token_id=vocab)
    out = torch.zeros(1, 1, vocab + 1).expand(samples, length, vocab + 1)
    x = torch.full((samples, length), vocab)
    g = torch.Generator().manual_seed(seed)
    changes = torch.zeros(samples, dtype=torch.long)
    for i in range(n):
        res = sched.step(out, i, x, generator=g)
        x = res.prev_sample
        changes += res.changed_rows
    return changes.tolist()


def part1(quick: bool) -> list[dict]:
    length = 1024
    grid = [1024, 4096] if quick else [256, 1024, 2048, 4096]
    samples, race_samples = (4, 2) if quick else (16, 4)
    rows = []
    print(f"\n## E-NFE law, uniform model, V = {V_GPT2}, l = {length} (batch 1 per sample)\n")
    print("| n | law n(1-(1-1/n)^l) | diffkit two-stage (float64) | official race, fp32 buffer | "
          "official race, fp16 buffer |")
    print("|---|---|---|---|---|")
    for n in grid:
        law = expected_nfe(n, length)
        ts = two_stage_nfe(n, length, V_GPT2, samples, seed=n)
        g = torch.Generator().manual_seed(n)
        r32 = simulate_joint_race_nfe(n, length, V_GPT2, race_samples, generator=g, buffer_dtype=torch.float32).tolist()
        r16 = simulate_joint_race_nfe(n, length, V_GPT2, race_samples, generator=g, buffer_dtype=torch.float16).tolist()

        def fmt(v):
            m = statistics.fmean(v)
            return f"{m:.1f} ({100 * (m / law - 1):+.1f}%)"

        print(f"| {n} | {law:.1f} | {fmt(ts)} | {fmt(r32)} | {fmt(r16)} |")
        means = {k: statistics.fmean(v) for k, v in (("two_stage", ts), ("race_fp32", r32), ("race_fp16", r16))}
        rows.append(dict(n=n, l=length, law=law, two_stage=ts, race_fp32=r32, race_fp16=r16,
                         **{f"{k}_mean": m for k, m in means.items()},
                         **{f"{k}_vs_law_pct": 100 * (m / law - 1) for k, m in means.items()}))
    return rows


def _time(fn, repeat: int) -> float:
    """Best CPU time of the process (one torch thread: robust to other jobs on a shared machine)."""
    best = math.inf
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


class _Frozen(torch.nn.Module):
    """A 'network' that costs nothing: isolates the sampler's own per-step cost."""

    time_conditioned = False

    def __init__(self, out, mask_token_id, length):
        super().__init__()
        self.out, self.mask_token_id = out, mask_token_id
        self.config = FrozenDict(vocab_size=mask_token_id, length=length)

    def forward(self, ids):
        return self.out[: ids.shape[0]].clone()  # a fresh tensor, as a real network returns


def part2(quick: bool) -> list[dict]:
    L, H, blocks = (128, 64, 2) if quick else (256, 128, 4)
    torch.manual_seed(0)  # the random weights
    model = tiny_radd_transformer(vocab_size=256, hidden_size=H, n_heads=4, n_blocks=blocks, length=L)
    pipe = DiscreteDiffusionPipeline.from_model(model)
    ratios = [1, 4] if quick else [0.25, 1, 4]
    repeat = 1
    rows = []
    print(f"\n## Cache wall-time ratio, tiny RADD (V = 256, H = {H}, {blocks} blocks), l = L = {L}, "
          f"{torch.get_num_threads()} thread(s), {'CUDA' if torch.cuda.is_available() else 'CPU'}\n")
    print("Times are CPU seconds of this process (1 thread). f = one forward call of the batch; o = sampler time "
          "per step that reveals something (zero-cost "
          "network); ideal = n / E-NFE (the cut in network calls, by construction).\n")
    print("| batch | n | f (ms) | o (ms) | E-NFE law | NFE cached (rows/sample) | no cache (CPU s) | cached (CPU s) | "
          "speed-up | ideal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for B in (1, 8):
        x = torch.randint(0, 256, (B, L), generator=torch.Generator().manual_seed(B))
        with torch.no_grad():
            model(x)  # warm-up
            f = _time(lambda: model(x), 5 if quick else 10)
            frozen = DiscreteDiffusionPipeline(_Frozen(model(x), 256, L), pipe.scheduler)
            for q in (pipe, frozen):  # warm-up of the sampling loops (a short call each)
                q(batch_size=B, num_inference_steps=8, output_type="ids", seed=0)
        for r in ratios:
            n = int(r * L)
            res = {}
            t_o = _time(lambda: res.__setitem__("o", frozen(batch_size=B, num_inference_steps=n, output_type="ids",
                                                                seed=1)), 1)
            o = t_o / max(res["o"].forward_calls, 1)
            t_u = _time(lambda: res.__setitem__("u", pipe(batch_size=B, num_inference_steps=n, use_cache=False,
                                                            output_type="ids", seed=1)), repeat)
            t_c = _time(lambda: res.__setitem__("c", pipe(batch_size=B, num_inference_steps=n, use_cache=True,
                                                            output_type="ids", seed=1)), repeat)
            same = torch.equal(res["u"].sequences, res["c"].sequences)
            law = expected_nfe(n, L)
            nfe = res["c"].nfe
            print(f"| {B} | {n} | {1e3 * f:.2f} | {1e3 * o:.3f} | {law:.1f} | {nfe:.1f} | {t_u:.2f} | {t_c:.2f} | "
                  f"{t_u / t_c:.2f}x | {n / law:.2f}x |" + ("" if same else " (samples differ!)"))
            rows.append(dict(batch=B, n=n, L=L, forward_s=f, overhead_s=o, law=law, nfe_cached=nfe,
                             uncached_s=t_u, cached_s=t_c, speedup=t_u / t_c, ideal=n / law, identical=same))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a minute or so on 2 CPU cores)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small ops: 1 is fastest)")
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/radd_cache.json for a "
                   "full run through `diffkit bench radd_cache`; none for --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = dict(quick=args.quick, threads=args.threads, nfe_law=part1(args.quick), cache=part2(args.quick))
    result["total_s"] = time.perf_counter() - t0
    print(f"\n(total {result['total_s']:.0f} s)")
    save_results(result, "radd_cache", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
