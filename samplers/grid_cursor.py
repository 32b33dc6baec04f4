"""Where a sampling loop stands on a scheduler's timestep grid: the one rule the BDIA schedulers
apply to the timestep handed to ``step``.

A BDIA step carries state from the previous call (z_{i+1}, the float64 shadow), so a call that
is not the next one on the grid must not silently mix in that state. The rule, the same on
every device:

* the first call after ``set_timesteps`` starts a loop at ``begin_index`` when one is set
  (img2img pipelines), else at the passed timestep's grid position;
* every later call must pass the next grid timestep;
* the one exception is the loop's first timestep (``timesteps[begin_index]``, or without a
  begin index ``timesteps[0]`` or where the previous loop started): it **restarts** the loop,
  and the scheduler clears its carried state -- so a hand-written loop run twice after one
  ``set_timesteps`` repeats itself, as DDIM does;
* anything else (a skipped or repeated timestep, one off the grid, a call past the end)
  raises ``ValueError`` ending in "call set_timesteps before a new loop".

Reading a timestep that lives on an accelerator would synchronise the device every step, so
accelerator tensors are never read: a view of the scheduler's own ``timesteps`` tensor (what
pipelines and ``for t in scheduler.timesteps`` pass) is located by its storage offset, and any
other accelerator tensor is taken to be the next grid entry (only a call past the end is then
detectable). Numbers and CPU tensors are compared with the CPU copy of the grid. The one
exception: the first call of a loop with no begin index and an accelerator timestep that is
not such a view reads it once, to find where the loop starts.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["GridCursor"]

_NEW_LOOP = "call set_timesteps before a new loop"


class GridCursor:
    """The grid position of the next ``step`` call; see the module docstring for the rule.

    Args:
        grid: the timesteps on the CPU (the values compared against).
        timesteps: the same timesteps as the scheduler exposes them (possibly on an
            accelerator); views of this tensor are located without reading them.
    """

    def __init__(self, grid: torch.Tensor, timesteps: torch.Tensor):
        self.values = grid.tolist()
        self._timesteps = timesteps
        self.next: Optional[int] = None  # index of the next call; None before a loop starts
        self.start: Optional[int] = None  # index the current loop started at

    def __len__(self) -> int:
        return len(self.values)

    # ------------------------------------------------------------------ reading a timestep
    def _view_index(self, timestep) -> Optional[int]:
        """The index of ``timestep`` in the scheduler's timesteps if it is a one-element view of
        them (no device read), else None."""
        ts = self._timesteps
        if not isinstance(timestep, torch.Tensor) or timestep.numel() != 1 or ts.ndim != 1 or not len(ts):
            return None
        if timestep.device != ts.device or timestep.dtype != ts.dtype:
            return None
        base = ts.untyped_storage().data_ptr()
        if base == 0 or timestep.untyped_storage().data_ptr() != base:  # 0: meta tensors share no storage
            return None
        offset = timestep.storage_offset() - ts.storage_offset()
        if offset % ts.stride(0) or not 0 <= offset // ts.stride(0) < len(ts):
            return None
        return offset // ts.stride(0)

    def _value(self, timestep, read: bool):
        """The timestep as a number, or None for an accelerator tensor that is not read."""
        k = self._view_index(timestep)
        if k is not None:
            return self.values[k]
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value, got a tensor of shape {tuple(timestep.shape)}")
            if timestep.device.type != "cpu" and not read:
                return None
            return timestep.detach().cpu().reshape(()).item()
        return timestep

    def _lookup(self, value) -> int:
        """The grid index of a loop's first timestep (diffusers' convention for repeated entries:
        the second occurrence, where img2img starts mid-pair)."""
        hits = [i for i, v in enumerate(self.values) if v == value]
        if not hits:
            raise ValueError(f"timestep {value} is not in this scheduler's timesteps "
                             f"{self.values[:3]}…{self.values[-1:]}; pass entries of scheduler.timesteps "
                             "(call set_timesteps first)")
        return hits[1] if len(hits) > 1 else hits[0]

    # ------------------------------------------------------------------ the rule
    def restart_points(self, begin_index: Optional[int]) -> list[int]:
        """Grid indices at which a call restarts the loop."""
        if begin_index is not None:
            return [begin_index]
        return sorted({0, self.start if self.start is not None else 0})

    def locate(self, timestep, begin_index: Optional[int] = None) -> tuple[int, bool]:
        """(grid index of this call, whether it starts a loop); raises when the call breaks the
        rule. Does not move the cursor (see :meth:`advance`)."""
        n = len(self.values)
        if self.next is None:  # the first call after set_timesteps
            if begin_index is None:
                return self._lookup(self._value(timestep, read=True)), True
            value = self._value(timestep, read=False)
            if value is not None and value != self.values[begin_index]:
                raise ValueError(f"step got timestep {value}, but set_begin_index({begin_index}) starts the loop at "
                                 f"{self.values[begin_index]}; {_NEW_LOOP}")
            return begin_index, True
        value = self._value(timestep, read=False)
        k = self.next
        if value is None:  # an accelerator tensor that is not a view of our timesteps: trusted, not read
            if k >= n:
                raise ValueError(f"step called {k + 1} times but the grid has {n} timesteps; {_NEW_LOOP}")
            return k, False
        if k < n and value == self.values[k]:
            return k, False
        for r in self.restart_points(begin_index):
            if value == self.values[r]:
                return r, True
        expected = f"the next grid timestep is {self.values[k]} (call {k + 1} of {n})" if k < n else \
            f"the loop has already used all {n} timesteps"
        restart = " or ".join(str(self.values[r]) for r in self.restart_points(begin_index))
        raise ValueError(f"step got timestep {value}, but {expected}; a loop may restart only at its first "
                         f"timestep ({restart}); {_NEW_LOOP}")

    def advance(self, k: int, starts: bool) -> None:
        """Record that the call at grid index ``k`` was made."""
        if starts:
            self.start = k
        self.next = k + 1
