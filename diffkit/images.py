"""Image tensors <-> uint8 / PIL / image-file grids (images in [-1, 1], NCHW).

Image files are written in the format their suffix names (``IMAGE_FORMATS``: PNG, JPEG, WebP,
BMP, TIFF); any other suffix is refused with an error naming the accepted ones."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from diffkit.atomic import atomic_path
from diffkit.checks import IMAGE_FORMATS, image_format, image_path_arg

__all__ = ["to_uint8", "make_grid", "save_grid", "save_image_atomic", "save_png_atomic", "IMAGE_FORMATS",
           "image_format", "image_path_arg"]

#: lossy formats are written at this quality (PIL's default, 75, visibly blurs 8x8 digits upscaled)
LOSSY_QUALITY = 95


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> NHWC uint8 (round half to even after clamping)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, upscale: int = 1, pad: int = 1) -> np.ndarray:
    """A HWC uint8 grid (grey images become RGB), optionally upscaled by pixel repetition."""
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if upscale > 1:
        arr = arr.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = arr.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[k]
    return grid


def save_image_atomic(array: np.ndarray, path: str) -> str:
    """A HW / HWC uint8 array to ``path`` in the format its suffix names (see :func:`image_format`),
    through a temporary sibling file and a rename."""
    from PIL import Image

    fmt = image_format(path, "path")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt, **({"quality": LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}))
    return path


#: the former name, kept for its callers (e.g. diffkit.metrics.folders, which writes .png paths)
save_png_atomic = save_image_atomic


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None, upscale: int = 1) -> str:
    return save_image_atomic(make_grid(images, nrow, upscale), path)
