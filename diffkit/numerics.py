"""Non-finite model outputs: one watch for every diffkit sampling loop.

A model with NaN weights (or a float16 overflow) produces NaN/inf outputs, and every later
latent is garbage: the loop must stop with an error naming the step, not write an image.
:class:`FiniteWatch` checks each model output with one reduction. On CPU the check is
immediate. On accelerators a device-side flag records the first bad step and is read only
at ``flush`` (the loop's end, or every few steps where the caller asks), so the loop does not
synchronise the device every step.

Used by diffkit's pipelines (``ClassConditionalPipeline``, ``OneStepPipeline``,
``DiscreteDiffusionPipeline``: this also covers a diffusers scheduler driven by them), the
functional EDM/BDIA samplers (``diffkit.samplers.edm``), ``BDIADDIMScheduler`` and exact
inversion (``diffkit.samplers.inversion``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["NonFiniteOutputError", "FiniteWatch"]


class NonFiniteOutputError(ValueError):
    """The model output contained NaN or inf."""


class FiniteWatch:
    """Raises :class:`NonFiniteOutputError` naming the first step whose tensor had NaN/inf.

    ``what``: the tensor's name in the message; ``at``: the name of the step's label (``t`` of
    ``update``: "timestep", "sigma"); ``deferred``: None = deferred exactly when the tensor is
    not on the CPU; ``allow_neg_inf``: -inf is a valid value (log-probabilities of impossible
    tokens), only NaN and +inf are errors.
    """

    def __init__(self, what: str = "model output", deferred: Optional[bool] = None, at: str = "timestep",
                 allow_neg_inf: bool = False):
        self.what = what
        self.at = at
        self.allow_neg_inf = bool(allow_neg_inf)
        self.deferred = deferred  # None: deferred exactly when the tensor is not on the CPU
        self._first: Optional[torch.Tensor] = None
        self._timesteps: dict[int, object] = {}

    def _bad(self, x: torch.Tensor) -> torch.Tensor:
        if self.allow_neg_inf:
            # amax propagates NaN; -inf alone never reaches +inf
            return ~(x.amax() < math.inf)
        # one float64 reduction (a sum is finite iff every element is: no float64 overflow
        # from float16/32/64 model outputs of sane size), cheaper than isfinite().all();
        # float32 on MPS, which has no float64
        return ~torch.isfinite(x.sum(dtype=torch.float32 if x.device.type == "mps" else torch.float64))

    def update(self, x: torch.Tensor, k: int, t=None, flush: bool = False) -> None:
        if x.numel() == 0:
            return
        bad = self._bad(x)
        if not (x.device.type != "cpu" if self.deferred is None else self.deferred):
            if bool(bad):
                raise self.error(k, t)
            return
        self._timesteps[k] = t
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=x.device)
        self._first = torch.where(bad & (self._first < 0), k, self._first)
        if flush:
            self.flush()

    def flush(self) -> None:
        if self._first is None:
            return
        first = int(self._first)  # the one device sync
        if first >= 0:
            raise self.error(first, self._timesteps.get(first))

    def error(self, k: int, t) -> NonFiniteOutputError:
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            t = t.item()
        kinds = "NaN or +inf" if self.allow_neg_inf else "NaN or inf"
        where = f"step {k}" + (f" ({self.at} {t})" if t is not None else "")
        return NonFiniteOutputError(
            f"{self.what} contains {kinds} at {where}; every later latent would be invalid. "
            "Check the model's weights (NaN in a checkpoint), its dtype (float16 overflow) and its inputs.")
