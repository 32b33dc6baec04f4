"""diffkit train-features: train the digits feature network (assets/digits-features).

A small CNN classifier (``diffkit.models.digits_features``) trained with cross-entropy on
the train split of ``diffkit.data`` through the same loop as the teacher
(``diffkit.train.Trainer``: EMA weights, atomic checkpoints, exact resume). Writes
``config.json`` (architecture + recorded accuracies), ``model.safetensors`` (EMA weights),
``train_stats.npz`` (the FID-digits reference statistics of the train split) and a README
to ``--output`` (default ``runs/train-features``; rebuilding the shipped network needs
``--output assets/digits-features --replace-asset``).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

from diffkit.commands._training import add_training_arguments, prepare_outputs

NAME = "train-features"
HELP = ("train the digits feature network and its FID reference statistics (rebuild assets/digits-features with "
        "--replace-asset)")


def add_arguments(p):
    add_training_arguments(p, command=NAME, what="folder", max_steps=1500, batch_size=128, lr=2e-3,
                           checkpoint_every=500)


class ClassifierLoss:
    """Cross-entropy of ``model(x)`` against labels (batches are ``(x, labels)``)."""

    def __call__(self, model, batch, indices, step):
        import torch.nn.functional as F

        x, y = batch
        return F.cross_entropy(model(x), y)


def accuracy(net, split: str) -> tuple[int, int]:
    """(correct, n) of ``net`` on a split (images quantised as in the protocol: a no-op for data)."""
    import torch

    from diffkit.data import digits_tensors, quantize

    x, y = digits_tensors(split)
    with torch.no_grad():
        pred = net(quantize(x)).argmax(1)
    return int((pred == y).sum()), int(len(y))


def train_features(output, max_steps: int = 1500, seed: int = 0, resume=None, run_dir=None, batch_size: int = 128,
                   lr: float = 2e-3, checkpoint_every: int = 500, keep_checkpoints: int = 2, progress: bool = True,
                   accelerator=None, command: str | None = None):
    import torch

    from diffkit.atomic import replace_dir, staging_dir
    from diffkit.data import TEST_EVERY, digits_tensors
    from diffkit.metrics.digits import compute_reference_stats, save_reference_stats
    from diffkit.models.digits_features import DigitsFeatureNet
    from diffkit.train import IndexedDataSource, Trainer, TrainConfig, resolve_run_dir
    from diffkit.weights import write_manifest

    output = Path(output)
    run_dir = resolve_run_dir(output, run_dir)
    x, y = digits_tensors("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsFeatureNet()
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=1e-4, warmup_steps=50,
                      grad_clip=1.0, ema_decay=0.995, seed=seed, checkpoint_every=checkpoint_every,
                      keep_checkpoints=keep_checkpoints, progress=progress)
    trainer = Trainer(net, ClassifierLoss(), IndexedDataSource(x, y, seed=seed), cfg, run_dir, accelerator=accelerator,
                      meta={"what": "digits feature network"})
    result = trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process:
        ema = trainer.ema_model().requires_grad_(False)
        with torch.no_grad():  # fix the feature scale once: RMS of the train split's raw features
            ema.set_feature_scale(float(ema.raw_features(x).pow(2).mean().sqrt()))
        test_correct, test_n = accuracy(ema, "test")
        train_correct, train_n = accuracy(ema, "train")
        facts = {
            "test_accuracy": test_correct / test_n, "test_correct": test_correct, "test_n": test_n,
            "train_accuracy": train_correct / train_n, "train_n": train_n,
            "parameters": sum(p.numel() for p in ema.parameters()),
            "feature_scale": ema.config["feature_scale"],
            "training": {"command": command, "steps": result.step, "batch_size": batch_size, "learning_rate": lr,
                         "ema_decay": cfg.ema_decay, "seed": seed, "final_loss": result.final_loss,
                         "wall_time_s": round(result.wall_time_s, 1),
                         "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}",
                         "data": f"sklearn load_digits train split ({train_n} images; every {TEST_EVERY}th "
                                 "image of each class held out as the test split)"},
        }
        tmp = staging_dir(output)
        ema.save(tmp, extra_config=facts)
        stats = compute_reference_stats(ema, "train", net_dir=tmp)
        save_reference_stats(stats, tmp / "train_stats.npz")
        (tmp / "README.md").write_text(_card(facts, stats))
        write_manifest(tmp)
        replace_dir(tmp, output)
        result.facts = facts
    trainer.accelerator.wait_for_everyone()
    return result


def _card(facts: dict, stats) -> str:
    t = facts["training"]
    test_acc = f"{facts['test_accuracy']:.4f} ({facts['test_correct']}/{facts['test_n']})"
    feature_dim = (f"{stats.mu.shape[0]} (penultimate SiLU activations ÷ feature_scale {facts['feature_scale']:.4f}, "
                   "the RMS of the train split's activations)")
    return f"""# digits-features: the FID-digits feature network

A small CNN classifier (3×3 convolutions with SiLU, two max-pools, a 64-unit SiLU layer
whose activations are the **features**, then a linear classifier to 10 classes) trained on
the train split of scikit-learn's handwritten digits (8×8, 17 grey levels, scaled to [-1, 1]).
Load it with `diffkit.models.digits_features.load_feature_net("digits-features")`.

| | |
|---|---|
| test accuracy (held-out split, n = {facts['test_n']}) | {test_acc} |
| train accuracy (n = {facts['train_n']}) | {facts['train_accuracy']:.4f} |
| parameters | {facts['parameters']:,} |
| feature dimension | {feature_dim} |
| training command | `{t['command']}` |
| steps × batch | {t['steps']} × {t['batch_size']} (AdamW lr {t['learning_rate']}, EMA {t['ema_decay']}) |
| final training loss (mean of the last 100 steps) | {t['final_loss']:.2e} |
| wall time | {t['wall_time_s']:.0f} s on {t['machine']} (shared with other jobs) |
| data | {t['data']} |

`train_stats.npz` holds the FID-digits reference statistics: `mu`, `sigma` (mean and
unbiased covariance of the features of the full train split, n = {stats.n}), and the protocol
fields {', '.join(f'`{k}`' for k in stats.fields)} (protocol `{stats.fields['protocol']}`;
images clamped to [-1, 1] and quantised to 17 grey levels before the network;
`feature_net_sha256` ties the statistics to these weights).
"""


def run(args):
    command = "diffkit train-features " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else None
    output, run_dir = prepare_outputs(args, NAME)
    t0 = time.perf_counter()
    res = train_features(output, max_steps=args.max_steps, seed=args.seed, resume=args.resume,
                         run_dir=run_dir, batch_size=args.batch_size, lr=args.lr,
                         checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                         progress=not args.no_progress, command=command)
    f = getattr(res, "facts", None)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    acc = f"test accuracy {f['test_accuracy']:.4f} ({f['test_correct']}/{f['test_n']}); " if f else ""
    print(f"trained {res.step} steps ({acc}{time.perf_counter() - t0:.0f} s); wrote {output}")
