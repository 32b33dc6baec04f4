"""FID and KID with one interface over three backends, offline, sharded across processes.

``compute_fid(gen, ref, backend=...)``: ``gen``/``ref`` may each be an image folder, a
tensor (float in [-1, 1] or uint8, NCHW) or an iterable of such batches, a
:class:`ModelSamples` (a registered model + sampler), or cached statistics (a
:class:`FIDStats`, an ``.npz`` path, or a named reference such as ``"digits-train"``).

Backends, each with its own image path and its own distance:

- ``"clean-fid"``: folders through clean-fid's loader (``get_files_features``: PIL → RGB,
  its resizer, ToTensor), in-memory images through clean-fid's per-image resizer as its
  generator path does; ``cleanfid.fid.frechet_distance`` (scipy ``sqrtm``). CPU defaults
  are passed explicitly (``num_workers=0``, no DataParallel, the chosen device).
- ``"torchmetrics"``: ``FrechetInceptionDistance.update()`` on uint8 batches (ref as
  ``real=True``, gen as ``real=False``), its float64 sums, its ``compute()``.
- ``"diffkit"``: diffkit's loader, :func:`diffkit.metrics.frechet.frechet_distance`.

KID is always diffkit's seeded unbiased polynomial MMD (``kid_from_features``) over the
backend's own features (clean-fid's KID has no custom-extractor path, torchmetrics'
subset draws use the global RNG).

In-memory images are quantised like PNGs (``levels=256``, round half to even) or to the
extractor's grid (the digits protocol: 17 levels); folders are read as saved.

Modules: statistics files in :mod:`diffkit.metrics.fid_stats`, the backends in
:mod:`diffkit.metrics.fid_backends`, :class:`ModelSamples` (on the sampling driver) in
:mod:`diffkit.metrics.model_samples`; collection and evaluation here. Every public name stays
importable from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from diffkit.checks import check_count
from diffkit.data import digits_tensors
from diffkit.metrics.features import FeatureExtractor, get_feature_extractor
from diffkit.metrics.fid_backends import BACKEND_CLASSES, BACKENDS
from diffkit.metrics.fid_backends import progress as _progress
from diffkit.metrics.fid_stats import (NAMED_REFERENCES, FIDStats, library_versions, load_stats, resolve_reference,
                                       save_stats)
from diffkit.metrics.folders import quantize_images, scan_folder
from diffkit.metrics.frechet import feature_stats, kid_from_features
from diffkit.metrics.model_samples import ModelSamples
from diffkit.metrics.sharding import ShardInfo, run_sharded, shard_info

__all__ = [
    "BACKENDS",
    "NAMED_REFERENCES",
    "FIDStats",
    "FIDResult",
    "ModelSamples",
    "ProtocolWarning",
    "compute_fid",
    "compute_kid",
    "compute_stats",
    "evaluate",
    "save_stats",
    "load_stats",
    "resolve_reference",
    "library_versions",
    "quantize_images",
]


def _digits_train_images():
    return digits_tensors("train")[0]

#: named references whose images ship with diffkit: KID (which needs features) re-extracts them
_REFERENCE_IMAGES = {"digits-train": _digits_train_images}

#: protocol fields that must agree between gen and ref for a FID to mean anything
_PROTOCOL_KEYS = ("protocol", "feature_extractor", "feature_dim", "levels", "grey_levels", "resize", "antialias",
                  "input_range", "weights_sha256", "feature_net_sha256", "channels", "image_size")


class ProtocolWarning(UserWarning):
    """gen and ref were measured under different protocols, or n is small for the feature dimension."""



@dataclass
class FIDResult:
    metric: str  # "fid" or "kid"
    value: float
    n: int
    n_ref: int
    backend: str
    mode: str
    feature_extractor: str
    feature_dim: int
    std: Optional[float] = None  # KID: std over subsets
    versions: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    ref_protocol: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        pm = f" ± {self.std:.4g}" if self.std is not None else ""
        return (f"{self.metric.upper()} = {self.value:.6g}{pm} (n={self.n} vs n_ref={self.n_ref}; backend "
                f"{self.backend}, mode {self.mode}; features {self.feature_extractor} [{self.feature_dim}])")



# ---------------------------------------------------------------------------- sides
def _source_kind(src, name: str):
    if isinstance(src, FIDStats):
        return "stats", src
    if isinstance(src, ModelSamples):
        return "model", src
    if isinstance(src, (str, os.PathLike)):
        s = str(src)
        if s in NAMED_REFERENCES or s.endswith(".npz"):
            return "stats", load_stats(resolve_reference(s))
        if Path(s).is_dir():
            return "folder", Path(s)
        if not Path(s).exists():
            raise FileNotFoundError(f"{name}: {s} does not exist (expected an image folder, a stats .npz or one of "
                                    f"{', '.join(NAMED_REFERENCES)})")
        raise ValueError(f"{name}: {s} is neither an image folder nor a stats .npz")
    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    if isinstance(src, torch.Tensor):
        return "tensor", src
    if isinstance(src, Iterable):
        return "iterable", src
    raise TypeError(f"{name}: expected an image folder, a tensor or iterable of image batches, ModelSamples, "
                    f"FIDStats or a stats .npz path, got {type(src).__name__}")


def _stats_side(st: FIDStats, n, name):
    if n is not None and n != st.n:
        if st.features is None or n > st.features.shape[0]:
            raise ValueError(f"{name}: n={n} but the cached statistics were computed from n={st.n} images "
                             "(and cannot be resampled)")
        return FIDStats(*feature_stats(st.features[:n]), n, {**st.protocol, "n": n}, st.features[:n])
    return st


def _iter_blocks(kind, src, n, lo, hi, batch_size, name, seed):
    """Yield the raw image batches (float in [-1, 1] or uint8) of global indices [lo, hi)."""
    if kind == "tensor":
        for b in range(lo, hi, batch_size):
            yield src[b: min(b + batch_size, hi)]
    elif kind == "model":
        for b in range(lo, hi, batch_size):
            yield src.images(list(range(b, min(b + batch_size, hi))), seed)
    else:  # iterable: every process walks it and keeps its block
        k = 0
        for batch in src:
            if not isinstance(batch, torch.Tensor):
                batch = torch.as_tensor(np.asarray(batch))
            if batch.ndim == 3:
                batch = batch[None]
            a, b = max(lo, k), min(hi, k + batch.shape[0])
            if a < b:
                yield batch[a - k: b - k]
            k += batch.shape[0]
            if k >= hi:
                return
        if k < hi:
            raise ValueError(f"{name}: n={n} but the iterable yielded only {k} images")


def _check_size(size, other: Optional[FIDStats], fx: FeatureExtractor, name: str) -> None:
    """Before extracting: a non-resizing extractor needs gen and ref at one image size."""
    theirs = other.protocol.get("image_size") if other is not None else None
    if not fx.resizes and theirs and list(size) != list(theirs):
        raise ValueError(f"{name} images are {size[0]}x{size[1]} but ref images are {theirs[0]}x{theirs[1]} (HxW), "
                         f"and the feature extractor {fx.name!r} does not resize: bring both sets to one size")


def _collect(src, name, backend, n, batch_size, seed, info: ShardInfo, real: bool,
             other: Optional[FIDStats] = None) -> FIDStats:
    if n is not None:
        check_count(n, f"{name}: n", what=" (the number of images)")
    kind, src = _source_kind(src, name)
    backend.begin_side(real)
    if kind == "stats":
        st = _stats_side(src, n, name)
        if backend.name == "torchmetrics":
            backend.ensure_metric(st.dim)
        return st
    fx = backend.fx
    proto = {**fx.describe(), "mode": backend.mode, "source": kind}
    desc = f"{name} features"
    show = backend.progress and info.is_main
    if kind == "folder":
        folder = scan_folder(src, n, name)
        n = len(folder)
        proto.update(image_size=list(folder.size), channels=folder.channels, folder=str(folder.root))
        _check_size(folder.size, other, fx, name)
        feats = run_sharded(n, lambda lo, hi: backend.folder_block(list(folder.files[lo:hi]), desc, show), info)
    else:
        if kind == "tensor":
            avail = src.shape[0]
            if src.ndim != 4 or src.shape[1] not in (1, 3):
                raise ValueError(f"{name}: expected images of shape (N, C, H, W) with C in (1, 3), "
                                 f"got {tuple(src.shape)}")
            if src.is_floating_point() and not torch.isfinite(src).all():
                raise ValueError(f"{name}: images contain NaN or inf")
            if n is not None and n > avail:
                raise ValueError(f"{name}: n={n} but only {avail} images were given")
            n = avail if n is None else n
            proto.update(image_size=list(src.shape[2:]), channels=int(src.shape[1]))
            _check_size(src.shape[2:], other, fx, name)
        elif kind == "model":
            if n is None:
                raise ValueError(f"{name}: n (the number of samples to draw) is required for a model")
            src.build(backend.device)
            proto.update(src.describe(), seed=src.seed if src.seed is not None else seed)
        elif n is None:
            if info.world > 1:
                raise ValueError(f"{name}: an iterable needs n when sharded across processes")
            src = list(src)  # one pass to count; the batches are needed anyway
            n = sum(int(b.shape[0]) if b.ndim == 4 else 1 for b in map(torch.as_tensor, src))
        shape = {}

        def block(lo, hi):
            out = []
            it = _iter_blocks(kind, src, n, lo, hi, batch_size, name, seed)
            total = math.ceil((hi - lo) / batch_size) if kind != "iterable" else None
            for x in _progress(it, show, desc, total):
                x = quantize_images(x, fx.levels, name)
                if "chw" not in shape:
                    _check_size(x.shape[2:], other, fx, name)
                if shape.setdefault("chw", tuple(x.shape[1:])) != tuple(x.shape[1:]):
                    raise ValueError(f"{name}: mismatched image shapes: {shape['chw']} then {tuple(x.shape[1:])} "
                                     "(C, H, W)")
                out.append(backend.images_block(x))
            return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

        feats = run_sharded(n, block, info)
        if "chw" in shape and "image_size" not in proto:
            proto.update(image_size=list(shape["chw"][1:]), channels=shape["chw"][0])
    proto["feature_dim"] = int(feats.shape[1])
    mu, sigma = backend.side_stats(feats, info)
    proto["n"] = n
    return FIDStats(np.asarray(mu, np.float64), np.atleast_2d(np.asarray(sigma, np.float64)), n, proto, feats)


def _check_protocols(g: FIDStats, r: FIDStats, fx: FeatureExtractor) -> list[str]:
    notes = []
    if g.dim != r.dim:
        raise ValueError(f"gen and ref features differ in dimension ({g.dim} vs {r.dim}): they were not made by "
                         "the same feature extractor")
    diff = [k for k in _PROTOCOL_KEYS if k in g.protocol and k in r.protocol and g.protocol[k] != r.protocol[k]
            and k != "image_size"]
    if diff:
        notes.append("gen and ref protocols differ in " + ", ".join(
            f"{k} ({g.protocol[k]!r} vs {r.protocol[k]!r})" for k in diff) + ": the score is not a like-for-like FID")
    n_min = min(g.n, r.n)
    if n_min < g.dim:
        notes.append(f"n={n_min} is below the feature dimension {g.dim}: the covariance is rank-deficient and FID is "
                     "biased upward; report n and compare only at equal n")
    for msg in notes:
        warnings.warn(msg, ProtocolWarning, stacklevel=4)
    return notes


def _setup(backend, features, gen, ref, inception_weights, antialias, device, batch_size, progress):
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if features is None:
        features = "inception"
        for side, name in ((ref, "ref"), (gen, "gen")):
            if isinstance(side, (str, os.PathLike, FIDStats)):
                kind, st = _source_kind(side, name)
                if kind == "stats" and (st.protocol.get("feature_extractor") == "digits"
                                        or str(st.protocol.get("protocol", "")).startswith("fid-digits")):
                    features = "digits"
    if backend is None:
        backend = "clean-fid" if isinstance(features, str) and features == "inception" else "diffkit"
    fx = get_feature_extractor(features, backend, inception_weights=inception_weights, antialias=antialias)
    info = shard_info()
    dev = torch.device(device) if device is not None else info.device
    return BACKEND_CLASSES[backend](fx, dev, batch_size, progress), info


def compute_stats(source, backend: Optional[str] = None, features=None, n: Optional[int] = None,
                  batch_size: int = 64, seed: int = 0, inception_weights=None, antialias: bool = True, device=None,
                  progress: bool = False) -> FIDStats:
    """Statistics (and features) of one image set, e.g. to cache a reference with :func:`save_stats`."""
    be, info = _setup(backend, features, source, None, inception_weights, antialias, device, batch_size, progress)
    st = _collect(source, "source", be, n, batch_size, seed, info, real=True)
    st.protocol.setdefault("backend", be.name)
    return st


def evaluate(gen, ref, metrics=("fid",), backend: Optional[str] = None, features=None, n: Optional[int] = None,
             n_ref: Optional[int] = None, batch_size: int = 64, seed: int = 0, inception_weights=None,
             antialias: bool = True, device=None, progress: bool = False, num_subsets: int = 100,
             subset_size: int = 1000):
    """FID and/or KID from one feature pass: ``(results, gen_stats, ref_stats)``."""
    bad = [m for m in metrics if m not in ("fid", "kid")]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of ('fid', 'kid'), got {metrics!r}")
    be, info = _setup(backend, features, gen, ref, inception_weights, antialias, device, batch_size, progress)
    r = _collect(ref, "ref", be, n_ref, batch_size, seed, info, real=True)
    if "kid" in metrics and r.features is None and str(ref) in _REFERENCE_IMAGES:
        r.features = _collect(_REFERENCE_IMAGES[str(ref)](), "ref", be, n_ref, batch_size, seed, info,
                              real=True).features
    g = _collect(gen, "gen", be, n, batch_size, seed, info, real=False, other=r)
    notes = _check_protocols(g, r, be.fx)
    results = []
    for metric in metrics:
        if metric == "fid":
            value, std = be.frechet(g, r), None
        else:
            if g.features is None or r.features is None:
                side = "gen" if g.features is None else "ref"
                raise ValueError(f"KID needs features, and the {side} statistics carry none (save them with "
                                 "include_features=True / --with-features)")
            value, std = kid_from_features(g.features, r.features, num_subsets=num_subsets, subset_size=subset_size,
                                           seed=seed)
        results.append(FIDResult(metric, float(value), g.n, r.n, be.name, be.mode, be.fx.name, g.dim, std,
                                 library_versions(), dict(g.protocol), dict(r.protocol), list(notes)))
    return results, g, r


def compute_fid(gen, ref, backend: Optional[str] = None, features=None, n: Optional[int] = None,
                n_ref: Optional[int] = None, batch_size: int = 64, seed: int = 0, inception_weights=None,
                antialias: bool = True, device=None, progress: bool = False) -> FIDResult:
    """Fréchet distance between the feature Gaussians of ``gen`` and ``ref``.

    ``backend``: ``"clean-fid"``, ``"torchmetrics"`` or ``"diffkit"`` (default: clean-fid for
    Inception, diffkit otherwise). ``features``: an ``nn.Module``, ``"digits"``,
    ``"inception"`` (needs ``inception_weights``, see :mod:`diffkit.metrics.features`) or
    ``"package.module:factory"``; by default ``"digits"`` when a cached side was made with it,
    else ``"inception"``. ``n``/``n_ref``: how many images to use (all by default; required
    for a model). ``seed``: model noise. Under ``accelerate launch`` the work is split across
    processes and every process returns the same result.
    """
    return evaluate(gen, ref, ("fid",), backend, features, n, n_ref, batch_size, seed, inception_weights, antialias,
                    device, progress)[0][0]


def compute_kid(gen, ref, backend: Optional[str] = None, features=None, n: Optional[int] = None,
                n_ref: Optional[int] = None, batch_size: int = 64, seed: int = 0, inception_weights=None,
                antialias: bool = True, device=None, progress: bool = False, num_subsets: int = 100,
                subset_size: int = 1000) -> FIDResult:
    """Kernel distance (unbiased MMD², cubic polynomial kernel) over the backend's features.

    Same inputs as :func:`compute_fid`; cached statistics must carry features. ``seed`` also
    draws the subsets; ``std`` is the spread over ``num_subsets`` subsets of ``subset_size``.
    """
    return evaluate(gen, ref, ("kid",), backend, features, n, n_ref, batch_size, seed, inception_weights, antialias,
                    device, progress, num_subsets, subset_size)[0][0]
