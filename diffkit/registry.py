"""Sampler registry: the one table of sampler names -> a diffusers scheduler class or a functional sampler.

Used by ``diffkit sample --sampler NAME``, ``diffkit fid`` and the benchmarks (through
:mod:`diffkit.sampling`). Entries are import paths, resolved on first use, so registering costs
nothing at import time. Each entry declares

* ``kind``: ``"scheduler"`` (a diffusers scheduler class, swapped into the pipeline) or
  ``"function"`` (a k-diffusion-style ``fn(model, x, sigmas, extra_args, ...)``);
* ``budget``: how many model evaluations N steps cost -- ``"N"``, ``"2N-1"`` (Heun on a grid
  ending in 0: the last step is first order) or ``"solver"`` (``2N-1`` when the ``solver``
  option is ``"heun"``, else ``N``); :meth:`SamplerEntry.nfe` and :meth:`SamplerEntry.steps_for`
  are the one steps <-> NFE rule;
* ``options``: the sampler's settings (:class:`Option`: type, range or choices, where it goes),
  validated by :meth:`SamplerEntry.check_options`; anything undeclared is refused with the
  accepted names;
* ``modality``: ``"image"`` or ``"text"`` (RADD runs through ``diffkit text sample`` only).
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

__all__ = ["Option", "SamplerEntry", "register_sampler", "get_sampler", "available_samplers", "describe_samplers",
           "image_samplers", "make_scheduler", "pipeline_with_sampler", "entry_for_scheduler"]


@dataclass(frozen=True)
class Option:
    """One sampler setting. ``target``: ``"config"`` (a scheduler's config key, via ``from_config``),
    ``"call"`` (a keyword of the sampler function, or of the pipeline call for a scheduler) or
    ``"grid"`` (the σ grid of a function sampler, e.g. ρ)."""

    name: str
    type: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()
    target: Literal["config", "call", "grid"] = "config"
    help: str = ""

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.name} ({self.type.__name__} in [{lo}, {hi}])"

    def parse(self, value, sampler: str):
        """``value`` (a string from the command line, or a Python value) as this option's type,
        checked against its range / choices; a ValueError names the option and the sampler."""
        where = f"option {self.name} of sampler {sampler!r}"
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"{where}: expected a string, got {value!r}")
            v = value
        elif isinstance(value, bool):
            raise ValueError(f"{where}: expected a {self.type.__name__}, got {value!r}")
        else:
            try:
                v = self.type(value.item() if hasattr(value, "item") else value)  # numpy / 0-d tensor scalars
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected a {self.type.__name__}, got {value!r}") from None
            if self.type is int and isinstance(value, float) and v != value:
                raise ValueError(f"{where}: expected an integer, got {value!r}")
            if isinstance(v, float) and math.isnan(v):
                raise ValueError(f"{where}: expected a number, got {value!r}")
        if self.choices and v not in self.choices:
            raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise ValueError(f"{where} must be in [{self.low}, {self.high}], got {value!r}")
        return v


_GAMMA = Option("gamma", float, 0.0, 1.0, help="BDIA γ (0 = the plain sampler)")
_GAMMA_MODE = Option("gamma_mode", str, choices=("vp", "constant"), target="call")
_RHO = Option("rho", float, 1e-3, None, target="grid", help="Karras grid exponent ρ")
_ETA = Option("eta", float, 0.0, 1.0, target="call", help="DDIM η (0 = deterministic)")
_CHURN = (Option("s_churn", float, 0.0, None, target="call"), Option("s_tmin", float, 0.0, None, target="call"),
          Option("s_tmax", float, 0.0, None, target="call"), Option("s_noise", float, 0.0, None, target="call"))
_BDIA_FN = (Option("gamma", float, 0.0, 1.0, target="call"), _GAMMA_MODE, _RHO)


@dataclass(frozen=True)
class SamplerEntry:
    name: str
    target: str  # "package.module:Attribute"
    kind: Literal["scheduler", "function"] = "scheduler"
    description: str = ""
    defaults: dict = field(default_factory=dict)
    options: tuple = ()
    budget: Literal["N", "2N-1", "solver"] = "N"
    modality: Literal["image", "text"] = "image"

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    # ---- the one steps <-> NFE rule
    def _two_evals(self, options: Optional[dict]) -> bool:
        if self.budget == "solver":
            return {**self.defaults, **(options or {})}.get("solver", "euler") == "heun"
        return self.budget == "2N-1"

    def nfe(self, steps: int, options: Optional[dict] = None) -> int:
        """Model evaluations of ``steps`` steps (Heun: 2N - 1 on a grid ending in 0)."""
        return 2 * steps - 1 if self._two_evals(options) else steps

    def steps_for(self, nfe: int, options: Optional[dict] = None) -> int:
        """The most steps whose cost is <= ``nfe`` (at least 1)."""
        return max(1, (nfe + 1) // 2) if self._two_evals(options) else nfe

    # ---- options
    def accepted_options(self) -> str:
        return ", ".join(o.describe() for o in self.options) or "none"

    def check_options(self, options: Optional[dict], flag: str = "--option") -> dict:
        """``options`` parsed and validated against the declared ones (an unknown name is refused
        with the accepted names)."""
        declared = {o.name: o for o in self.options}
        out = {}
        for k, v in (options or {}).items():
            if k not in declared:
                raise ValueError(f"{flag} {k}: sampler {self.name!r} has no option {k!r}; it accepts "
                                 f"{self.accepted_options()}")
            out[k] = declared[k].parse(v, self.name)
        return out

    def split_options(self, options: dict) -> dict:
        """{target: {name: value}} of already checked options, with the entry's defaults first."""
        where = {o.name: o.target for o in self.options}
        out: dict = {"config": {}, "call": {}, "grid": {}}
        for k, v in {**self.defaults, **options}.items():
            out[where.get(k, "config" if self.kind == "scheduler" else "call")][k] = v
        return out


_BUILTIN = [
    SamplerEntry("ddim", "diffusers:DDIMScheduler", "scheduler", "DDIM (Song et al. 2021), diffusers' scheduler",
                 options=(_ETA,)),
    SamplerEntry("ddpm", "diffusers:DDPMScheduler", "scheduler", "ancestral DDPM, diffusers' scheduler"),
    SamplerEntry("euler", "diffusers:EulerDiscreteScheduler", "scheduler", "Euler (EDM Alg. 1), diffusers' scheduler"),
    SamplerEntry("dpmpp-2m", "diffusers:DPMSolverMultistepScheduler", "scheduler",
                 "DPM-Solver++(2M), diffusers' scheduler"),
    SamplerEntry("radd", "diffkit.samplers.radd:RADDScheduler", "function",
                 "RADD absorbing text diffusion (text only: DiscreteDiffusionPipeline / `diffkit text sample`)",
                 modality="text"),
    SamplerEntry("bdia-ddim", "diffkit.samplers.bdia_ddim:BDIADDIMScheduler", "scheduler",
                 "BDIA-DDIM (Zhang et al. 2024): DDIM's cost, exactly invertible; gamma 0 = DDIM",
                 options=(_GAMMA, _ETA)),
    SamplerEntry("edm-euler", "diffkit.samplers.edm:sample_euler", "function", "EDM Euler (k-diffusion style), N NFE",
                 options=(*_CHURN, _RHO)),
    SamplerEntry("edm-heun", "diffkit.samplers.edm:sample_heun", "function",
                 "EDM Heun (k-diffusion style), 2N-1 NFE", options=(*_CHURN, _RHO), budget="2N-1"),
    SamplerEntry("bdia-euler", "diffkit.samplers.edm:sample_bdia_euler", "function",
                 "BDIA with Euler increments in EDM coordinates, N NFE, exactly invertible", options=_BDIA_FN),
    SamplerEntry("bdia-heun", "diffkit.samplers.edm:sample_bdia_heun", "function",
                 "BDIA with a Heun forward increment in EDM coordinates, 2N-1 NFE, exactly invertible",
                 options=_BDIA_FN, budget="2N-1"),
    SamplerEntry("bdia-edm", "diffkit.samplers.bdia_edm:BDIAEDMScheduler", "scheduler",
                 "BDIA-Euler/Heun in EDM coordinates as a diffusers scheduler (VP or EDM models)",
                 options=(_GAMMA, Option("gamma_mode", str, choices=("vp", "constant")),
                          Option("solver", str, choices=("euler", "heun")), Option("rho", float, 1e-3, None),
                          Option("sigma_schedule", str, choices=("karras", "exponential", "discrete"))),
                 budget="solver"),
]

_REGISTRY: dict[str, SamplerEntry] = {e.name: e for e in _BUILTIN}


def register_sampler(name: str, target: str, kind: str = "scheduler", description: str = "", *,
                     options: tuple = (), budget: str = "N", modality: str = "image", **defaults) -> SamplerEntry:
    if kind not in ("scheduler", "function"):
        raise ValueError(f"kind must be 'scheduler' or 'function', got {kind!r}")
    if budget not in ("N", "2N-1", "solver"):
        raise ValueError(f"budget must be 'N', '2N-1' or 'solver', got {budget!r}")
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    entry = SamplerEntry(name, target, kind, description, dict(defaults), tuple(options), budget, modality)
    _REGISTRY[name] = entry
    return entry


def get_sampler(name: str) -> SamplerEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {', '.join(sorted(_REGISTRY))}") from None


def available_samplers() -> list[str]:
    return sorted(_REGISTRY)


def image_samplers(kind: Optional[str] = None) -> list[str]:
    """Names of the registered image samplers (of one ``kind`` if given)."""
    return [n for n in available_samplers()
            if _REGISTRY[n].modality == "image" and (kind is None or _REGISTRY[n].kind == kind)]


def entry_for_scheduler(scheduler) -> Optional[SamplerEntry]:
    """The registry entry whose scheduler class ``scheduler`` is an instance of exactly (None if none)."""
    for e in _REGISTRY.values():
        if e.kind == "scheduler" and e.target.rpartition(":")[2] == type(scheduler).__name__:
            if e.load() is type(scheduler):
                return e
    return None


def describe_samplers() -> list[str]:
    """One line per registered sampler: name, kind, NFE of N steps, description, options (``--list-samplers``)."""
    width = max(len(n) for n in _REGISTRY)
    lines = []
    for n in available_samplers():
        e = _REGISTRY[n]
        cost = {"N": "N NFE", "2N-1": "2N-1 NFE", "solver": "N|2N-1 NFE"}[e.budget]
        opts = f"  [options: {e.accepted_options()}]" if e.options else ""
        lines.append(f"{n:{width}s}  {e.kind:9s}  {cost:10s}  {e.description}{opts}")
    return lines


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
