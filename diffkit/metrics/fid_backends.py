"""The three FID backends, each with its own image path and its own distance (see
:mod:`diffkit.metrics.fid`): ``"diffkit"`` (diffkit's loader and Fréchet distance),
``"clean-fid"`` (clean-fid's loader/resizer and ``frechet_distance``) and ``"torchmetrics"``
(``FrechetInceptionDistance.update()`` on uint8 batches, its float64 sums, its ``compute()``)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from diffkit.metrics.features import FeatureExtractor, TorchmetricsInception
from diffkit.metrics.fid_stats import FIDStats
from diffkit.metrics.folders import load_images
from diffkit.metrics.frechet import feature_stats, frechet_distance
from diffkit.metrics.sharding import ShardInfo, reduce_sum

__all__ = ["BACKENDS", "BACKEND_CLASSES", "progress"]

BACKENDS = ("diffkit", "clean-fid", "torchmetrics")


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
        for b in progress(range(0, len(files), self.batch_size), show, desc):
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
        if isinstance(self.fx, TorchmetricsInception):
            return "inception, antialias=True" if self.fx.antialias else "inception, antialias=False (TF1 bilinear)"
        return "custom module, update() on uint8" if self.fx.levels == 256 else "custom module, update() on float"

    def ensure_metric(self, dim: int):
        if self.metric is not None:
            return self.metric
        from torchmetrics.image.fid import FrechetInceptionDistance

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


BACKEND_CLASSES = {"diffkit": _Backend, "clean-fid": _CleanFIDBackend, "torchmetrics": _TorchmetricsBackend}


def progress(it, enabled: bool, desc: str, total=None):
    """``it`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total)

