"""The torch CPU thread count for a block of work, restored afterwards.

diffkit's shipped models are small (8×8 UNets, a 0.8M-parameter text transformer): a second
thread gains little for them, and on a busy 2-core machine two spinning OpenMP threads made
text sampling ~30× slower than one. Commands therefore take ``--threads`` (default 1), applied
by ``diffkit.cli.main`` around the command; library entry points restore the caller's setting.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with ``n`` torch CPU threads; ``None`` or 0 leaves the setting alone."""
    import torch

    if n is not None and n < 0:
        raise ValueError(f"threads must be >= 1, or 0/None to leave torch's setting, got {n}")
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
