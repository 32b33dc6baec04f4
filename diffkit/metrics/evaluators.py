"""Evaluators that commands hand to trainers (a trainer imports no metric).

An evaluator is a callable ``evaluator(pipe, step) -> dict`` of floats (and counts); the
DisBack trainer calls it with a pipeline of its EMA generator every ``eval_every`` steps and
at the end, and records the results in ``evals.json`` and the run summary.
"""

from __future__ import annotations

from typing import Callable

from diffkit.metrics.digits import balanced_labels, fid_digits, load_reference_stats, sample_digits, top1_accuracy
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines.one_step import OneStepPipeline

__all__ = ["fid_digits_evaluator", "compare_with_initial"]


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


def compare_with_initial(evaluate: Callable, generator_pipe, teacher_pipe, generator_timestep: int, step: int) -> dict:
    """``evaluate`` (e.g. :func:`fid_digits_evaluator`) on a distilled one-step generator and on G⁰, the
    generator it started from (:meth:`OneStepPipeline.initial`: the teacher's x̂0 at the same timestep),
    with the same samples' noise and labels: ``{"fid", "top1", "g0_fid", "g0_top1", "ratio", "improved"}``."""
    g0 = OneStepPipeline.initial(teacher_pipe, generator_timestep)
    for p in (g0, generator_pipe):
        p.set_progress_bar_config(disable=True)
    r, r0 = evaluate(generator_pipe, step), evaluate(g0, 0)
    return {"n": r.get("n"), "generator_timestep": int(generator_timestep), "fid": r["fid"], "top1": r["top1"],
            "g0_fid": r0["fid"], "g0_top1": r0["top1"], "ratio": r["fid"] / r0["fid"], "improved": r["fid"] < r0["fid"]}
