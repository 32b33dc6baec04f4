"""Images of a model + sampler as an FID source, drawn by the one sampling driver."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from diffkit.checks import check_count
from diffkit.pipelines import load_pipeline
from diffkit.sampling import SamplingPlan, plan_sampling

__all__ = ["ModelSamples"]


@dataclass
class ModelSamples:
    """Images from a model folder / asset name / pipeline, drawn with its own sampler or a registered one.

    A thin source over :mod:`diffkit.sampling` (``plan_sampling`` once in :meth:`build`, the plan run
    per batch), so ``diffkit fid --model`` draws exactly what ``diffkit sample`` and
    ``sample_digits`` draw: ``sampler=None`` (the default) is the pipeline's own scheduler (for a
    one-step generator the only one), a named scheduler drives a copy of the pipeline (the one
    passed in keeps its scheduler), a named function sampler (``edm-heun``, ...) its UNet on the
    EDM grid from the VP prior. ``steps``/``nfe``: the budget (default 50 steps; a one-step
    generator takes 1). ``options``: sampler options, checked against the registry entry.

    Sample k gets class ``k % num_classes`` and its initial noise from (seed, k), so the set is
    the same for any batch size or number of processes.
    """

    model: object
    sampler: Optional[str] = None  # None: the pipeline's own scheduler
    steps: Optional[int] = None  # None: 50 (a one-step generator: 1)
    guidance: float = 1.0
    eta: float = 0.0
    seed: Optional[int] = None  # None: compute_fid's seed
    options: dict = field(default_factory=dict)
    nfe: Optional[int] = None

    def __post_init__(self):
        if self.steps is not None:
            check_count(self.steps, "steps")

    def describe(self) -> dict:
        model = self.model if isinstance(self.model, (str, os.PathLike)) else type(self.model).__name__
        out = {"model": str(model), "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance,
               "eta": self.eta}
        if self.options:
            out["options"] = dict(self.options)
        plan: Optional[SamplingPlan] = getattr(self, "_plan", None)
        if plan is not None:
            out["steps"], out["nfe"] = plan.steps, plan.nfe
            if plan.entry is None or plan.entry.kind == "scheduler":
                out["scheduler"] = type(plan.pipe.scheduler).__name__
        return out

    def build(self, device):
        pipe = load_pipeline(self.model) if isinstance(self.model, (str, os.PathLike)) else self.model
        plan = plan_sampling(pipe, self.sampler, steps=self.steps, nfe=self.nfe, options=self.options,
                             sampler_flag="sampler")
        if plan.pipe is not pipe or pipe is not self.model:  # a pipeline passed in keeps its own progress bar
            if hasattr(plan.pipe, "set_progress_bar_config"):
                plan.pipe.set_progress_bar_config(disable=True)
        plan.pipe = plan.pipe.to(device)
        self._plan = plan
        return self

    def images(self, indices: list[int], seed: int) -> torch.Tensor:
        seed = self.seed if self.seed is not None else seed
        return self._plan.run(None, len(indices), seed=seed, sample_indices=indices, guidance_scale=self.guidance,
                              eta=self.eta).images
