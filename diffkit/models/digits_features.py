"""The digits feature network: a small CNN classifier whose penultimate layer gives the
features of the FID-digits protocol (``diffkit.metrics.digits``).

Architecture (for 8×8 single-channel images in [-1, 1]): three 3×3 convolutions with SiLU,
two 2×2 max-pools (8 → 4 → 2), a linear layer to ``feature_dim`` (64) with SiLU -- the
features -- and a linear classifier to 10 classes. SiLU rather than ReLU so that no feature
is exactly constant (dead units would make the feature covariance singular).

``features`` are the penultimate activations divided by a fixed ``feature_scale`` (set once
after training: the RMS of the train split's raw activations, stored in config.json), so
entries are O(1) as KID's polynomial kernel (γ = 1/d) assumes; raw activations of a
confident classifier reach ~40 and make KID's estimate useless.

Stored as ``config.json`` + ``model.safetensors`` (``save`` / ``load_feature_net``; loading
checks the folder's SHA256SUMS manifest and every key and shape: ``diffkit.weights``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from diffkit.assets import REBUILD, AssetError, asset_path, corrupt_asset
from diffkit.atomic import save_safetensors, write_text_atomically
from diffkit.weights import WeightsError, load_state_dict_strict

__all__ = ["DigitsFeatureNet", "load_feature_net", "REQUIRED_FILES"]

REQUIRED_FILES = ("config.json", "model.safetensors")


class DigitsFeatureNet(nn.Module):
    def __init__(self, channels=(32, 32, 64), feature_dim: int = 64, num_classes: int = 10, image_size: int = 8,
                 in_channels: int = 1, feature_scale: float = 1.0):
        super().__init__()
        c1, c2, c3 = channels
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 pools), got {image_size}")
        self.config = {"channels": list(channels), "feature_dim": int(feature_dim), "num_classes": int(num_classes),
                       "image_size": int(image_size), "in_channels": int(in_channels),
                       "feature_scale": float(feature_scale)}
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c3 * (image_size // 4) ** 2, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        s, c = self.config["image_size"], self.config["in_channels"]
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"images: expected shape (N, {c}, {s}, {s}) in [-1, 1], got {tuple(x.shape)}")
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def set_feature_scale(self, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"feature_scale must be > 0, got {scale}")
        self.config["feature_scale"] = float(scale)

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, shape (N, feature_dim)."""
        return self.body(self._check(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations / feature_scale: the FID-digits features, shape (N, feature_dim)."""
        return self.raw_features(x) / self.config["feature_scale"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, num_classes)."""
        return self.head(self.raw_features(x))

    def save(self, directory, extra_config: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each file atomically)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": type(self).__name__, **self.config, **(extra_config or {})}
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                         d / "model.safetensors")
        write_text_atomically(d / "config.json", json.dumps(cfg, indent=1) + "\n")
        return d


_ARCH_KEYS = ("channels", "feature_dim", "num_classes", "image_size", "in_channels", "feature_scale")


def load_feature_net(path="digits-features", device="cpu") -> DigitsFeatureNet:
    """Load the shipped feature network (asset name or folder), in eval mode; its full
    config.json (recorded accuracy included) is at ``net.stored_config``."""
    from safetensors import SafetensorError

    d = asset_path(path, required=REQUIRED_FILES)
    cmd = REBUILD["digits-features"][1]
    try:
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("_class_name") != "DigitsFeatureNet":
            raise ValueError(f"_class_name is {cfg.get('_class_name')!r}, expected 'DigitsFeatureNet'")
        net = DigitsFeatureNet(**{k: cfg[k] for k in _ARCH_KEYS if k in cfg})
        load_state_dict_strict(net, d / "model.safetensors")
    except WeightsError as e:
        raise corrupt_asset(d, e, "digits-features") from None
    except (ValueError, KeyError, RuntimeError, OSError, SafetensorError) as e:
        raise AssetError(f"the digits feature network at {d} is corrupted ({type(e).__name__}: {e}); "
                         f"rebuild it with `{cmd}`") from e
    net.stored_config = cfg
    return net.to(device).eval().requires_grad_(False)
