"""Exact inversion and regeneration with BDIA-DDIM, driving the model directly.

``invert`` maps a clean latent to the latent **pair** (z_K, z_{K-1}) at the top of the
strength window; ``regenerate`` runs the BDIA recurrence from that pair back down to the clean
level. With the same model, condition and guidance scale, regeneration reproduces the clean
latent up to float64 round-off (the state is float64 whatever the model's dtype; only the
model input is cast, after snapping it to a 2^-16 grid for every model dtype, see
:func:`model_input_quantum`). Editing regenerates with a different condition -- another
prompt, label or guidance scale: the condition passed to ``regenerate`` is the one used.

Why not through a pipeline: a pipeline's ``__call__`` calls ``set_timesteps``, which resets
the scheduler's state, and starts with a DDIM step; regeneration must start from both
latents. Both loops call the same :class:`diffkit.denoisers.EpsModel` (so the same guidance
batch layout, ``cat([uncond, cond])``, and the same casts) and the same pure functions of
:mod:`diffkit.samplers.bdia`.

Grid (the mirror image of sampling): the model's DDIM grid t_0 > … > t_{N-1} for ``steps``
(its scheduler config's ``timestep_spacing``/``steps_offset``), then the clean level F with
ᾱ_F = ``final_alpha_cumprod`` (ᾱ_0 when ``set_alpha_to_one=False``, as in SD). ``strength``
keeps the last n = int(steps·strength) grid points, as img2img pipelines do; the pair lives at
the top two of them. Each latent's neighbour levels are its neighbours in this list (for
'linspace' grids this is the next grid entry, not DDIM's ``t − T//N``; for 'leading', and
'trailing' when steps divides T, they coincide with :class:`BDIADDIMScheduler`).

Inversion, as in the official editing code: first **one DDIM-inversion step** off the clean
latent -- ε evaluated at the clean latent with model label 0 (the clean level's own label when
``set_alpha_to_one=False``; the lowest trained label otherwise), which lands on t_{N-1}; then
exact inverse steps, ε evaluated at (z_i, t_i) -- the call regeneration repeats. NFE: n for
inversion, n-1 for regeneration.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from diffkit.conditioning import Guidance
from diffkit.denoisers import EpsModel, to_eps_x0
from diffkit.numerics import FiniteWatch
from diffkit.samplers.bdia import (InversionWarning, bdia_inverse_step, bdia_step, check_gamma, ddim_map,
                                   warn_inversion_gamma)
from diffkit.samplers.inversion_base import (FORMAT_VERSION, InversionRecord, check_eps_model, dtype_name,
                                             inversion_window, model_input_quantum, relative_error,
                                             resolve_guidance, snap_to_grid, window_levels)

__all__ = ["InversionResult", "InversionWarning", "invert", "regenerate", "inversion_window", "relative_error",
           "model_input_quantum", "snap_to_grid", "FORMAT_VERSION", "OPTIONS"]

#: the options :func:`invert` takes beyond the protocol's (the method table declares them)
OPTIONS = ("gamma",)
_CHECK_EVERY = 8


def _predict(model: EpsModel, z: torch.Tensor, t: int, guidance: Guidance, quantum: Optional[float]):
    """(ε, x̂0) in float64 at (z, t): the model sees z snapped to ``quantum`` (and cast to its dtype);
    the conversion to (ε, x̂0) uses the float64 z itself."""
    zin = snap_to_grid(z, quantum)
    t = torch.tensor(t, dtype=torch.long)
    alpha, std = model.levels(t, z)
    return to_eps_x0(model.raw(zin, t, guidance), z, alpha, std, model.prediction_type)


# ---------------------------------------------------------------------- result record
@dataclass
class InversionResult(InversionRecord):
    """BDIA's record: the inverted latent pair, where it lives on the grid, and the settings that made it.

    z_top: z_K at ``timesteps[0]`` (float64). z_below: z_{K-1} at ``timesteps[1]``.
    timesteps: the descending window (see :func:`inversion_window`); regeneration walks it.
    settings: steps, strength, gamma, guidance_scale, schedule fields, NFE, and ``extra``
    (free-form, JSON-serialisable: e.g. the class labels or prompt, the model folder).
    clean: the latent that was inverted (reference for reconstruction error), optional.
    """

    METHOD = "bdia"
    LATENTS = ("z_top", "z_below")

    z_top: torch.Tensor
    z_below: torch.Tensor
    timesteps: list
    settings: dict = field(default_factory=dict)
    clean: Optional[torch.Tensor] = None  # the inverted input (float64), kept as the reconstruction reference

    @property
    def regeneration_nfe(self) -> int:
        return len(self.timesteps) - 1


# ---------------------------------------------------------------------- loops
@torch.no_grad()
def invert(model: EpsModel, clean_latent: torch.Tensor, condition=None, *, steps: int = 50, strength: float = 1.0,
           guidance_scale: Optional[float] = None, extra: Optional[dict] = None,
           gamma: float = 0.94) -> InversionResult:
    """Invert ``clean_latent`` exactly: returns the pair (z_K, z_{K-1}) that :func:`regenerate` maps back.

    Args:
        model: an :class:`EpsModel` (any diffusers UNet + its scheduler config; ε, v or x̂0 prediction).
        clean_latent: (B, C, H, W) latents at the clean level (image space for pixel models,
            VAE latents × scaling factor for latent models).
        condition: a :class:`Guidance` (with ``uncond`` for classifier-free guidance), a
            :class:`Condition`, or None (unconditional).
        steps: grid size N; strength: fraction of it inverted (img2img's ``strength``).
        guidance_scale: overrides ``condition.scale`` when given.
        gamma: γ in (0, 1]; below 0.9 a warning states the expected growth.
        extra: JSON-serialisable data stored in ``settings["extra"]``.
    """
    model = check_eps_model(model)
    gamma = check_gamma(gamma, for_inversion=True)
    guidance = resolve_guidance(condition, guidance_scale)
    schedule = model.schedule
    window = inversion_window(schedule, steps, strength)
    n = len(window)
    warn_inversion_gamma(gamma, n - 1, stacklevel=2)
    if not isinstance(clean_latent, torch.Tensor) or clean_latent.ndim < 2:
        raise ValueError("clean_latent must be a batched tensor (B, C, H, W)")
    ac = window_levels(schedule, window)  # ac[k] for window[k], ac[n] for the clean level
    watch = FiniteWatch("model output during inversion")
    on_cpu = model.device.type == "cpu"
    quantum = model_input_quantum(model)

    z_lower = clean_latent.detach().to(device=model.device, dtype=torch.float64)
    # step 1: DDIM inversion off the clean latent, ε(z_clean, label 0), onto window[-1]
    eps, x0 = _predict(model, z_lower, 0, guidance, quantum)
    watch.update(eps, 0, 0, flush=on_cpu)
    z = ddim_map(x0, eps, ac[n - 1])
    # exact inverse steps: from (z_{i-1}, z_i) with ε(z_i, t_i) recover z_{i+1}
    for step, k in enumerate(range(n - 1, 0, -1), start=1):
        eps, x0 = _predict(model, z, window[k], guidance, quantum)
        watch.update(eps, step, window[k], flush=on_cpu or step % _CHECK_EVERY == 0)
        z, z_lower = bdia_inverse_step(z_lower, z, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), z
    watch.flush()

    settings = {
        "method": "bdia-ddim", "steps": steps, "strength": float(strength), "gamma": gamma,
        "guidance_scale": float(guidance.scale), "conditioned": guidance.cond.unet_kwargs() != {},
        "first_step_label": 0, "nfe": n,
        "num_train_timesteps": schedule.num_train_timesteps, "timestep_spacing": schedule.timestep_spacing,
        "steps_offset": schedule.steps_offset, "prediction_type": model.prediction_type,
        "final_alpha_cumprod": float(schedule.final_alpha_cumprod), "alphas_cumprod_window": ac,
        "model_dtype": dtype_name(model.dtype), "model_input_quantum": quantum,
        "extra": dict(extra or {}),
    }
    return InversionResult(z, z_lower, window, settings, clean_latent.detach().to(torch.float64).clone())


@torch.no_grad()
def regenerate(model: EpsModel, result: InversionResult, condition=None, *, guidance_scale: Optional[float] = None,
               steps: Optional[int] = None, timesteps: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Run BDIA-DDIM from the inverted pair down to the clean level; returns float64 latents.

    Starts from both latents (no DDIM first step). With the inversion's model, condition and
    guidance scale this reproduces the inverted latent to float64 round-off; a different
    condition -- another prompt or label, or another guidance scale -- edits it. The scale is
    ``guidance_scale`` when given, else the one ``condition`` carries (a :class:`Guidance`);
    the inversion's stored scale is only the default for a condition that carries none (a
    :class:`Condition` or None). ``steps``/``timesteps``, if given, must match the inversion's
    grid (a mismatch raises instead of silently diverging). Files written before float64 models
    were snapped (stored ``model_input_quantum`` None) are regenerated without the snap, as inverted.
    """
    model = check_eps_model(model)
    if not isinstance(result, InversionResult):
        raise TypeError("result: expected an InversionResult (from invert or InversionResult.load), "
                        f"got {type(result).__name__}")
    s = result.settings
    result.check_steps(steps)
    window = inversion_window(model.schedule, s["steps"], s["strength"])
    if timesteps is not None and [int(t) for t in timesteps] != [int(t) for t in result.timesteps]:
        raise ValueError(f"timesteps {list(timesteps)[:4]}… differ from the inversion's grid {result.timesteps[:4]}…")
    ac = window_levels(model.schedule, window)
    if window != [int(t) for t in result.timesteps] or ac != s["alphas_cumprod_window"]:
        raise ValueError(
            f"this model's scheduler config gives the grid {window[:4]}… (spacing {model.schedule.timestep_spacing!r}, "
            f"offset {model.schedule.steps_offset}) with different levels than the inversion's {result.timesteps[:4]}… "
            f"(spacing {s['timestep_spacing']!r}, offset {s['steps_offset']}); regenerate with the scheduler config "
            "used for inversion")
    if condition is None and s.get("conditioned"):
        raise ValueError("this inversion was conditioned; pass condition= (the same one to reconstruct, "
                         "another to edit)")
    guidance = resolve_guidance(condition, guidance_scale, default_scale=s["guidance_scale"])
    gamma = float(s["gamma"])
    n = len(window)
    watch = FiniteWatch("model output during regeneration")
    on_cpu = model.device.type == "cpu"

    quantum = s.get("model_input_quantum")
    if dtype_name(model.dtype) != s.get("model_dtype"):
        warnings.warn(f"the model's dtype ({model.dtype}) differs from the inversion's ({s.get('model_dtype')}): "
                      "regeneration will be close to, not exactly, the inverted latent", InversionWarning, stacklevel=2)
    z_upper = result.z_top.to(device=model.device, dtype=torch.float64)
    z = result.z_below.to(device=model.device, dtype=torch.float64)
    for k in range(1, n):
        eps, x0 = _predict(model, z, window[k], guidance, quantum)
        watch.update(eps, k - 1, window[k], flush=on_cpu or k % _CHECK_EVERY == 0)
        z, z_upper = bdia_step(z_upper, z, eps, ac[k - 1], ac[k], ac[k + 1], gamma, x0=x0), z
    watch.flush()
    return z
