"""The FID-digits protocol (defined once; the FID issue builds on it).

1. Images are clamped to [-1, 1] and quantised to the data's 17 grey levels
   (``diffkit.data.quantize``) -- generated and real images alike.
2. Features are the 64-d penultimate activations of the shipped digits feature network
   (``assets/digits-features``).
3. The reference is the full train split; its statistics (mean, covariance, and the
   protocol fields below) ship as ``assets/digits-features/train_stats.npz``.
4. ``frechet_distance`` / ``kid_from_features`` from ``diffkit.metrics.frechet``.
5. Generated sets are class-balanced (equal count per class), guidance 1 unless stated,
   n stated with every number (default 1,000), ≥ 3 seeds reported as mean ± std.
   FID is biased upwards at small n: compare only numbers at equal n.

Memorisation check: median over generated samples of the L2 distance (in [-1, 1] pixel
space, after quantisation) to the nearest training image, divided by the same median for
the held-out test images. ≈ 1 for a model that generalises, ≪ 1 for one that copies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from diffkit.assets import REBUILD, AssetError, asset_path
from diffkit.atomic import write_bytes_atomically
from diffkit.data import GREY_LEVELS, digits_tensors, quantize
from diffkit.metrics.frechet import feature_stats, frechet_distance, kid_from_features
from diffkit.models.digits_features import load_feature_net
from diffkit.sampling import balanced_labels, generate
from diffkit.weights import file_sha256

__all__ = ["PROTOCOL", "ReferenceStats", "DigitsFIDResult", "MemorisationResult", "digits_features", "classify",
           "top1_accuracy", "compute_reference_stats", "save_reference_stats", "load_reference_stats",
           "fid_digits", "memorisation_ratio", "balanced_labels", "sample_digits", "mean_std"]

PROTOCOL = "fid-digits/v1"
STATS_FILE = "train_stats.npz"


# ---------------------------------------------------------------------------- records
@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    fields: dict = field(default_factory=dict)  # protocol, split, grey_levels, feature_dim, feature_net_sha256


@dataclass
class DigitsFIDResult:
    """FID and KID of one set under the FID-digits protocol (``fid_digits``); distinct from
    :class:`diffkit.metrics.fid.FIDResult`, the one-metric record of ``compute_fid``."""

    fid: float
    kid: float          # unbiased MMD² (polynomial kernel), mean over subsets
    kid_std: float
    n: int              # images in the evaluated set
    n_ref: int          # images in the reference set
    protocol: str = PROTOCOL


FIDResult = DigitsFIDResult  # the former name, kept importable


@dataclass
class MemorisationResult:
    ratio: float            # median_generated / median_test
    median_generated: float
    median_test: float
    n: int


# ---------------------------------------------------------------------------- features
def _net(net):
    if net is None or isinstance(net, str):
        return load_feature_net(net or "digits-features")
    return net


def _batches(images: torch.Tensor, batch_size: int):
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size]


@torch.no_grad()
def digits_features(images: torch.Tensor, net=None, batch_size: int = 1024) -> np.ndarray:
    """(N, 64) float64 features of images in [-1, 1] (clamped and quantised first)."""
    net = _net(net)
    images = torch.as_tensor(images).float()
    return np.concatenate([net.features(quantize(b)).double().cpu().numpy() for b in _batches(images, batch_size)])


@torch.no_grad()
def classify(images: torch.Tensor, net=None, batch_size: int = 1024) -> np.ndarray:
    """Predicted class of each image (clamped and quantised first)."""
    net = _net(net)
    images = torch.as_tensor(images).float()
    return np.concatenate([net(quantize(b)).argmax(1).cpu().numpy() for b in _batches(images, batch_size)])


def top1_accuracy(images: torch.Tensor, labels, net=None) -> float:
    labels = np.asarray(torch.as_tensor(labels).cpu())
    return float((classify(images, net) == labels).mean())


# ---------------------------------------------------------------------------- reference stats
def compute_reference_stats(net=None, split: str = "train", net_dir=None) -> ReferenceStats:
    net = _net(net)
    x, _ = digits_tensors(split)
    mu, sigma = feature_stats(digits_features(x, net))
    fields = {"protocol": PROTOCOL, "split": split, "grey_levels": GREY_LEVELS, "feature_dim": int(mu.shape[0]),
              "quantised": True, "value_range": "[-1, 1]"}
    if net_dir is not None:
        fields["feature_net_sha256"] = file_sha256(f"{net_dir}/model.safetensors")
    return ReferenceStats(mu, sigma, int(x.shape[0]), fields)


def save_reference_stats(stats: ReferenceStats, path) -> None:
    buf = io.BytesIO()
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
             **{k: np.asarray(v) for k, v in stats.fields.items()})
    write_bytes_atomically(path, buf.getvalue())


def load_reference_stats(path="digits-features", check_net: bool = True) -> ReferenceStats:
    """Load ``train_stats.npz`` from the feature-net asset (name or folder) or a file path.

    With ``check_net``, the statistics must have been computed with the network stored
    beside them (sha256 of its weights) under this protocol version.
    """
    p = Path(path)
    d = p.parent if p.suffix == ".npz" else asset_path(path, required=(STATS_FILE,))
    f = p if p.suffix == ".npz" else d / STATS_FILE
    cmd = REBUILD["digits-features"][1]
    try:
        with np.load(f, allow_pickle=False) as z:
            mu, sigma, n = z["mu"], z["sigma"], int(z["n"])
            fields = {k: z[k].item() for k in z.files if k not in ("mu", "sigma", "n")}
    except (OSError, KeyError, ValueError) as e:
        raise AssetError(f"reference statistics {f} are missing or corrupted ({e}); rebuild them with `{cmd}`") from e
    if fields.get("protocol") != PROTOCOL:
        raise AssetError(f"{f} was made under protocol {fields.get('protocol')!r}, this diffkit uses {PROTOCOL!r}; "
                         f"rebuild it with `{cmd}`")
    if check_net and "feature_net_sha256" in fields and (d / "model.safetensors").exists():
        if file_sha256(d / "model.safetensors") != fields["feature_net_sha256"]:
            raise AssetError(f"{f} does not belong to the feature network in {d} (weights hash differs); "
                             f"rebuild it with `{cmd}`")
    return ReferenceStats(mu, sigma, n, fields)


# ---------------------------------------------------------------------------- FID / KID
def fid_digits(images: torch.Tensor, net=None, reference: Optional[ReferenceStats] = None,
               reference_images: Optional[torch.Tensor] = None, kid_subsets: int = 100,
               kid_seed: int = 0) -> DigitsFIDResult:
    """FID-digits (and KID) of a set of images against the train split.

    FID uses the shipped reference statistics unless ``reference`` is given; KID needs
    reference *features*, computed from ``reference_images`` (default: the train split).
    """
    net = _net(net)
    if reference is None:
        reference = load_reference_stats()
    f = digits_features(images, net)
    mu, sigma = feature_stats(f)
    fid = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    ref_x = reference_images if reference_images is not None else digits_tensors("train")[0]
    f_ref = digits_features(ref_x, net)
    kid, kid_std = kid_from_features(f, f_ref, num_subsets=kid_subsets, subset_size=min(1000, len(f), len(f_ref)),
                                     seed=kid_seed)
    return DigitsFIDResult(fid, kid, kid_std, int(f.shape[0]), int(reference.n))


# ---------------------------------------------------------------------------- memorisation
def _nn_dist(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    a = quantize(torch.as_tensor(x).float()).flatten(1).double()
    b = quantize(ref.float()).flatten(1).double()
    return torch.cdist(a, b).min(dim=1).values


def memorisation_ratio(samples: torch.Tensor, train: Optional[torch.Tensor] = None,
                       test: Optional[torch.Tensor] = None) -> MemorisationResult:
    """median NN-distance(samples → train) / median NN-distance(test → train)."""
    train = digits_tensors("train")[0] if train is None else train
    test = digits_tensors("test")[0] if test is None else test
    mg = float(_nn_dist(samples, train).median())
    mt = float(_nn_dist(test, train).median())
    return MemorisationResult(mg / mt, mg, mt, int(samples.shape[0]))


# ---------------------------------------------------------------------------- sampling
# balanced_labels: the driver's (diffkit.sampling), re-exported: 0, 1, ..., C-1, 0, ... (n a multiple of C)


@torch.no_grad()
def sample_digits(pipe, labels: Sequence[int] | torch.Tensor, seed: int = 0, steps: int = 50, guidance: float = 1.0,
                  batch_size: int = 500, eta: float = 0.0) -> torch.Tensor:
    """Images in [-1, 1] for the given labels with the pipeline's own sampler; sample k's noise comes
    from (seed, k) (the one driver, :func:`diffkit.sampling.generate`, one batch at a time)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size]
        r = generate(pipe, None, steps=steps, condition=lab, seed=seed, sample_indices=range(i, i + len(lab)),
                     guidance_scale=guidance, eta=eta)
        out.append(r.images.float().cpu())
    return torch.cat(out)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (sample, ddof=1) standard deviation."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
