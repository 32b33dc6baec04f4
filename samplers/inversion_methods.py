"""The one table of inversion methods: name -> implementation.

``diffkit.pipelines.editing.edit``, ``diffkit invert``, ``diffkit edit`` and ``diffkit sample
--from-inversion`` look methods up here. Each entry names the module that implements the
protocol of :mod:`diffkit.samplers.inversion_base`:

    invert(model, latent, condition=None, *, steps, strength, guidance_scale=None, extra=None, **options)
    regenerate(model, record, condition=None, *, guidance_scale=None)

and the options it takes. Modules are imported on first use (as the sampler registry's
entries), so the names are available to ``--method`` choices without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["InversionMethod", "INVERSION_METHODS", "inversion_method_names", "get_inversion_method", "load_record",
           "method_of"]


@dataclass(frozen=True)
class InversionMethod:
    name: str
    title: str                       # for messages: "BDIA-DDIM", "EDICT", "DDIM inversion"
    module: str                      # exposes invert, regenerate, OPTIONS and the record type
    record: str                      # the record class's name in ``module``
    exact: bool                      # regeneration returns the inverted latent to float round-off
    nfe_per_step: int                # model evaluations per grid step, each way
    description: str
    options: tuple[str, ...] = ()    # keyword options of invert beyond the protocol's
    needs_scheduler_config: bool = False  # invert takes the model's diffusers scheduler config

    @property
    def implementation(self):
        return importlib.import_module(self.module)

    @property
    def record_type(self) -> type:
        return getattr(self.implementation, self.record)

    def check_options(self, options: Mapping[str, Any], prefix: str = "") -> dict:
        """``options`` if this method takes every one of them, else a ValueError naming the accepted ones
        (``prefix`` '--' names them as command-line flags)."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            accepted = ", ".join(prefix + o.replace("_", "-" if prefix else "_") for o in self.options) or "none"
            given = ", ".join(prefix + k.replace("_", "-" if prefix else "_") for k in unknown)
            raise ValueError(f"method {self.name!r} does not take {given}; its options: {accepted}")
        return dict(options)

    def flag_options(self, **flags) -> dict:
        """The command-line flags given (not None) as this method's options; a flag of another
        method is an error naming the accepted ones (``--gamma`` with ``--method edict``...)."""
        return self.check_options({k: v for k, v in flags.items() if v is not None}, prefix="--")

    def invert(self, model, latent, condition=None, *, steps: int, strength: float, **kwargs):
        """The method's ``invert`` (keyword options are checked against :attr:`options`)."""
        protocol = {k: kwargs.pop(k) for k in ("guidance_scale", "extra", "scheduler_config") if k in kwargs}
        if "scheduler_config" in protocol and not self.needs_scheduler_config:
            protocol.pop("scheduler_config")
        options = self.check_options(kwargs)
        return self.implementation.invert(model, latent, condition, steps=steps, strength=strength, **protocol,
                                          **options)

    def regenerate(self, model, record, condition=None, **kwargs):
        """The method's ``regenerate`` (a record of another method is refused, naming both)."""
        if not isinstance(record, self.record_type):
            raise TypeError(f"record: method {self.name!r} regenerates a {self.record}, got {type(record).__name__}")
        return self.implementation.regenerate(model, record, condition, **kwargs)


INVERSION_METHODS: dict[str, InversionMethod] = {m.name: m for m in (
    InversionMethod("bdia", "BDIA-DDIM", "diffkit.samplers.inversion", "InversionResult", True, 1,
                    "BDIA-DDIM (Zhang et al. 2024): exact, a latent pair, 1 NFE per step", ("gamma",)),
    InversionMethod("edict", "EDICT", "diffkit.samplers.edict", "EDICTResult", True, 2,
                    "EDICT (Wallace et al. 2023): exact, two coupled latents, 2 NFE per step",
                    ("mix", "leapfrog", "state_dtype")),
    InversionMethod("ddim-inversion", "DDIM inversion", "diffkit.samplers.ddim_inversion", "DDIMInversionResult",
                    False, 1,
                    "DDIM inversion (diffusers' DDIMInverseScheduler): the inexact baseline, 1 NFE per step",
                    ("state_dtype",), needs_scheduler_config=True),
)}


def inversion_method_names() -> tuple[str, ...]:
    return tuple(INVERSION_METHODS)


def get_inversion_method(name: str, argument: str = "method") -> InversionMethod:
    """The table's entry for ``name``; an unknown name is a ValueError naming ``argument`` and the accepted ones."""
    try:
        return INVERSION_METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{argument} must be one of {', '.join(INVERSION_METHODS)}, got {name!r}") from None


def load_record(path, device=None):
    """Any method's record from a file written by its ``save`` (or by ``diffkit invert``; format
    version 1 files are BDIA records)."""
    from diffkit.samplers.inversion_base import InversionRecord  # torch: imported on use, as the implementations

    for method in INVERSION_METHODS.values():
        method.record_type  # imports the module, which registers its record type with InversionRecord
    return InversionRecord.load(path, device=device)


def method_of(record) -> InversionMethod:
    """The table's entry for a record (by its type's ``METHOD``)."""
    return get_inversion_method(getattr(type(record), "METHOD", None), "record")
