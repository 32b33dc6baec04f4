"""diffkit.data: the embedded sklearn digits, their fixed split and the 17-level grid."""

import numpy as np
import pytest
import torch

from diffkit.data import GREY_LEVELS, NUM_CLASSES, TEST_EVERY, DigitsDataset, digits_arrays, digits_tensors, quantize


def test_split_is_a_stratified_partition_of_load_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    xa, ya = digits_arrays("all")
    xtr, ytr = digits_arrays("train")
    xte, yte = digits_arrays("test")
    assert xa.shape == (1797, 1, 8, 8) and len(ytr) + len(yte) == 1797
    np.testing.assert_array_equal(xa[:, 0], raw.images / 8 - 1)
    # Partition: every image is in exactly one split (rows of "all" matched as multisets).
    def key(x, y):
        return sorted(map(bytes, np.concatenate([x.reshape(len(x), -1), y[:, None]], 1).astype(np.float32)))
    assert key(np.concatenate([xtr, xte]), np.concatenate([ytr, yte])) == key(xa, ya)
    # Documented rule: every TEST_EVERY-th image of each class (in load_digits order) is a test image.
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(raw.target == c)
        np.testing.assert_array_equal(xte[yte == c][:, 0], raw.images[idx[TEST_EVERY - 1::TEST_EVERY]] / 8 - 1)
        frac = (yte == c).sum() / (raw.target == c).sum()
        assert abs(frac - 1 / TEST_EVERY) < 0.01


def test_values_lie_on_the_17_level_grid_and_quantize_is_a_projection():
    x, _ = digits_tensors("all")
    assert x.min() == -1 and x.max() == 1
    levels = torch.unique(x)
    assert len(levels) == GREY_LEVELS
    assert torch.equal(quantize(x), x)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 1, 8, 8, generator=g) * 2
    q = quantize(y)
    assert torch.equal(quantize(q), q) and q.abs().max() <= 1
    assert set(torch.unique(q).tolist()) <= set(levels.tolist())
    assert (q - y.clamp(-1, 1)).abs().max() <= 1 / 16 + 1e-6  # nearest level: half a step (1/8) away at most


def test_dataset_and_bad_split():
    ds = DigitsDataset("test")
    img, label = ds[0]
    assert img.shape == (1, 8, 8) and img.dtype == torch.float32 and 0 <= label < NUM_CLASSES
    assert len(ds) == len(digits_arrays("test")[1])
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsDataset("valid")
