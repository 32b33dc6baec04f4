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
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..checks import check_count
from .features import FeatureExtractor, get_feature_extractor
from .folders import load_images, quantize_images, scan_folder
from .frechet import feature_stats, frechet_distance, kid_from_features
from .sharding import ShardInfo, reduce_sum, run_sharded, shard_info

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
    "quantize_images",
]

BACKENDS = ("diffkit", "clean-fid", "torchmetrics")

#: --ref names -> (asset folder, stats file inside it)
NAMED_REFERENCES = {"digits-train": ("digits-features", "train_stats.npz")}


def _digits_train_images():
    from ..data import digits_tensors

    return digits_tensors("train")[0]


#: named references whose images ship with diffkit: KID (which needs features) re-extracts them
_REFERENCE_IMAGES = {"digits-train": _digits_train_images}

#: protocol fields that must agree between gen and ref for a FID to mean anything
_PROTOCOL_KEYS = ("protocol", "feature_extractor", "feature_dim", "levels", "grey_levels", "resize", "antialias",
                  "input_range", "weights_sha256", "feature_net_sha256", "channels", "image_size")


class ProtocolWarning(UserWarning):
    """gen and ref were measured under different protocols, or n is small for the feature dimension."""


# ---------------------------------------------------------------------------- records
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


def library_versions() -> dict:
    out = {}
    for dist in ("diffkit", "torch", "numpy", "scipy", "clean-fid", "torchmetrics", "torch-fidelity", "accelerate"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------- stats files
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
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
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
    from ..assets import asset_path

    if str(name_or_path) in NAMED_REFERENCES:
        folder, fname = NAMED_REFERENCES[str(name_or_path)]
        return asset_path(folder, required=(fname,)) / fname
    return Path(name_or_path)


# ---------------------------------------------------------------------------- models
@dataclass
class ModelSamples:
    """Images from a model folder / asset name / pipeline, drawn with its own sampler or a registered one.

    ``sampler=None`` (the default) calls the pipeline as it is, with its own scheduler, as its
    documented sampling API does (for a one-step generator the only way to sample it); a named
    scheduler drives a copy of the pipeline (same modules and registered config, that
    scheduler), a named function sampler (``edm-heun``, ...) its UNet on the EDM grid. A one-step
    generator refuses a named sampler. ``steps``: default 50 (a one-step generator takes 1).

    Sample k gets class ``k % num_classes`` (class-balanced) and its initial noise from
    (seed, k) through the pipeline's ``seed``/``sample_indices`` arguments, so the set is
    the same for any batch size or number of processes.
    """

    model: object
    sampler: Optional[str] = None  # None: the pipeline's own scheduler
    steps: Optional[int] = None  # None: 50 (a one-step generator: 1)
    guidance: float = 1.0
    eta: float = 0.0
    seed: Optional[int] = None  # None: compute_fid's seed

    def __post_init__(self):
        if self.steps is not None:
            check_count(self.steps, "steps")

    def describe(self) -> dict:
        model = self.model if isinstance(self.model, (str, os.PathLike)) else type(self.model).__name__
        out = {"model": str(model), "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance,
               "eta": self.eta}
        if hasattr(self, "_pipe"):
            out["steps"] = self._steps
            if self._entry is None or self._entry.kind == "scheduler":
                out["scheduler"] = type(self._pipe.scheduler).__name__
        return out

    def build(self, device):
        from ..pipelines import load_pipeline
        from ..pipelines.one_step import require_diffusion_model
        from ..registry import get_sampler, pipeline_with_sampler

        pipe = load_pipeline(self.model) if isinstance(self.model, (str, os.PathLike)) else self.model
        entry = None
        if self.sampler is not None:
            entry = get_sampler(self.sampler)
            require_diffusion_model(pipe, f"sampler {self.sampler!r}")
            if entry.kind == "scheduler":
                pipe = pipeline_with_sampler(pipe, self.sampler)  # a copy: a pipeline passed in keeps its scheduler
        if (entry is None or entry.kind == "scheduler") and \
                "sample_indices" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"model: {type(pipe).__name__} has no sample_indices argument, so its noise cannot be "
                             "keyed to the global sample index; use a diffkit pipeline")
        self._pipe, self._entry = pipe.to(device), entry
        self._steps = 1 if getattr(pipe, "one_step", False) else (50 if self.steps is None else self.steps)
        if entry is not None and entry.kind == "function":
            self._function_sampler_check()
        if pipe is not self.model and hasattr(pipe, "set_progress_bar_config"):  # a pipeline passed in keeps its own
            pipe.set_progress_bar_config(disable=True)
        return self

    def images(self, indices: list[int], seed: int) -> torch.Tensor:
        pipe, entry = self._pipe, self._entry
        seed = self.seed if self.seed is not None else seed
        ncls = getattr(pipe, "num_classes", 0)
        labels = [k % ncls for k in indices] if ncls else None
        if entry is None or entry.kind == "scheduler":
            out = pipe(class_labels=labels, batch_size=None if labels else len(indices),
                       num_inference_steps=self._steps, guidance_scale=self.guidance, eta=self.eta, seed=seed,
                       sample_indices=indices, output_type="pt", progress=False)
            return out.images
        return self._function_sampler(indices, labels, seed)

    def _function_sampler_check(self):
        fn = self._entry.load()
        params = list(inspect.signature(fn).parameters) if callable(fn) and not inspect.isclass(fn) else []
        if params[:3] != ["model", "x", "sigmas"]:
            raise ValueError(f"sampler {self.sampler!r} is not an image sampler fn(model, x, sigmas) "
                             f"({self._entry.description}); pick a scheduler or an EDM-style function sampler")

    @torch.no_grad()
    def _function_sampler(self, indices, labels, seed):
        """A k-diffusion style ``fn(model, x, sigmas, extra_args={"guidance": g}, **defaults)``
        (``diffkit.samplers.edm``'s contract) on the model's EDM/Karras grid, started from the
        VP prior: x̃ = noise·√(σ_max² + 1)."""
        from ..conditioning import Guidance, class_guidance
        from ..denoisers import Denoiser, EpsModel
        from ..seeding import randn_for_indices

        fn = self._entry.load()
        unet = self._pipe.unet
        denoiser = Denoiser(EpsModel(unet, self._pipe.scheduler.config))
        guidance = class_guidance(unet, labels, self.guidance, device=unet.device) if labels is not None else Guidance()
        sigmas = denoiser.schedule.karras_sigmas(self._steps)
        cfg = unet.config
        x = randn_for_indices((cfg.in_channels, cfg.sample_size, cfg.sample_size), indices, seed,
                              device=unet.device) * math.sqrt(float(sigmas[0]) ** 2 + 1)
        kwargs = {**self._entry.defaults, "extra_args": {"guidance": guidance}}
        if "disable" in inspect.signature(fn).parameters:
            kwargs["disable"] = True
        return fn(denoiser, x, sigmas, **kwargs).float().clamp(-1, 1)


# ---------------------------------------------------------------------------- backends
class _Backend:
    name = "diffkit"

    def __init__(self, fx: FeatureExtractor, device, batch_size: int, progress: bool):
        self.fx, self.device, self.batch_size, self.progress = fx, torch.device(device), batch_size, progress
        self.fx.to(self.device)

    @property
    def mode(self) -> str:
        return "custom"

    def begin_side(self, real: bool) -> None:
        self.real = real

    def folder_block(self, files, desc: str, show: bool) -> np.ndarray:
        out = []
        for b in _progress(range(0, len(files), self.batch_size), show, desc):
            out.append(self.images_block(load_images(files[b: b + self.batch_size])))
        return np.concatenate(out)

    def images_block(self, x: torch.Tensor) -> np.ndarray:
        """Features of one batch of [0, 255]-valued images (uint8 from files, float from tensors)."""
        return self.fx(x.to(self.device)).cpu().numpy()

    def side_stats(self, feats: np.ndarray, info: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        return feature_stats(feats)

    def frechet(self, g: FIDStats, r: FIDStats) -> float:
        return frechet_distance(g.mu, g.sigma, r.mu, r.sigma)


class _CleanFIDBackend(_Backend):
    name = "clean-fid"

    def __init__(self, fx, device, batch_size, progress):
        super().__init__(fx, device, batch_size, progress)
        from cleanfid.resize import build_resizer

        # Inception: clean-fid's own `clean` resizer; a custom extractor takes images at
        # their size, as torchmetrics gives them to a custom module.
        self.fn_resize = build_resizer("clean") if self.fx.resizes else _identity

    @property
    def mode(self) -> str:
        return "clean" if self.fx.resizes else "clean, custom_fn_resize=identity"

    def folder_block(self, files, desc, show):
        from cleanfid.fid import get_files_features

        return get_files_features([str(f) for f in files], model=self.fx, num_workers=0,
                                  batch_size=self.batch_size, device=self.device, mode="clean",
                                  custom_fn_resize=None if self.fx.resizes else _identity,
                                  description=desc, verbose=show)

    def images_block(self, x):
        # as clean-fid's generator path: HWC float images in [0, 255] through fn_resize one by one
        arr = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)  # clean-fid reads every image as RGB
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(self.fn_resize(a).transpose(2, 0, 1)))
                             for a in arr])
        with torch.no_grad():
            return self.fx(batch.to(self.device)).cpu().numpy()

    def side_stats(self, feats, info):
        return np.mean(feats, axis=0), np.cov(feats, rowvar=False)

    def frechet(self, g, r):
        from cleanfid.fid import frechet_distance as cf_frechet

        with warnings.catch_warnings():  # scipy >= 1.16 deprecates sqrtm's disp, which clean-fid passes
            warnings.filterwarnings("ignore", "The `disp` argument", DeprecationWarning)
            return float(cf_frechet(g.mu, g.sigma, r.mu, r.sigma))


def _identity(img):
    return img


class _TMModule(torch.nn.Module):
    """A feature extractor as torchmetrics' custom ``feature`` module (``num_features`` set, no probe)."""

    def __init__(self, fx, num_features: int):
        super().__init__()
        self.fx, self.num_features = fx, num_features

    def forward(self, x):
        return self.fx(x)


class _TorchmetricsBackend(_Backend):
    name = "torchmetrics"

    def __init__(self, fx, device, batch_size, progress):
        super().__init__(fx, device, batch_size, progress)
        self.metric = None
        self._captured = []

    @property
    def mode(self) -> str:
        from .features import TorchmetricsInception

        if isinstance(self.fx, TorchmetricsInception):
            return "inception, antialias=True" if self.fx.antialias else "inception, antialias=False (TF1 bilinear)"
        return "custom module, update() on uint8" if self.fx.levels == 256 else "custom module, update() on float"

    def ensure_metric(self, dim: int):
        if self.metric is not None:
            return self.metric
        from torchmetrics.image.fid import FrechetInceptionDistance

        from .features import TorchmetricsInception

        # sync_on_compute=False: diffkit reduces the states across processes itself
        if isinstance(self.fx, TorchmetricsInception):
            m = FrechetInceptionDistance(feature=self.fx.feature, normalize=False, antialias=self.fx.antialias,
                                         feature_extractor_weights_path=str(self.fx.path), sync_on_compute=False)
        else:
            m = FrechetInceptionDistance(feature=_TMModule(self.fx, dim), normalize=False, sync_on_compute=False)
        m.inception.register_forward_hook(lambda mod, inp, out: self._captured.append(out.detach()))
        self.metric = m.to(self.device)
        return self.metric

    def images_block(self, x):
        if x.is_floating_point() and self.fx.levels == 256:
            x = x.to(torch.uint8)  # exact: the values are on the uint8 grid already
        if self.fx.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        dim = self.fx.dim or self.fx(x[:1].to(self.device)).shape[1]
        m = self.ensure_metric(dim)
        self._captured.clear()
        m.update(x.to(self.device), real=self.real)
        return torch.cat(self._captured).cpu().numpy()

    def side_stats(self, feats, info):
        # torchmetrics' float64 running sums, summed over processes as its DDP reduction does
        m = self.ensure_metric(feats.shape[1])
        pre = "real" if self.real else "fake"
        s = reduce_sum(getattr(m, f"{pre}_features_sum").double().cpu(), info)
        ss = reduce_sum(getattr(m, f"{pre}_features_cov_sum").double().cpu(), info)
        n = int(reduce_sum(getattr(m, f"{pre}_features_num_samples").cpu(), info))
        mean = s / n
        cov = (ss - n * torch.outer(mean, mean)) / (n - 1)
        return mean.numpy(), cov.numpy()

    def frechet(self, g, r):
        m = self.ensure_metric(g.dim)
        for pre, st in (("real", r), ("fake", g)):
            n = max(int(st.n), 2)
            mu = torch.as_tensor(st.mu, dtype=torch.float64, device=self.device)
            cov = torch.as_tensor(st.sigma, dtype=torch.float64, device=self.device)
            setattr(m, f"{pre}_features_sum", mu * n)
            setattr(m, f"{pre}_features_cov_sum", cov * (n - 1) + n * torch.outer(mu, mu))
            setattr(m, f"{pre}_features_num_samples", torch.tensor(n, device=self.device))
        m.orig_dtype = torch.float64
        with warnings.catch_warnings():  # states were set directly, not through update()
            warnings.filterwarnings("ignore", ".*called before the ``update`` method", UserWarning)
            return float(m.compute())


_BACKEND_CLASSES = {"diffkit": _Backend, "clean-fid": _CleanFIDBackend, "torchmetrics": _TorchmetricsBackend}


def _progress(it, enabled: bool, desc: str, total=None):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total)


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


def _collect(src, name, backend: _Backend, n, batch_size, seed, info: ShardInfo, real: bool,
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
    return _BACKEND_CLASSES[backend](fx, dev, batch_size, progress), info


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
