"""Evaluators that commands hand to trainers (a trainer imports no metric).

An evaluator is a callable ``evaluator(pipe, step) -> dict`` of floats (and counts); the
DisBack trainer calls it with a pipeline of its EMA generator every ``eval_every`` steps and
at the end, and records the results in ``evals.json`` and the run summary.
"""

from __future__ import annotations

from typing import Callable

from diffkit.metrics.digits import balanced_labels, fid_digits, load_reference_stats, sample_digits, top1_accuracy
from diffkit.models.digits_features import load_feature_net

__all__ = ["fid_digits_evaluator"]


def fid_digits_evaluator(n: int = 1000, seed: int = 0, steps: int = 1) -> Callable:
    """``evaluator(pipe, step) -> {"fid", "kid", "top1", "n"}``: FID-digits of ``n`` class-balanced
    samples of ``pipe`` (``steps`` sampling steps, 1 for a one-step generator; noise from ``seed``,
    sample k ← index k) and the feature net's top-1.

    Loads the feature network and reference statistics now, so a missing asset fails before
    training starts.
    """
    net, ref = load_feature_net("digits-features"), load_reference_stats()
    labels = balanced_labels(n)

    def evaluate(pipe, step):
        images = sample_digits(pipe, labels, seed=seed, steps=steps)
        r = fid_digits(images, net, ref)
        return {"fid": float(r.fid), "kid": float(r.kid), "top1": top1_accuracy(images, labels, net), "n": n}

    return evaluate
