"""Sampler registry: a name -> a diffusers scheduler class or a functional sampler.

Used by ``diffkit sample --sampler NAME``, ``diffkit fid`` and the benchmarks. Entries
are import paths, resolved on first use, so registering costs nothing at import time.
Each method's issue adds its line to ``_BUILTIN`` below.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SamplerEntry", "register_sampler", "get_sampler", "available_samplers", "describe_samplers",
           "make_scheduler", "pipeline_with_sampler"]


@dataclass(frozen=True)
class SamplerEntry:
    name: str
    target: str  # "package.module:Attribute"
    kind: Literal["scheduler", "function"] = "scheduler"
    description: str = ""
    defaults: dict = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_BUILTIN = [
    SamplerEntry("ddim", "diffusers:DDIMScheduler", "scheduler", "DDIM (Song et al. 2021), diffusers' scheduler"),
    SamplerEntry("ddpm", "diffusers:DDPMScheduler", "scheduler", "ancestral DDPM, diffusers' scheduler"),
    SamplerEntry("euler", "diffusers:EulerDiscreteScheduler", "scheduler", "Euler (EDM Alg. 1), diffusers' scheduler"),
    SamplerEntry("dpmpp-2m", "diffusers:DPMSolverMultistepScheduler", "scheduler", "DPM-Solver++(2M), diffusers' scheduler"),
    SamplerEntry("radd", "diffkit.samplers.radd:RADDScheduler", "function",
                 "RADD absorbing text diffusion (text only: DiscreteDiffusionPipeline / `diffkit text sample`)"),
    SamplerEntry("bdia-ddim", "diffkit.samplers.bdia_ddim:BDIADDIMScheduler", "scheduler",
                 "BDIA-DDIM (Zhang et al. 2024): DDIM's cost, exactly invertible; gamma 0 = DDIM"),
    SamplerEntry("edm-euler", "diffkit.samplers.edm:sample_euler", "function", "EDM Euler (k-diffusion style), N NFE"),
    SamplerEntry("edm-heun", "diffkit.samplers.edm:sample_heun", "function", "EDM Heun (k-diffusion style), 2N-1 NFE"),
    SamplerEntry("bdia-euler", "diffkit.samplers.edm:sample_bdia_euler", "function",
                 "BDIA with Euler increments in EDM coordinates, N NFE, exactly invertible"),
    SamplerEntry("bdia-heun", "diffkit.samplers.edm:sample_bdia_heun", "function",
                 "BDIA with a Heun forward increment in EDM coordinates, 2N-1 NFE, exactly invertible"),
    SamplerEntry("bdia-edm", "diffkit.samplers.bdia_edm:BDIAEDMScheduler", "scheduler",
                 "BDIA-Euler/Heun in EDM coordinates as a diffusers scheduler (VP or EDM models)"),
]

_REGISTRY: dict[str, SamplerEntry] = {e.name: e for e in _BUILTIN}


def register_sampler(name: str, target: str, kind: str = "scheduler", description: str = "", **defaults) -> SamplerEntry:
    if kind not in ("scheduler", "function"):
        raise ValueError(f"kind must be 'scheduler' or 'function', got {kind!r}")
    entry = SamplerEntry(name, target, kind, description, dict(defaults))
    _REGISTRY[name] = entry
    return entry


def get_sampler(name: str) -> SamplerEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {', '.join(sorted(_REGISTRY))}") from None


def available_samplers() -> list[str]:
    return sorted(_REGISTRY)


def describe_samplers() -> list[str]:
    """One line per registered sampler: name, kind and description (``--list-samplers``)."""
    width = max(len(n) for n in _REGISTRY)
    return [f"{n:{width}s}  {_REGISTRY[n].kind:9s}  {_REGISTRY[n].description}" for n in available_samplers()]


def make_scheduler(name: str, base_config, **overrides):
    """Instantiate a registered scheduler from another scheduler's config (the diffusers swap)."""
    entry = get_sampler(name)
    if entry.kind != "scheduler":
        raise ValueError(f"sampler {name!r} is a functional sampler, not a scheduler")
    cls = entry.load()
    cfg = base_config.config if hasattr(base_config, "config") else base_config
    return cls.from_config(cfg, **{**entry.defaults, **overrides})


def pipeline_with_sampler(pipe, name: str, **overrides):
    """A new pipeline of ``pipe``'s class driven by the registered scheduler ``name``: the same
    modules and the same registered config (e.g. ``OneStepPipeline``'s ``generator_timestep``,
    SD's ``requires_safety_checker``), so only the scheduler differs; ``pipe`` keeps its own.

    ``type(pipe)(**pipe.components)`` alone would reset every config value to the class default.
    """
    components = dict(pipe.components)
    params = inspect.signature(type(pipe).__init__).parameters
    config = {k: pipe.config[k] for k in params if k != "self" and k not in components and k in pipe.config}
    scheduler = make_scheduler(name, pipe.scheduler.config, **overrides)
    new = type(pipe)(**{**components, **config, "scheduler": scheduler})
    if pipe.config.get("_name_or_path"):
        new.register_to_config(_name_or_path=pipe.config["_name_or_path"])
    return new
