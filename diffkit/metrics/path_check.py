"""The DisBack path check: does the recorded Stage-1 path interpolate from the teacher to G⁰?

DisBack's Stage 2 walks the targets s'_{N−1} … s'_0 = teacher; that is a curriculum only if
the nodes' distributions move step by step from the teacher's to the initial generator G⁰'s.
The check measures, for every node i = 0 (the teacher) … N (≈ the score of p_{G⁰}):

* ``dsm_loss``: the DSM loss on G⁰ samples (the one Stage 1 records for every node, on a fixed
  G⁰ batch with fixed t, ε and label-dropout draws: ``PathManifest.nodes[i]["eval_loss"]``);
* ``fid_data`` and ``fd_g0``: the Fréchet distance (FID-digits features,
  :mod:`diffkit.metrics.digits`) of ``n`` class-balanced DDIM samples of the node's own score
  (``steps`` steps, noise seed ``seed``) to the data (the train split's reference statistics)
  and to ``n`` samples of G⁰ (noise seed ``seed + 1``);

and two references: the G⁰-vs-G⁰ ``floor`` (G⁰'s seed-``seed + 1`` set against an independent
seed-``seed + 2`` set: the distance two samples of one distribution show at this n) and the
teacher's distance to G⁰ (node 0's ``fd_g0``).

The rule (:func:`path_criteria`; issue #20), with d_i = node i's ``fd_g0`` and L_i its DSM loss:

* ``end``: d_N ≤ :data:`END_FACTOR` × floor (the last node describes G⁰);
* ``geometric``: d falls roughly geometrically from d_0 to d_N — every interior node lies within
  a factor :data:`GEOMETRIC_TOLERANCE` of the geometric interpolation d_0·(d_N/d_0)^(i/N), i.e.
  |ln d_i − ln(d_0·(d_N/d_0)^(i/N))| ≤ ln 2;
* ``drops``: every consecutive drop d_{i−1} − d_i exceeds the floor (each node is a measurable
  step, and the sequence falls monotonically);
* ``loss_share``: no node holds more than :data:`MAX_LOSS_SHARE` of the DSM-loss drop:
  (L_{i−1} − L_i)/(L_0 − L_N) ≤ ½ for every i (and the loss falls, L_0 > L_N).

A path that fails a criterion is reported with a :class:`PathCheckWarning` naming it, or
refused with a :class:`PathCheckError` (``require_path=True``, ``diffkit distill
--require-path``). Cost: (N + 3) sample sets of n images: N + 1 DDIM-``steps`` sets (the nodes,
teacher included) and two one-step G⁰ sets; docs/methods/disback.md gives the measured time.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from diffkit.metrics.digits import balanced_labels, digits_features, load_reference_stats, sample_digits
from diffkit.metrics.frechet import feature_stats, frechet_distance
from diffkit.models.digits_features import load_feature_net
from diffkit.pipelines.one_step import OneStepPipeline
from diffkit.weights import load_state_dict_strict

__all__ = ["CRITERIA", "END_FACTOR", "GEOMETRIC_TOLERANCE", "MAX_LOSS_SHARE", "PathCheckWarning", "PathCheckError",
           "path_criteria", "evaluate_path", "path_check_hook"]

#: the last node's distance to G⁰ must be within this factor of the G⁰-vs-G⁰ floor
END_FACTOR = 2.0
#: every interior node's distance to G⁰ within this factor of the geometric interpolation
GEOMETRIC_TOLERANCE = 2.0
#: the largest share of the teacher → last-node DSM-loss drop one node may hold
MAX_LOSS_SHARE = 0.5
CRITERIA = ("end", "geometric", "drops", "loss_share")


class PathCheckWarning(UserWarning):
    """The recorded Stage-1 path failed the path check (the message names the criteria)."""


class PathCheckError(ValueError):
    """``require_path``: the recorded Stage-1 path failed the check; ``record`` holds the check."""

    def __init__(self, record: dict):
        self.record = record
        super().__init__(f"the Stage-1 path failed the path check ({describe_failure(record)}); Stage 2 not "
                         "started. Record another path (e.g. a lower --stage1-lr or --path-spacing log-progress), "
                         "or drop --require-path to continue with a warning")


def describe_failure(record: dict) -> str:
    """One line naming every failed criterion with its measured value and limit."""
    crit = record["criteria"]
    return "; ".join(f"{name}: {crit[name]['detail']}" for name in record["failed"]) or "no criterion failed"


def path_criteria(fd_g0: Sequence[float], floor: float, dsm_loss: Sequence[float]) -> dict:
    """Item 1's rule on the numbers: ``fd_g0`` and ``dsm_loss`` for nodes 0 (teacher) … N, and the
    G⁰-vs-G⁰ ``floor``. Returns ``{"accepted", "failed", "criteria": {name: {"ok", "value", "limit",
    "detail"}}}`` (the criteria are :data:`CRITERIA`; the module docstring states them)."""
    d = [float(v) for v in fd_g0]
    L = [float(v) for v in dsm_loss]
    if len(d) != len(L) or len(d) < 2:
        raise ValueError(f"fd_g0 and dsm_loss: expected one value per node 0..N (N >= 1), got {len(d)} and {len(L)}")
    if not floor > 0:
        raise ValueError(f"floor: the G⁰-vs-G⁰ distance must be > 0, got {floor}")
    N = len(d) - 1
    crit = {}
    end_limit = END_FACTOR * floor
    crit["end"] = {"ok": d[N] <= end_limit, "value": d[N], "limit": end_limit,
                   "detail": f"last node's distance to G⁰ {d[N]:.4g} vs {END_FACTOR:g} × floor = {end_limit:.4g}"}
    tiny = 1e-12
    expected = [d[0] * (max(d[N], tiny) / max(d[0], tiny)) ** (i / N) for i in range(N + 1)]
    factors = [max(max(d[i], tiny) / expected[i], expected[i] / max(d[i], tiny)) for i in range(1, N)]
    worst = max(factors, default=1.0)
    worst_i = 1 + factors.index(worst) if factors else None
    geo_ok = worst <= GEOMETRIC_TOLERANCE and d[N] < d[0]
    crit["geometric"] = {"ok": geo_ok, "value": worst, "limit": GEOMETRIC_TOLERANCE, "expected": expected,
                         "ratio": (max(d[N], tiny) / max(d[0], tiny)) ** (1 / N),
                         "detail": (f"node {worst_i}'s distance to G⁰ {d[worst_i]:.4g} is {worst:.3g}× off the "
                                    f"geometric interpolation {expected[worst_i]:.4g} (limit {GEOMETRIC_TOLERANCE:g}×)"
                                    if worst_i is not None and worst > GEOMETRIC_TOLERANCE else
                                    f"the distance does not fall (teacher {d[0]:.4g}, last node {d[N]:.4g})"
                                    if not d[N] < d[0] else f"within {worst:.3g}× of the geometric interpolation")}
    drops = [d[i - 1] - d[i] for i in range(1, N + 1)]
    small = min(range(N), key=lambda k: drops[k])
    crit["drops"] = {"ok": drops[small] > floor, "value": drops[small], "limit": floor, "drops": drops,
                     "detail": f"drop node {small} → {small + 1} of the distance to G⁰ is {drops[small]:.4g}, "
                               f"{'above' if drops[small] > floor else 'not above'} the floor {floor:.4g}"}
    total = L[0] - L[N]
    if total > 0:
        shares = [(L[i - 1] - L[i]) / total for i in range(1, N + 1)]
        big = max(range(N), key=lambda k: shares[k])
        crit["loss_share"] = {"ok": shares[big] <= MAX_LOSS_SHARE, "value": shares[big], "limit": MAX_LOSS_SHARE,
                              "shares": shares,
                              "detail": f"node {big + 1} holds {100 * shares[big]:.0f} % of the DSM-loss drop "
                                        f"(limit {100 * MAX_LOSS_SHARE:.0f} %)"}
    else:
        crit["loss_share"] = {"ok": False, "value": None, "limit": MAX_LOSS_SHARE, "shares": None,
                              "detail": f"the DSM loss on G⁰ samples did not fall (teacher {L[0]:.5g}, "
                                        f"last node {L[N]:.5g})"}
    for c in crit.values():
        c["ok"] = bool(c["ok"])
    failed = [name for name in CRITERIA if not crit[name]["ok"]]
    return {"accepted": not failed, "failed": failed, "criteria": crit}


def _stats(images: torch.Tensor, features: Callable):
    return feature_stats(np.asarray(features(images), dtype=np.float64))


@torch.no_grad()
def evaluate_path(manifest, teacher_pipe, generator_timestep: Optional[int] = None, n: int = 500, seed: int = 0,
                  steps: int = 50, features: Optional[Callable] = None, reference=None) -> dict:
    """The path check of a recorded path (``manifest``: :class:`diffkit.distill.path.PathManifest`)
    for the teacher pipeline ``teacher_pipe`` (class-conditional; its scheduler samples the nodes).

    ``generator_timestep``: G⁰'s timestep (None: the one recorded in the manifest). ``features``:
    images → (n, d) features (default: the digits feature network); ``reference``: the data's
    :class:`diffkit.metrics.digits.ReferenceStats` (default: the shipped train-split statistics).
    Returns the per-node measurements, the references, :func:`path_criteria`'s verdict and the cost.
    """
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    if generator_timestep is None:
        generator_timestep = manifest.info.get("generator_timestep")
        if generator_timestep is None:
            raise ValueError("generator_timestep: not given and not recorded in the Stage-1 manifest")
    if not getattr(teacher_pipe.unet.config, "num_class_embeds", None):
        raise ValueError("teacher_pipe: the path check samples class-balanced sets; it needs a class-conditional "
                         "teacher")
    if features is None:
        net = load_feature_net("digits-features")
        features = lambda x: digits_features(x, net)  # noqa: E731
    reference = load_reference_stats() if reference is None else reference
    labels = balanced_labels(n)
    device = teacher_pipe.unet.device
    g0 = OneStepPipeline.initial(teacher_pipe, int(generator_timestep))
    g0.set_progress_bar_config(disable=True)
    g0_ref = _stats(sample_digits(g0, labels, seed=seed + 1, steps=1), features)
    g0_other = _stats(sample_digits(g0, labels, seed=seed + 2, steps=1), features)
    floor = frechet_distance(*g0_other, *g0_ref)
    g0_fid = frechet_distance(*g0_ref, reference.mu, reference.sigma)
    node_pipe = copy.deepcopy(teacher_pipe)
    node_pipe.set_progress_bar_config(disable=True)
    nodes = []
    for i, node in enumerate(manifest.nodes):
        if i == 0:
            pipe = teacher_pipe
        else:
            load_state_dict_strict(node_pipe.unet, manifest.node_file(i), device=device)
            pipe = node_pipe
        stats = _stats(sample_digits(pipe, labels, seed=seed, steps=steps), features)
        nodes.append({"index": i, "step": node["step"], "dsm_loss": node["eval_loss"],
                      "fid_data": frechet_distance(*stats, reference.mu, reference.sigma),
                      "fd_g0": frechet_distance(*stats, *g0_ref)})
    verdict = path_criteria([v["fd_g0"] for v in nodes], floor, [v["dsm_loss"] for v in nodes])
    return {"nodes": nodes, "floor": floor, "teacher_fd_g0": nodes[0]["fd_g0"], "g0_fid_data": g0_fid,
            **verdict, "n": n, "seed": seed, "steps": steps, "generator_timestep": int(generator_timestep),
            "seeds": {"nodes": seed, "g0": seed + 1, "g0_floor": seed + 2},
            "dsm_loss_samples": manifest.info.get("eval_samples"),
            "wall_time_s": time.perf_counter() - t_wall, "cpu_time_s": time.process_time() - t_cpu}


def path_check_hook(teacher_pipe, generator_timestep: Optional[int] = None, n: int = 500, seed: int = 0,
                    steps: int = 50, require_path: bool = False, features: Optional[Callable] = None,
                    reference=None) -> Callable:
    """``after_stage1(manifest) -> dict`` for :class:`diffkit.distill.disback.DisBackTrainer`: runs
    :func:`evaluate_path`; a failed check warns (:class:`PathCheckWarning`) or, with
    ``require_path``, raises :class:`PathCheckError` (whose ``record`` the trainer writes to the
    run summary before it stops). Loads the feature network and the reference statistics now,
    so a missing asset fails before Stage 1 starts."""
    if n < 2 or n % 10:
        raise ValueError(f"n: the path check draws class-balanced sets of n images, a multiple of 10 >= 10; got {n}")
    if features is None:
        net = load_feature_net("digits-features")
        features = lambda x: digits_features(x, net)  # noqa: E731
    reference = load_reference_stats() if reference is None else reference

    def check(manifest) -> dict:
        record = evaluate_path(manifest, teacher_pipe, generator_timestep, n=n, seed=seed, steps=steps,
                               features=features, reference=reference)
        record["require_path"] = bool(require_path)
        if not record["accepted"]:
            if require_path:
                raise PathCheckError(record)
            warnings.warn(f"the Stage-1 path failed the path check ({describe_failure(record)}); Stage 2 walks it "
                          "anyway (--require-path refuses)", PathCheckWarning, stacklevel=2)
        return record

    return check

