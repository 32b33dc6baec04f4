"""FID statistics files: the Gaussian statistics of one image set with the protocol that made them,
saved and loaded as ``.npz`` (diffkit's, clean-fid's ``mu``/``sigma``, or ``mean``/``cov`` names),
and the named references (``digits-train``)."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from diffkit.assets import asset_path
from diffkit.atomic import write_bytes_atomically
from diffkit.versions import OMIT, package_versions

__all__ = ["NAMED_REFERENCES", "FIDStats", "save_stats", "load_stats", "resolve_reference", "library_versions"]

#: --ref names -> (asset folder, stats file inside it)
NAMED_REFERENCES = {"digits-train": ("digits-features", "train_stats.npz")}


@dataclass
class FIDStats:
    """Gaussian statistics of one image set, with the protocol that made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    protocol: dict = field(default_factory=dict)
    features: Optional[np.ndarray] = None  # kept for KID when available

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])



def library_versions() -> dict:
    return package_versions(("diffkit", "torch", "numpy", "scipy", "clean-fid", "torchmetrics", "torch-fidelity",
                             "accelerate"), missing=OMIT)



def save_stats(stats: FIDStats, path, include_features: bool = False) -> str:
    """Write ``mu``, ``sigma``, ``n``, ``protocol`` (JSON) [and ``features``] atomically."""
    path = str(path)
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64),
              "n": np.int64(stats.n), "protocol": np.array(json.dumps(stats.protocol, sort_keys=True))}
    if include_features:
        if stats.features is None:
            raise ValueError("include_features=True but these statistics carry no features")
        arrays["features"] = np.asarray(stats.features, np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomically(path, buf.getvalue())
    return path


def _pick(data, names, path, what):
    for k in names:
        if k in data.files:
            return data[k]
    if what is None:
        return None
    raise ValueError(f"statistics file {path} has no {what} (looked for {', '.join(names)}; "
                     f"found {', '.join(data.files)})")


def load_stats(path) -> FIDStats:
    """Read a statistics ``.npz`` (diffkit's, clean-fid's ``mu``/``sigma``, or ``mean``/``cov`` names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        mu = np.asarray(_pick(data, ("mu", "mean"), path, "mean"), np.float64)
        sigma = np.asarray(_pick(data, ("sigma", "cov", "covariance"), path, "covariance"), np.float64)
        feats = _pick(data, ("features", "feats"), path, None)
        n = _pick(data, ("n", "num_samples", "count"), path, None)
        protocol = {}
        for k in data.files:  # scalar fields are protocol fields; diffkit writes them as one JSON object
            if k in ("mu", "mean", "sigma", "cov", "covariance", "features", "feats", "n", "num_samples", "count"):
                continue
            if data[k].ndim == 0:
                v = data[k].item()
                if k == "protocol" and isinstance(v, str) and v.startswith("{"):
                    protocol.update(json.loads(v))
                else:
                    protocol[k] = v
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"statistics file {path}: mean of shape {mu.shape} and covariance of shape {sigma.shape} "
                         "do not fit together")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"statistics file {path} holds NaN or inf")
    if n is None:
        n = feats.shape[0] if feats is not None else protocol.get("n")
    return FIDStats(mu, sigma, int(n) if n is not None else 0, protocol,
                    None if feats is None else np.asarray(feats, np.float32))


def resolve_reference(name_or_path) -> Path:
    """A named reference (``digits-train``) or a path, as the stats file path."""
    if str(name_or_path) in NAMED_REFERENCES:
        folder, fname = NAMED_REFERENCES[str(name_or_path)]
        return asset_path(folder, required=(fname,)) / fname
    return Path(name_or_path)

