"""What the three inversion methods share: the record base class and its file format, the grid
window, the guidance a loop evaluates, the snapped model input, and the round-trip error.

Every method (BDIA in :mod:`diffkit.samplers.inversion`, EDICT in :mod:`diffkit.samplers.edict`,
DDIM inversion in :mod:`diffkit.samplers.ddim_inversion`) exposes

    invert(model, latent, condition=None, *, steps, strength, guidance_scale=None, extra=None, **options)
        -> a record (a subclass of :class:`InversionRecord`)
    regenerate(model, record, condition=None, *, guidance_scale=None) -> float latents at the clean level

and :mod:`diffkit.samplers.inversion_methods` names them in one table.

File format (one ``.safetensors`` file): the record's latents (float tensors, named by the
record type's ``LATENTS``) and ``clean`` when kept; the header key ``diffkit_inversion`` holds
JSON ``{"format_version", "method", "timesteps", "settings"}``. Version 1 (written by diffkit
before the three methods shared this base) had no ``method`` key and only BDIA records; it is
read as a BDIA record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import torch
from safetensors import safe_open

from diffkit.atomic import save_safetensors
from diffkit.conditioning import Condition, Guidance
from diffkit.denoisers import EpsModel

__all__ = ["InversionRecord", "FORMAT_VERSION", "READABLE_VERSIONS", "relative_error", "inversion_window",
           "window_levels", "resolve_guidance", "check_eps_model", "model_input_quantum", "snap_to_grid"]

#: the version :meth:`InversionRecord.save` writes; :meth:`InversionRecord.load` reads these
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER_KEY = "diffkit_inversion"


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ over the whole batch, in float64."""
    x = x.detach().to(torch.float64)
    r = reference.detach().to(device=x.device, dtype=torch.float64)
    return float((x - r).norm() / r.norm().clamp_min(1e-300))


# ---------------------------------------------------------------------- grid
def inversion_window(schedule, steps: int, strength: float = 1.0) -> list[int]:
    """The descending grid points the pair and the recurrence use: the last int(steps·strength)
    entries of the model's DDIM grid (at least 2)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}") from None
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1] (fraction of the grid to invert), got {strength!r}")
    grid = [int(t) for t in schedule.timesteps(steps)]
    n = min(int(steps * strength), steps)
    if n < 2:
        raise ValueError(f"strength={strength} keeps {n} of {steps} grid points; the latent pair needs at least 2 "
                         f"(strength >= {2 / steps:.3g} at {steps} steps)")
    return grid[steps - n:]


def window_levels(schedule, window: Sequence[int]) -> list[float]:
    """ᾱ of each window point, then of the clean level (float64 values as Python floats)."""
    return [float(schedule.alpha_cumprod(t)) for t in window] + [float(schedule.final_alpha_cumprod)]


# ---------------------------------------------------------------------- model and condition
def resolve_guidance(condition, guidance_scale, default_scale: Optional[float] = None) -> Guidance:
    """The guidance a loop evaluates. Its scale: ``guidance_scale`` when given, else the one the
    condition carries (a :class:`Guidance`), else ``default_scale`` (regeneration passes the
    inversion's stored scale) for a condition that carries none (a :class:`Condition` or None)."""
    if condition is None:
        g = Guidance()
    elif isinstance(condition, Guidance):
        g = condition
    elif isinstance(condition, Condition):
        g = Guidance(cond=condition)
    else:
        raise TypeError(f"condition: expected a diffkit Guidance, Condition or None, got {type(condition).__name__}")
    if guidance_scale is None and not isinstance(condition, Guidance):
        guidance_scale = default_scale
    if guidance_scale is not None:
        if float(guidance_scale) != 1.0 and g.uncond is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs an unconditional branch: pass a Guidance with "
                             "uncond (diffkit.conditioning.class_guidance / prompt_guidance)")
        g = g.with_scale(guidance_scale)
    return g


def check_eps_model(model) -> EpsModel:
    if not isinstance(model, EpsModel):
        raise TypeError("model: expected a diffkit EpsModel (EpsModel(unet, scheduler_config)), "
                        f"got {type(model).__name__}")
    return model


def model_input_quantum(model: EpsModel) -> float:
    """The grid the model input is snapped to: 2^-16, for every model dtype (float64 included).

    Why: regeneration revisits each z_i with a float64 value that differs from the inversion's by
    round-off (~1e-14), and the difference must not reach the model.
    * A float32/bfloat16 network is not continuous at that scale: when the difference changes the
      cast input (always possible for elements near 0, where float32 is finer than 1e-14 -- e.g.
      data pixels that are exactly 0), its output changes by its own rounding noise (~1e-7), and
      exactness is lost (measured on the digits teacher: 1.5e-8 instead of 5e-15).
    * A float64 network sees the difference itself: its output moves by ∂ε/∂z times it (large
      for guided models), at every step, and the exact inverse's 1/γ carries it on (measured on
      the tiny SD rig, guidance 3, 50 steps: 4.8e-11 instead of 6.1e-13 with a float32 model).
    Snapping the input to a fixed grid first makes ε(z) a function of z that the two directions
    evaluate identically unless an element sits within ~1e-14 of a grid midpoint (probability
    ~1e-9 per element and step); then only the recurrence's own round-off remains. A finer grid
    is not safe: the round-off then reaches midpoints (measured with 2^-30 on the same rig:
    EDICT with a float64 model 2.0e-8). The snap (<= 7.6e-6) is far below the model dtype's own
    input rounding for |z| >~ 0.002 (bfloat16) and immaterial for sampling.
    """
    return 2.0 ** -16


def snap_to_grid(z: torch.Tensor, quantum: Optional[float]) -> torch.Tensor:
    """z rounded to the nearest multiple of ``quantum`` (exact: it is a power of 2); None: z itself."""
    return z if quantum is None else torch.round(z / quantum) * quantum


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------- the record
class InversionRecord:
    """Base of the three methods' records: the inverted latents, the descending grid window
    regeneration walks (``timesteps``), the settings that made them (JSON-serialisable; ``extra``
    is free-form: labels, prompt, model folder), and the inverted input ``clean`` (optional, the
    reconstruction reference).

    A subclass is a dataclass whose first fields are its latents, named in ``LATENTS``, followed
    by ``timesteps``, ``settings``, ``clean``; it sets ``METHOD`` (its name in
    :data:`diffkit.samplers.inversion_methods.INVERSION_METHODS`) and ``regeneration_nfe``.
    """

    METHOD: ClassVar[str] = ""
    LATENTS: ClassVar[tuple[str, ...]] = ()
    _TYPES: ClassVar[dict[str, type]] = {}

    timesteps: list
    settings: dict
    clean: Optional[torch.Tensor]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.METHOD:
            InversionRecord._TYPES[cls.METHOD] = cls

    @property
    def latents(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.LATENTS)

    @property
    def batch_size(self) -> int:
        return int(self.latents[0].shape[0])

    @property
    def regeneration_nfe(self) -> int:
        """Model evaluations :func:`regenerate` spends on this record."""
        raise NotImplementedError

    def check_steps(self, steps: Optional[int]) -> None:
        """Refuse a step count other than the inversion's (regeneration walks its grid)."""
        if steps is not None and int(steps) != self.settings["steps"]:
            raise ValueError(f"steps={steps} differs from the inversion's {self.settings['steps']}: regeneration must "
                             "walk the grid the latents were inverted on")

    # ------------------------------------------------------------------ file
    def save(self, path) -> Path:
        """One ``.safetensors`` file: the latents, ``clean`` when kept, and the method, grid and
        settings as JSON in its header (format version :data:`FORMAT_VERSION`). Written
        atomically (temporary file + rename), with the umask's permissions."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "method": self.METHOD,
                "timesteps": [int(t) for t in self.timesteps], "settings": self.settings}
        tensors = dict(zip(self.LATENTS, self.latents))
        if self.clean is not None:
            tensors["clean"] = self.clean
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return save_safetensors(tensors, path, metadata={_HEADER_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path, device=None) -> "InversionRecord":
        """Read a file written by :meth:`save` (any readable version). On a subclass the file must
        hold that method's record; on this base class any method whose module is imported
        (:func:`diffkit.samplers.inversion_methods.load_record` imports them all)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inversion file not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = (f.metadata() or {}).get(_HEADER_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        if meta is None:
            raise ValueError(f"{path} is not a diffkit inversion file (written by diffkit invert / a record's save)")
        meta = json.loads(meta)
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: inversion format version {version}, this diffkit reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        method = meta.get("method", "bdia") if version >= 2 else "bdia"  # version 1: BDIA records only
        if cls.METHOD and method != cls.METHOD:
            raise ValueError(f"{path} holds a {method!r} inversion, not {cls.METHOD!r}: load it with "
                             "diffkit.samplers.inversion_methods.load_record")
        klass = InversionRecord._TYPES.get(method)
        if klass is None:
            raise ValueError(f"{path}: unknown inversion method {method!r}; this diffkit reads "
                             f"{', '.join(sorted(InversionRecord._TYPES))}")
        if not set(klass.LATENTS) <= set(tensors):
            raise ValueError(f"{path} is not a diffkit {method} inversion file: it lacks "
                             f"{sorted(set(klass.LATENTS) - set(tensors))}")
        clean = tensors.get("clean")
        return klass(*(tensors[k].to(device) for k in klass.LATENTS), list(meta["timesteps"]), meta["settings"],
                     None if clean is None else clean.to(device))
