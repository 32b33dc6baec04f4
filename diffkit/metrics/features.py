"""Feature extractors for FID/KID: any user ``nn.Module``, the shipped digits network, and
Inception v3 from a weights file the user supplies (nothing is ever downloaded).

Contract (clean-fid's, which every backend here follows): an extractor takes images as
NCHW values in [0, 255] (uint8 or float) and returns (N, d) features. ``levels`` is the
grey-level grid in-memory images are quantised to before extraction (256 = uint8, as if
saved to PNG; the digits protocol uses 17).

Inception weights, two files, two backends:

- clean-fid (``mode="clean"``) runs the StyleGAN2-ADA TorchScript archive
  ``inception-2015-12-05.pt``. clean-fid has no path argument: it looks in ``/tmp`` and
  downloads there when the file is missing. diffkit instead points clean-fid's own
  ``InceptionV3W`` wrapper at the folder holding *your* copy, with ``download=False``.
  A TorchScript archive carries code that runs when it is loaded (``torch.jit.load``):
  use only a file from a trusted source. diffkit records its SHA-256 with every result.
- torchmetrics runs torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
  through ``feature_extractor_weights_path`` (needs ``pip install 'diffkit[inception]'``).

Give the file (or its folder) as ``inception_weights=`` / ``--inception-weights``, or set
``DIFFKIT_INCEPTION_WEIGHTS``. A missing file raises :class:`InceptionWeightsError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from diffkit.assets import asset_path
from diffkit.data import GREY_LEVELS
from diffkit.metrics import digits
from diffkit.models.digits_features import REQUIRED_FILES, load_feature_net
from diffkit.weights import file_sha256, state_dict_sha256

__all__ = [
    "FeatureExtractor",
    "ModuleFeatures",
    "CleanFIDInception",
    "TorchmetricsInception",
    "InceptionWeightsError",
    "INCEPTION_FILES",
    "resolve_inception_weights",
    "DigitsFeatures",
    "digits_extractor",
    "get_feature_extractor",
]

ENV_WEIGHTS = "DIFFKIT_INCEPTION_WEIGHTS"

#: backend -> (file name, what it is, where it is published)
INCEPTION_FILES = {
    "clean-fid": ("inception-2015-12-05.pt", "the StyleGAN2-ADA TorchScript Inception used by clean-fid",
                  "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    "torchmetrics": ("weights-inception-2015-12-05-6726825d.pth",
                     "torch-fidelity's Inception state dict used by torchmetrics",
                     "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                     "weights-inception-2015-12-05-6726825d.pth"),
}


class InceptionWeightsError(FileNotFoundError):
    """The user-supplied Inception weights file is missing (diffkit never downloads it)."""


class FeatureExtractor(nn.Module):
    """Base: [0, 255] NCHW images -> (N, d) float features, plus the fields a result records."""

    name: str = "features"
    levels: int = 256
    in_channels: int | None = None
    input_size: tuple | None = None  # (H, W) the network needs, None = any
    resizes: bool = False  # whether the backend resizes images to input_size (Inception)
    resize: str = "none"  # how images reach the network, as recorded with results
    backends: tuple = ("diffkit", "clean-fid", "torchmetrics")

    @property
    def dim(self) -> int | None:
        return getattr(self, "_dim", None)

    def describe(self) -> dict:
        return {"feature_extractor": self.name, "feature_dim": self.dim, "levels": self.levels,
                "resize": self.resize}

    def check_backend(self, backend: str) -> None:
        if backend not in self.backends:
            raise ValueError(f"feature extractor {self.name!r} runs only under backend "
                             f"{' or '.join(repr(b) for b in self.backends)}, got backend={backend!r}")


def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return m.in_channels
    return None


class ModuleFeatures(FeatureExtractor):
    """Any user ``nn.Module`` as a feature extractor (no resize: images go in at their size).

    The module sees float images mapped linearly from [0, 255] to ``input_range`` with
    ``in_channels`` channels (inferred from its first convolution when not given): grey
    images are repeated to 3 channels, and 3-channel images whose channels are equal (a
    grey PNG read as RGB, as clean-fid's loader does) are reduced to 1. Outputs are
    flattened to (N, d).
    """

    def __init__(self, module: nn.Module, name: str | None = None, in_channels: int | None = None,
                 input_range=(0.0, 255.0), levels: int = 256):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"features: expected an nn.Module, got {type(module).__name__}")
        if not 2 <= int(levels) <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}")
        self.module = module.eval()
        self.name = name or type(module).__name__
        self.in_channels = in_channels or _first_conv_channels(module)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.levels = int(levels)

    def describe(self) -> dict:
        # a fingerprint of the weights, so stats cached with another network are flagged
        return {**super().describe(), "input_range": list(self.input_range),
                "weights_sha256": state_dict_sha256(self.module)}

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.in_channels is None or c == self.in_channels:
            return x
        if self.in_channels == 3 and c == 1:
            return x.expand(-1, 3, -1, -1)
        if self.in_channels == 1 and c == 3:
            if not (torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])):
                raise ValueError(f"feature extractor {self.name!r} takes 1-channel (grey) images; got colour images")
            return x[:, :1]
        raise ValueError(f"feature extractor {self.name!r} takes {self.in_channels}-channel images, got {c} channels")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(x.shape)}")
        x = self._channels(x.float())
        lo, hi = self.input_range
        if (lo, hi) != (0.0, 255.0):
            x = x * ((hi - lo) / 255.0) + lo
        p = next(self.module.parameters(), None)
        if p is not None:
            x = x.to(device=p.device, dtype=p.dtype)
        out = self.module(x)
        out = out.flatten(1).float()
        self._dim = out.shape[1]
        return out


def resolve_inception_weights(weights, backend: str) -> Path:
    """The user's Inception file for ``backend`` (a file or a folder holding it), or the documented error."""
    if backend not in INCEPTION_FILES:
        raise ValueError(f"Inception features exist for backend 'clean-fid' or 'torchmetrics', got {backend!r} "
                         "(backend='diffkit' takes a user nn.Module or features='digits')")
    fname, what, url = INCEPTION_FILES[backend]
    given = weights if weights is not None else os.environ.get(ENV_WEIGHTS)
    p = Path(given).expanduser() if given else None
    if p is not None and p.is_dir():
        p = p / fname
    if p is not None and p.is_file():
        if backend == "clean-fid" and p.name != fname:
            raise InceptionWeightsError(f"clean-fid loads its Inception only from a file named exactly {fname!r} "
                                        f"(got {p}); rename the file or pass the folder that holds it")
        return p
    where = (f"looked at {p}" if p is not None
             else f"no path given (inception_weights= / --inception-weights / ${ENV_WEIGHTS})")
    raise InceptionWeightsError(
        f"Inception weights for backend {backend!r} not found: {where}. This backend needs {fname!r} ({what}). "
        f"diffkit never downloads weights: fetch the file yourself from a trusted source (published at {url}) "
        f"and pass its path (or the folder holding it) as --inception-weights PATH / inception_weights=PATH, "
        f"or set {ENV_WEIGHTS}=PATH."
        + (" It is a TorchScript archive, which runs code when loaded: use only a trusted copy."
           if backend == "clean-fid" else "")
        + " Without Inception weights, use features='digits' or your own nn.Module.")


class CleanFIDInception(FeatureExtractor):
    """clean-fid's ``InceptionV3W`` (TorchScript, 2048-d pool features) on the user's file.

    Images reach it through clean-fid's loader in ``clean`` mode: PIL bicubic resize of
    each channel in float to 299x299, no re-quantisation.
    """

    name = "inception-v3 (clean-fid TorchScript)"
    in_channels = 3
    input_size = (299, 299)
    resizes = True
    resize = "clean-fid clean: PIL bicubic per channel in float to 299x299"
    backends = ("clean-fid",)

    def __init__(self, weights=None):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W

        self.path = resolve_inception_weights(weights, "clean-fid")
        self.sha256 = file_sha256(self.path)
        # download=False: clean-fid joins the folder with its fixed file name and loads it.
        self.net = InceptionV3W(str(self.path.parent), download=False, resize_inside=False).eval()
        self._dim = 2048

    def describe(self) -> dict:
        return {**super().describe(), "weights": str(self.path), "weights_sha256": self.sha256}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float()).float()


class TorchmetricsInception(FeatureExtractor):
    """torchmetrics' ``NoTrainInceptionV3`` with ``feature_extractor_weights_path`` (needs torch-fidelity).

    It takes uint8 images and resizes inside the network to 299x299: torch bilinear with
    antialiasing (``antialias=True``, torchmetrics' default since 1.8) or the TF1-compatible
    bilinear (``antialias=False``, comparable to torch-fidelity and older torchmetrics).
    """

    in_channels = 3
    input_size = (299, 299)
    resizes = True
    backends = ("torchmetrics",)

    def __init__(self, weights=None, feature: int = 2048, antialias: bool = True):
        super().__init__()
        if feature not in (64, 192, 768, 2048):
            raise ValueError(f"feature must be one of 64, 192, 768, 2048 (Inception layers), got {feature}")
        self.path = resolve_inception_weights(weights, "torchmetrics")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ModuleNotFoundError("torchmetrics' Inception needs torch-fidelity: pip install 'diffkit[inception]' "
                                      "(or pip install torch-fidelity)")
        self.feature, self.antialias = int(feature), bool(antialias)
        self.sha256 = file_sha256(self.path)
        self._dim = self.feature
        self.name = f"inception-v3 (torchmetrics/torch-fidelity, {feature})"
        self.resize = ("torchmetrics: torch bilinear, antialias=True, to 299x299" if antialias
                       else "torchmetrics: TF1-compatible bilinear (antialias=False) to 299x299")
        self.net = None  # the torchmetrics backend builds its own metric around these settings

    def describe(self) -> dict:
        return {**super().describe(), "antialias": self.antialias, "weights": str(self.path),
                "weights_sha256": self.sha256}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise ValueError("torchmetrics' Inception takes uint8 images")
        if self.net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.feature)],
                                          feature_extractor_weights_path=str(self.path),
                                          antialias=self.antialias).to(x.device)
        return self.net(x)


class DigitsFeatures(FeatureExtractor):
    """The shipped digits network under the FID-digits protocol, as defined in
    :mod:`diffkit.metrics.digits`: images in [-1, 1], clamped and quantised to the data's 17
    grey levels, 64-d penultimate features (``digits.digits_features`` does both steps)."""

    name = "digits"
    in_channels = 1
    resize = "none (8x8 digits)"
    backends = ("diffkit", "clean-fid", "torchmetrics")

    def __init__(self, net="digits-features"):
        super().__init__()
        self._digits = digits
        self.levels = int(GREY_LEVELS)
        if isinstance(net, nn.Module):
            self.net, self.sha256 = net.eval(), None
        else:
            self.net = load_feature_net(net)
            self.sha256 = file_sha256(asset_path(net, required=REQUIRED_FILES) / "model.safetensors")
        self._dim = int(self.net.feature_dim)
        self.input_size = (self.net.config["image_size"],) * 2

    def describe(self) -> dict:
        out = {**super().describe(), "protocol": self._digits.PROTOCOL, "grey_levels": self.levels}
        if self.sha256:
            out["feature_net_sha256"] = self.sha256
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] == 3:  # a grey PNG read as RGB (clean-fid's loader)
            if not (torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])):
                raise ValueError("the digits network takes grey images; got colour images")
            x = x[:, :1]
        p = next(self.net.parameters())
        feats = self._digits.digits_features(x.float() / 127.5 - 1, self.net)
        return torch.from_numpy(feats).to(p.device)


def digits_extractor(net="digits-features") -> FeatureExtractor:
    """The FID-digits feature extractor; a clear error when this version lacks the protocol."""
    try:
        importlib.import_module("diffkit.metrics.digits")
    except ModuleNotFoundError as e:
        if not str(getattr(e, "name", "")).startswith("diffkit."):
            raise
        raise ValueError("features='digits' needs the FID-digits protocol (diffkit.metrics.digits, the assets "
                         "issue), which this version does not have; pass your own nn.Module instead") from None
    return DigitsFeatures(net)


def _import_factory(spec: str) -> nn.Module:
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if not isinstance(obj, nn.Module) and callable(obj) else obj


def get_feature_extractor(features, backend: str, inception_weights=None, antialias: bool = True) -> FeatureExtractor:
    """``features``: an ``nn.Module``, ``"inception"``, ``"digits"`` or ``"package.module:factory"``."""
    if isinstance(features, FeatureExtractor):
        fx = features
    elif isinstance(features, nn.Module):
        fx = ModuleFeatures(features)
    elif features == "inception":
        if backend == "clean-fid":
            fx = CleanFIDInception(inception_weights)
        elif backend == "torchmetrics":
            fx = TorchmetricsInception(inception_weights, antialias=antialias)
        else:
            raise ValueError("features='inception' needs backend='clean-fid' or 'torchmetrics' (each with its own "
                             "weights file and resize); backend='diffkit' takes features='digits' or an nn.Module")
    elif features == "digits":
        fx = digits_extractor()
    elif isinstance(features, str) and ":" in features:
        fx = get_feature_extractor(_import_factory(features), backend)
    else:
        raise ValueError(f"features must be an nn.Module, 'inception', 'digits' or 'package.module:factory', "
                         f"got {features!r}")
    fx.check_backend(backend)
    return fx
