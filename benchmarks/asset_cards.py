"""The measured figures of the shipped models' cards that no other benchmark computes.

- ``digits_features``: top-1 accuracy of ``assets/digits-features`` on the held-out test split and on
  the train split (images quantised as in the FID-digits protocol), as its card quotes them.
- ``text_radd``: the sample section of ``assets/text-radd/README.md`` -- for each step count, one
  sample with the prompt 'A list ' (seed 0, per-row cache, float64 draw): its NFE, the E-NFE law for
  its generated length and its CPU time; and 8 unprompted samples (seed 0): their mean bigram
  perplexity under the train-split bigram model and their unigram entropy. Held-out references too.
  (The card's held-out NLL bound is radd_text part c: benchmarks/results/radd_text_cd.json.)

The other card figures are either results of other benchmarks (digits-unet quality:
digits_quality.json) or facts of the training run that made the shipped weights (final loss, wall
time: the asset's ``training.json`` / the training log), quoted outside markers.

Times are CPU seconds of this process (one torch thread).

    diffkit bench asset_cards            # full size -> benchmarks/results/asset_cards.json
    python benchmarks/asset_cards.py --quick [--json PATH]   # CI size (two step counts)

Full size: 14 CPU-seconds of benchmark (20 s of user CPU with the imports; 69 s of wall time under a load
of ~5) on one thread of the 2-core x86_64 machine; --quick: about 4 CPU-seconds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from diffkit.assets import asset_path  # noqa: E402
from diffkit.data import digits_tensors, quantize  # noqa: E402
from diffkit.models.digits_features import load_feature_net  # noqa: E402
from diffkit.pipelines.discrete import load_text_pipeline  # noqa: E402
from diffkit.samplers.absorbing import expected_nfe  # noqa: E402
from diffkit.text_corpus import BigramModel, corpus_alphabet, corpus_split, unigram_entropy_bits  # noqa: E402

PROMPT = "A list "
UNPROMPTED = 8


def digits_features() -> dict:
    net = load_feature_net("digits-features")
    out = {}
    for split in ("test", "train"):
        x, y = digits_tensors(split)
        with torch.no_grad():
            correct = int((net(quantize(x)).argmax(1) == y).sum())
        out[split] = dict(correct=correct, n=int(len(y)), accuracy=correct / len(y))
    print(f"digits-features: test {out['test']['accuracy']:.4f} ({out['test']['correct']}/{out['test']['n']}), "
          f"train {out['train']['accuracy']:.4f} (n = {out['train']['n']})")
    return out


def text_radd(quick: bool, seed: int = 0) -> dict:
    pipe = load_text_pipeline(str(asset_path("text-radd", required=("model_index.json",))))
    pipe.set_progress_bar_config(disable=True)
    bg = BigramModel(corpus_split("train"), corpus_alphabet())
    held = corpus_split("heldout")
    held_ppl = bg.perplexity(held)
    res = dict(prompt=PROMPT, seed=seed, unprompted=UNPROMPTED,
               heldout=dict(bigram_ppl=held_ppl, bigram_bits=math.log2(held_ppl),
                            unigram_entropy=unigram_entropy_bits(held)), samples=[])
    pipe(batch_size=1, num_inference_steps=8, prompt=PROMPT, seed=seed)  # warm-up
    print("| steps | NFE | law | CPU s | bigram ppl (8 unprompted) | entropy (bits/char) |\n|---|---|---|---|---|---|")
    with torch.no_grad():
        for n in ((16, 64) if quick else (16, 64, 256, 1024)):
            t0 = time.process_time()
            out = pipe(batch_size=1, num_inference_steps=n, prompt=PROMPT, seed=seed)
            dt = time.process_time() - t0
            unc = pipe(batch_size=UNPROMPTED, num_inference_steps=n, seed=seed)
            s = dict(steps=n, cpu_s=dt, nfe=out.nfe, law=expected_nfe(n, int(out.num_generated[0])), text=out.texts[0],
                     bigram_ppl=statistics.fmean(bg.perplexity(t) for t in unc.texts),
                     entropy=unigram_entropy_bits("".join(unc.texts)))
            print(f"| {n} | {s['nfe']:.0f} | {s['law']:.1f} | {dt:.2f} | {s['bigram_ppl']:.2f} | {s['entropy']:.2f} |")
            res["samples"].append(s)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI size: two step counts for the text model")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", default=None, help="results JSON (default: benchmarks/results/asset_cards.json for a "
                   "full run through `diffkit bench asset_cards`; none for --quick)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.process_time()
    result = dict(quick=args.quick, threads=args.threads, digits_features=digits_features(),
                  text_radd=text_radd(args.quick))
    result["cpu_s"] = time.process_time() - t0
    print(f"\n(total {result['cpu_s']:.0f} CPU s)")
    save_results(result, "asset_cards", json_path=args.json, quick=args.quick, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
