"""RADD sampling: the E-NFE law, the official float32/float16 race that breaks it, and the
per-row cache speed-up.

Part 1 -- NFE law with a uniform model over GPT-2's 50,257 tokens (no network: the model's
log-probs are constant), l = 1024 generated tokens: diffkit's two-stage draw (RADDScheduler)
against n(1 - (1 - 1/n)^l) and against the reference of the official joint race
(float32 draw, float16 or float32 probability buffer; measured on the official sampler, H200:
486-499 / 541-579 at n = 1024-4096, docs/methods/radd.md).

Part 2 -- cache speed-up with a tiny random RADD on this machine: wall time of the sampler
without cache (every row, every step) and with the per-row cache (only changed rows are re-run,
only steps that reveal a token are visited), against the ideal n / E-NFE.

    python benchmarks/radd_cache.py [--quick] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from diffusers.configuration_utils import FrozenDict

from diffkit.atomic import write_json_atomically
from diffkit.models.radd import tiny_radd_transformer
from diffkit.pipelines.discrete import DiscreteDiffusionPipeline
from diffkit.samplers.absorbing import expected_nfe
from diffkit.samplers.radd import RADDScheduler
from diffkit.samplers.radd_reference import simulate_joint_race_nfe

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
        rows.append(dict(n=n, l=length, law=law, two_stage=ts, race_fp32=r32, race_fp16=r16))
    return rows


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
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
    L, H, blocks = (128, 64, 2) if quick else (512, 128, 4)
    model = tiny_radd_transformer(vocab_size=256, hidden_size=H, n_heads=4, n_blocks=blocks, length=L)
    pipe = DiscreteDiffusionPipeline.from_model(model)
    ratios = [1, 4] if quick else [0.25, 1, 2, 4]
    repeat = 1 if quick else 2
    rows = []
    print(f"\n## Cache speed-up, tiny RADD (V = 256, H = {H}, {blocks} blocks), l = L = {L}, "
          f"{torch.get_num_threads()} thread(s), {'CUDA' if torch.cuda.is_available() else 'CPU'}\n")
    print("f = one forward call of the batch; o = sampler time per step that reveals something (zero-cost "
          "network); ideal = n / E-NFE.\n")
    print("| batch | n | f (ms) | o (ms) | E-NFE law | NFE cached (rows/sample) | no cache (s) | cached (s) | "
          "speed-up | ideal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for B in (1, 8):
        x = torch.randint(0, 256, (B, L))
        with torch.no_grad():
            f = _time(lambda: model(x), 5 if quick else 10)
            frozen = DiscreteDiffusionPipeline(_Frozen(model(x), 256, L), pipe.scheduler)
        for r in ratios:
            n = int(r * L)
            res = {}
            t_o = _time(lambda: res.__setitem__("o", frozen(batch_size=B, num_inference_steps=n, output_type="ids")), 1)
            o = t_o / max(res["o"].forward_calls, 1)
            t_u = _time(lambda: res.__setitem__("u", pipe(batch_size=B, num_inference_steps=n, use_cache=False,
                                                            output_type="ids")), repeat)
            t_c = _time(lambda: res.__setitem__("c", pipe(batch_size=B, num_inference_steps=n, use_cache=True,
                                                            output_type="ids")), repeat)
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
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = dict(quick=args.quick, threads=args.threads, torch=torch.__version__, nfe_law=part1(args.quick),
                  cache=part2(args.quick))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        write_json_atomically(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
