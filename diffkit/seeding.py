"""Per-sample randomness keyed to the global sample index.

Every random draw for sample k (initial noise, training timestep, label dropout, ...)
comes from its own generator seeded by (base_seed, stream, k). Results therefore do not
depend on batch size, batch position, process rank or number of processes. Draws are
made on the CPU (bit-reproducible across devices) and then moved.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["sample_seed", "sample_generator", "randn_for_indices", "rand_for_indices", "randint_for_indices"]


def _stream_id(stream) -> int:
    if isinstance(stream, int):
        return stream
    return zlib.crc32(str(stream).encode())


def sample_seed(base_seed: int, index: int, stream="noise") -> int:
    """A 63-bit seed for sample ``index`` of stream ``stream`` under ``base_seed``."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    ss = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFFFFFFFFFF, _stream_id(stream), int(index)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_generator(base_seed: int, index: int, stream="noise") -> torch.Generator:
    return torch.Generator("cpu").manual_seed(sample_seed(base_seed, index, stream))


def _indices(indices) -> list[int]:
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return [int(i) for i in indices]


def randn_for_indices(shape: Sequence[int], indices: Iterable[int], base_seed: int, stream="noise",
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal tensor of shape (len(indices), *shape); row k depends only on (seed, stream, index)."""
    rows = [torch.randn(tuple(shape), generator=sample_generator(base_seed, i, stream), dtype=torch.float64)
            for i in _indices(indices)]
    return torch.stack(rows).to(device=device, dtype=dtype)


def rand_for_indices(shape: Sequence[int], indices: Iterable[int], base_seed: int, stream="uniform",
                     dtype=torch.float32, device=None) -> torch.Tensor:
    rows = [torch.rand(tuple(shape), generator=sample_generator(base_seed, i, stream), dtype=torch.float64)
            for i in _indices(indices)]
    return torch.stack(rows).to(device=device, dtype=dtype)


def randint_for_indices(low: int, high: int, indices: Iterable[int], base_seed: int, stream="randint",
                        device=None) -> torch.Tensor:
    """One integer in [low, high) per index."""
    vals = [int(torch.randint(low, high, (1,), generator=sample_generator(base_seed, i, stream)))
            for i in _indices(indices)]
    return torch.tensor(vals, dtype=torch.long, device=device)
