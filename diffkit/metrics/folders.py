"""Image folders for FID: listing, header validation, loading as uint8, and writing PNGs.

A folder is every image file under it (recursively), in sorted relative-path order, the
same order clean-fid's folder loader uses, so "the first n images" means the same files
for every backend. ``scan_folder`` validates sizes and channels from the file headers
only (cheap even for 50k files) before any feature is computed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffkit.images import save_png_atomic

__all__ = ["IMAGE_EXTENSIONS", "FolderInfo", "list_images", "scan_folder", "load_images", "quantize_images",
           "save_image_folder"]

#: file suffixes read as images (clean-fid's image set, minus .npy)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")

#: PIL mode -> channels; other modes (alpha, 16-bit, palette) are refused rather than guessed
_MODES = {"L": 1, "RGB": 3}


@dataclass(frozen=True)
class FolderInfo:
    root: Path
    files: tuple  # absolute paths, sorted by relative path
    size: tuple  # (height, width)
    channels: int

    def __len__(self) -> int:
        return len(self.files)


def list_images(folder, name: str = "folder") -> list[Path]:
    """All image files under ``folder`` (recursive), sorted; errors name the argument."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{name}: folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{name}: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{name}: folder {root} holds no images (accepted suffixes: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def scan_folder(folder, n: int | None = None, name: str = "folder") -> FolderInfo:
    """List and validate (from headers) the first ``n`` images (all when ``n`` is None)."""
    from PIL import Image

    files = list_images(folder, name)
    if n is not None:
        if n < 1:
            raise ValueError(f"{name}: n must be >= 1, got {n}")
        if n > len(files):
            raise ValueError(f"{name}: n={n} but folder {folder} holds only {len(files)} images")
        files = files[:n]
    first = None
    for f in files:
        try:
            with Image.open(f) as im:
                mode, size = im.mode, (im.height, im.width)
        except Exception as e:  # PIL raises several types for unreadable files
            raise ValueError(f"{name}: cannot read image {f}: {e}") from None
        if mode not in _MODES:
            raise ValueError(f"{name}: image {f} has PIL mode {mode!r}; accepted modes: "
                             f"{', '.join(_MODES)} (8-bit grey or RGB, no alpha)")
        if first is None:
            first = (f, size, _MODES[mode])
        elif size != first[1]:
            raise ValueError(f"{name}: mismatched image sizes in {folder}: {first[0].name} is "
                             f"{first[1][0]}x{first[1][1]}, {f.name} is {size[0]}x{size[1]} (HxW)")
        elif _MODES[mode] != first[2]:
            raise ValueError(f"{name}: mismatched channels in {folder}: {first[0].name} has {first[2]}, "
                             f"{f.name} has {_MODES[mode]}")
    return FolderInfo(Path(folder), tuple(files), first[1], first[2])


def load_images(files: Sequence, channels: int | None = None) -> torch.Tensor:
    """Read image files into a uint8 NCHW tensor (no resize, no conversion)."""
    from PIL import Image

    arrs = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im)
        arrs.append(a[:, :, None] if a.ndim == 2 else a)
    # a real NCHW copy: a permuted view of a 1-channel batch also passes as channels-last,
    # which sends convolutions down another (numerically different) kernel
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels}-channel images, read {x.shape[1]} channels")
    return x


def quantize_images(images: torch.Tensor, levels: int = 256, name: str = "images") -> torch.Tensor:
    """[-1, 1] float or uint8 NCHW -> float values in [0, 255] on a ``levels``-level grid.

    ``levels=256`` is exactly :func:`diffkit.images.to_uint8` (what saving a PNG does).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected (N, C, H, W) with C in (1, 3), got shape {tuple(images.shape)}")
    q = levels - 1
    if images.dtype == torch.uint8:
        x = images.float()
        return x if levels == 256 else torch.round(x * (q / 255.0)) * (255.0 / q)
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float images in [-1, 1] or uint8 in [0, 255], got dtype {images.dtype}")
    x = images.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.5 or hi > 1.5:
        raise ValueError(f"{name}: float images must be in [-1, 1] (values outside are clamped), got range "
                         f"[{lo:.3g}, {hi:.3g}]; pass uint8 tensors for [0, 255] data")
    k = torch.round((x.clamp(-1, 1) + 1) * (q / 2.0))
    return k if levels == 256 else k * (255.0 / q)


def save_image_folder(images: torch.Tensor, folder, start_index: int = 0, levels: int = 256,
                      prefix: str = "") -> list[str]:
    """Write images ([-1, 1] float or uint8, NCHW) as lossless PNGs named by global index.

    ``levels`` < 256 snaps to that grey-level grid first (17 for FID-digits), so reading
    the PNGs back and re-quantising gives exactly the same images.
    """
    arr = quantize_images(images, levels, "images").round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    os.makedirs(folder, exist_ok=True)
    width = max(6, len(str(start_index + len(arr))))
    out = []
    for k, a in enumerate(arr):
        path = os.path.join(folder, f"{prefix}{start_index + k:0{width}d}.png")
        out.append(save_png_atomic(a[:, :, 0] if a.shape[-1] == 1 else a, path))
    return out
