"""Embedded training data: the handwritten digits that ship inside scikit-learn.

``sklearn.datasets.load_digits`` holds 1,797 greyscale 8×8 images with 17 grey levels
(integers 0..16) in 10 classes; it is read from the installed package (no download).

Scaling: a grey level v in 0..16 maps to ``v / 8 - 1`` in [-1, 1], so the 17 levels sit on
the grid {-1, -7/8, ..., 7/8, 1} (``quantize`` snaps any image to it).

Split (fixed, class-stratified, independent of any RNG or library version): within each
class, images are taken in their order in ``load_digits``; every 5th one (positions
4, 9, 14, ... of that class) is a test image, the rest are training images. That gives
1,442 train / 355 test images, ~80/20 in every class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["GREY_LEVELS", "NUM_CLASSES", "SPLITS", "TEST_EVERY", "digits_arrays", "digits_tensors",
           "quantize", "DigitsDataset"]

GREY_LEVELS = 17
NUM_CLASSES = 10
TEST_EVERY = 5
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _load():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = np.asarray(d.target, dtype=np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        is_test[idx[TEST_EVERY - 1::TEST_EVERY]] = True
    images.setflags(write=False)
    labels.setflags(write=False)
    is_test.setflags(write=False)
    return images, labels, is_test


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64) of one split (read-only arrays)."""
    images, labels, is_test = _load()
    _check_split(split)
    keep = slice(None) if split == "all" else (is_test if split == "test" else ~is_test)
    return images[keep][:, None], labels[keep]


def digits_tensors(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The split as (images, labels) torch tensors (fresh copies)."""
    x, y = digits_arrays(split)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and snap to the data's 17 grey levels (v/8 - 1, v = 0..16)."""
    levels = GREY_LEVELS - 1
    return torch.round((images.clamp(-1, 1) + 1) * (levels / 2)) / (levels / 2) - 1


class DigitsDataset(Dataset):
    """sklearn digits as a torch Dataset of (image (1, 8, 8) in [-1, 1], label) pairs."""

    def __init__(self, split: str = "train"):
        self.split = _check_split(split)
        self.images, self.labels = digits_tensors(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])
