"""diffkit text: discrete (masked) text diffusion with RADD -- ``sample``, ``nll`` and ``train``.

``--model`` (default ``text-radd``, the shipped character-level model in ``assets/``) is a diffkit
text pipeline folder, an official RADD checkpoint folder
(``config.json`` + ``model.safetensors``, e.g. a local copy of ``JingyangOu/radd-lambda-dce``),
a RADDTransformer folder, or ``tiny`` (a random byte-level model: smoke tests only).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from pathlib import Path

from diffkit.assets import REBUILD, AssetError, asset_path
from diffkit.atomic import write_text_atomically
from diffkit.checks import count_arg
from diffkit.commands._outputs import check_output_file
from diffkit.commands._training import add_training_arguments, prepare_outputs

# The library modules that import torch / diffusers (pipelines.discrete, likelihood, text_train,
# samplers.absorbing) are imported inside the subcommands, to keep ``diffkit --help`` light.

NAME = "text"
HELP = "discrete text diffusion (RADD): sample | nll | train | card"
DEMO_ORDER = 40


def add_arguments(p):
    sub = p.add_subparsers(dest="text_command", metavar="SUBCOMMAND")

    s = sub.add_parser("sample", help="sample text (per-row cached RADD sampler)")
    _model_args(s)
    s.add_argument("--steps", type=count_arg(), default=128, help="number of sampling steps n")
    s.add_argument("--n", type=count_arg(), default=4, help="number of samples")
    s.add_argument("--length", type=int, default=None, help="sequence length in tokens (default: the model's)")
    s.add_argument("--prompt", default=None, help="text placed at the start (never resampled)")
    s.add_argument("--suffix", default=None, help="text placed at the end (infilling)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--final", default="sample", choices=["sample", "argmax"], help="how the last step fills masks")
    s.add_argument("--precision", default="float64", choices=["float64", "float32"],
                   help="token draw precision (float32 = the public code's Gumbel regime)")
    s.add_argument("--method", default="tweedie", choices=["tweedie", "euler"])
    s.add_argument("--order", default=None, help="any-order AR sampling: forward | backward | random")
    s.add_argument("--no-cache", action="store_true", help="re-run every row at every step (baseline)")
    s.add_argument("--batch-size", type=count_arg(), default=None,
                   help="rows per sampling batch, >= 1 (default: all); the samples do not depend on it")
    s.add_argument("--output", default=None, help="also write the samples to this text file")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it goes to stderr, over the sampling steps of each batch of rows, "
                        "and is off anyway when stderr is not a terminal)")

    n = sub.add_parser("nll", help="NLL of a text: λ-DCE / k-DCE bound or exact fixed-order AR NLL")
    _model_args(n)
    src = n.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", default=None)
    src.add_argument("--file", default=None, help="read the text from this file")
    n.add_argument("--estimator", default="k-dce", choices=["k-dce", "lambda-dce", "ar-forward", "ar-backward",
                                                             "ar-random"],
                   help="k-dce (default: the bound with a finite-variance, honest error bar), lambda-dce (the "
                        "same bound, infinite variance: its ± is unreliable), or the exact NLL of one AR order")
    n.add_argument("--draws", type=count_arg(), default=64, help="Monte Carlo draws per block (bounds)")
    n.add_argument("--batch-size", type=count_arg(), default=16)

    t = sub.add_parser("train", help="train the character-level RADD model with λ-DCE (rebuild assets/text-radd "
                                     "with --replace-asset)")
    add_training_arguments(t, command="text-train", what="pipeline folder", max_steps=20000, batch_size=32,
                           lr=1.5e-3, checkpoint_every=250, threads_default=1)
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop at the first checkpoint after this much wall time (the step reached is recorded)")
    t.add_argument("--warmup-steps", type=int, default=100)
    t.add_argument("--preset", default="text", choices=["text", "tiny"], help="model size (tiny: tests)")
    t.add_argument("--corpus", default=None, help="corpus snapshot file (default assets/text-radd/corpus/...)")

    c = sub.add_parser("card", help="evaluate a trained text model folder and write its README.md model card")
    c.add_argument("--model", default="assets/text-radd", help="text pipeline folder (with training.json)")
    c.add_argument("--draws", type=int, default=16, help="λ-DCE Monte Carlo draws per held-out block")
    c.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256, 1024], help="step counts of the samples")
    c.add_argument("--prompt", default="A list ")
    c.add_argument("--threads", type=int, default=1)


def _model_args(p):
    p.add_argument("--model", default="text-radd",
                   help="pipeline / official RADD / RADDTransformer folder, 'tiny', or an asset name "
                        "(default: text-radd, the shipped character-level model)")
    p.add_argument("--tokenizer", default=None, help="byte | gpt2 | char:<alphabet> | folder (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these models are small; on a busy 2-core machine two "
                        "threads made sampling ~30x slower)")


def _resolve_model(model):
    """An asset name (``text-radd``) that is not a folder here resolves to the shipped asset."""
    if str(model) != "tiny" and not Path(model).exists() and str(model) in REBUILD:
        return str(asset_path(model, required=("model_index.json", "transformer", "tokenizer")))
    return model


def _pipeline(args, **sched):
    import torch

    from diffkit.pipelines.discrete import load_text_pipeline

    pipe = load_text_pipeline(_resolve_model(args.model), args.tokenizer, **sched)
    pipe.to(torch.device(args.device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(args):
    check_output_file(args.output, "--output")
    pipe = _pipeline(args, final=args.final, precision=args.precision, method=args.method)
    bs = args.n if args.batch_size is None else args.batch_size
    progress = not args.no_progress and sys.stderr.isatty()
    texts, seqs, nfe, changes, t0 = [], [], [], [], time.perf_counter()
    for start in range(0, args.n, bs):  # rows keyed by their global index: any --batch-size, same samples
        b = min(bs, args.n - start)
        if progress:  # one bar per batch of rows, over the steps it visits
            pipe.set_progress_bar_config(file=sys.stderr, leave=False, dynamic_ncols=True,
                                         desc=f"samples {start + 1}-{start + b} of {args.n}" if b > 1
                                         else f"sample {start + 1} of {args.n}")
        out = pipe(batch_size=b, seq_len=args.length, num_inference_steps=args.steps, prompt=args.prompt,
                   suffix=args.suffix, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   order=args.order, use_cache=not args.no_cache, seed=args.seed,
                   row_indices=range(start, start + b), progress=progress)
        seqs += out.sequences.tolist()
        texts += out.texts or [" ".join(map(str, r)) for r in out.sequences.tolist()]
        nfe += out.nfe_per_sample.tolist()
        changes += out.changes_per_sample.tolist()
    dt = time.perf_counter() - t0
    for k, t in enumerate(texts):
        print(f"--- sample {k} ---\n{t}")
    print(f"{len(texts)} samples, {pipe.scheduler.num_inference_steps} steps, "
          f"{'no cache' if args.no_cache else 'per-row cache'}: NFE (forward rows/sample) "
          f"{sum(nfe) / len(nfe):.1f}, steps with a change {sum(changes) / len(changes):.1f}, {dt:.2f} s",
          file=sys.stderr)
    if pipe.tokenizer is None:
        print("(no tokenizer available: printed token ids; pass --tokenizer)", file=sys.stderr)
    if args.output:
        write_text_atomically(args.output, "\n\n".join(texts) + "\n")


def _nll(args):
    from diffkit.likelihood import blocked_nll, split_blocks

    pipe = _pipeline(args)
    if pipe.tokenizer is None:
        raise ValueError("the model has no tokenizer; pass --tokenizer (byte | gpt2 | char:<alphabet> | folder)")
    text = args.text if args.text is not None else open(args.file, encoding="utf-8").read()
    ids = pipe.tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty")
    L = int(pipe.transformer.config.length)
    blocks = split_blocks(ids, L)  # the model's length per block; block k scored with seed --seed + k
    r = blocked_nll(pipe.transformer, blocks, args.estimator, args.draws, seed=args.seed, batch_size=args.batch_size)
    se = f" ± {r.stderr:.3f}" if r.stderr or math.isnan(r.stderr) else ""
    bits = r.nll / len(text) / math.log(2)
    bits_se = f" ± {r.stderr / len(text) / math.log(2):.4f}" if se else ""
    draws = f", {args.draws} draws per block" if args.estimator in ("k-dce", "lambda-dce") else ""
    print(f"{args.estimator}: NLL {r.nll:.3f}{se} nats over {len(ids)} tokens ({len(blocks)} block(s) of <= {L}"
          f"{draws}) = {r.nll / len(ids):.4f} nats/token, PPL {math.exp(r.nll / len(ids)):.3f}; "
          f"{bits:.4f}{bits_se} bits/char over {len(text)} characters")


def _train(args):
    from diffkit.text_train import train_text_model

    command = "diffkit text train " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    output, run_dir = prepare_outputs(args, "text-train")
    t0 = time.perf_counter()
    res = train_text_model(output, max_steps=args.max_steps, max_minutes=args.max_minutes, seed=args.seed,
                           resume=args.resume, run_dir=run_dir, batch_size=args.batch_size, lr=args.lr,
                           warmup_steps=args.warmup_steps, preset=args.preset, checkpoint_every=args.checkpoint_every,
                           keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress,
                           corpus_path=args.corpus, command=command)
    loss = "n/a" if res.final_loss is None else f"{res.final_loss:.4f}"
    print(f"trained {res.step} steps (final λ-DCE loss {loss} nats/char, {res.wall_time_s:.0f} s of training, "
          f"{time.perf_counter() - t0:.0f} s this session); wrote {output}; checkpoints in {res.run_dir}")


def demo_step(ctx):
    """The shipped text model: one prompted sample at a few step counts, with its NFE."""
    try:
        from diffkit.pipelines.discrete import load_text_pipeline

        pipe = load_text_pipeline(_resolve_model("text-radd"))
    except AssetError as e:
        ctx.say(f"- Text model: skipped ({e})")
        return
    pipe.set_progress_bar_config(disable=True)
    L = int(pipe.transformer.config.length)
    ctx.say(f"- Text RADD (`assets/text-radd`, {sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.2f}M "
            f"params, L = {L}), prompt \"A list \", per-row cache:")
    lines = []
    for steps in ((16, 128) if ctx.quick else (16, 64, 256)):
        t0 = time.perf_counter()
        out = pipe(batch_size=1, num_inference_steps=steps, prompt="A list ", seed=0)
        dt = time.perf_counter() - t0
        text = out.texts[0].replace("\n", "⏎")
        ctx.say(f"  - {steps} steps: NFE {out.nfe:.0f} (law {_law(steps, int(out.num_generated[0])):.1f}), "
                f"{dt:.2f} s: `{text[:80]}…`")
        lines.append(f"=== {steps} steps, NFE {out.nfe:.0f} ===\n{out.texts[0]}\n")
    os.makedirs(os.path.dirname(ctx.path("text_samples.txt")) or ".", exist_ok=True)
    write_text_atomically(ctx.path("text_samples.txt"), "\n".join(lines))


def _law(n, length):
    from diffkit.samplers.absorbing import expected_nfe

    return expected_nfe(n, length)


def run(args):
    cmd = getattr(args, "text_command", None)
    if cmd == "sample":
        return _sample(args)
    if cmd == "nll":
        return _nll(args)
    if cmd == "train":
        return _train(args)
    if cmd == "card":
        from diffkit.text_train import write_model_card

        print(f"wrote {write_model_card(args.model, draws=args.draws, steps=tuple(args.steps), prompt=args.prompt)}")
        return 0
    print("usage: diffkit text {sample,nll,train,card} ... (see diffkit text SUBCOMMAND --help)", file=sys.stderr)
    return 2
