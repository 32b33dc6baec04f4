"""``BDIADDIMScheduler``: BDIA-DDIM as a drop-in diffusers scheduler (a thin adapter over
:mod:`diffkit.samplers.bdia`).

    pipe.scheduler = BDIADDIMScheduler.from_config(pipe.scheduler.config, gamma=0.94)

Same config keys as ``DDIMScheduler`` plus ``gamma``, same ``step`` signature, same cost
(one model evaluation per step). What it does:

* **γ = 0** hands every call to ``DDIMScheduler.step`` -- DDIM bit for bit (dtype, η,
  ``clip_sample``, thresholding, off-grid timesteps).
* **γ > 0**: the first step of a loop is a plain DDIM step (there is no z_{i+1} yet); every
  later step, the last one included, is the BDIA update
  z_{i-1} = γ·z_{i+1} − γ·D_{i→i+1}(z_i) + D_{i→i-1}(z_i). D_{i→i-1} targets the level
  DDIM's step targets (``t − T//N``, or ``final_alpha_cumprod`` past the end); D_{i→i+1}
  targets the level of the timestep passed to the previous ``step`` call (the level z_{i+1}
  was evaluated at). For 'leading' spacing and for 'trailing' when N divides T these are the
  grid neighbours; for 'linspace' (e.g. 999, 888, … at N = 10, T//N = 100) and 'trailing'
  with N not dividing T, ``t − T//N`` is not the next grid entry -- DDIM's own convention,
  kept so that γ = 0 stays DDIM; the recurrence is exactly invertible either way.
* **Precision**: the recurrence runs in float64 with the ᾱ table of
  :class:`diffkit.schedules.VPSchedule` (diffusers' float32 table upcast, never
  recomputed); only the model sees its own dtype. ``prev_sample`` comes back in the
  sample's dtype while the scheduler keeps a float64 shadow of it, which it uses for as long
  as the pipeline hands back exactly that tensor (checked by identity and the tensor's
  version counter -- never by comparing values, which would synchronise the GPU every step).
  If the latents are replaced or modified in between (a ``callback_on_step_end`` that edits
  latents, a dtype cast), the given sample is used instead of the shadow and an
  :class:`ExactnessWarning` is issued once per loop: the trajectory follows the change, and the
  run is no longer exactly invertible. Under ``torch.inference_mode`` the same holds:
  ``prev_sample`` is then still a normal tensor (made with inference mode switched off for the
  one cast), so its version counter also counts in-place edits made inside inference mode;
  "handed back unchanged" means the very tensor returned, not edited in place since.
* State (the float64 z_{i+1} and its level, the shadow, the step index) is reset by
  ``set_timesteps``, so consecutive pipeline calls are independent. Within one grid, every
  γ > 0 ``step`` must get the next grid timestep; the loop's first timestep (``timesteps[0]``,
  or ``timesteps[begin_index]``) restarts the loop and clears the state, anything else raises
  (the rule of :mod:`diffkit.samplers.grid_cursor`, shared with ``BDIAEDMScheduler``).
  ``set_begin_index`` is provided for img2img pipelines (diffusers 0.42's ``DDIMScheduler`` has
  none). Timesteps given as accelerator tensors are never read: views of ``timesteps`` (what
  pipelines pass) are located by storage offset, others are taken as the next grid entry.
* Refused configs: those of flow-matching schedulers (SD3, Flux: no betas, a ``shift``, flow
  sigmas or ``flow_prediction``), which ``from_config`` would otherwise fill up with default
  betas (:func:`diffkit.schedules.check_diffusion_config`).
* Pipelines: StableDiffusion(XL) and their img2img variants, diffkit's ``ClassConditionalPipeline``.
  diffusers' ``DDIMPipeline`` silently converts any scheduler to ``DDIMScheduler``.
* Refused: γ outside [0, 1] (:func:`diffkit.samplers.bdia.check_gamma`, the validator of every BDIA
  entrance; the config stores γ as a Python float); η > 0 with γ > 0 (BDIA is deterministic; the inverse has no
  noise term); zero-terminal-SNR schedules with ε-prediction when γ > 0 (x̂0 undefined at
  ᾱ_T = 0). A non-finite model output raises ``diffkit.numerics.NonFiniteOutputError`` naming the step:
  checked at once on CPU, and on accelerators every ``check_every`` steps and at the last
  grid step (a per-step check would synchronise the device every step).

:meth:`BDIADDIMScheduler.inverse_step` is the exact inverse of one step (γ below
``diffkit.samplers.bdia.GAMMA_WARN_BELOW`` issues the one ``InversionWarning``). Exact inversion of
whole images (and regeneration from the inverted latent pair) runs in
:mod:`diffkit.samplers.inversion`, which drives the model directly, because a pipeline's
``__call__`` resets scheduler state.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin  # noqa: F401
from diffusers.utils import BaseOutput

from diffkit.denoisers import to_eps_x0
from diffkit.numerics import FiniteWatch
from diffkit.samplers.bdia import (bdia_combine, bdia_inverse_step, bdia_weights, check_gamma, ddim_map,
                                   warn_inversion_gamma, x0_from_eps_)
from diffkit.samplers.grid_cursor import GridCursor
from diffkit.schedules import VPSchedule, check_diffusion_config

# SchedulerMixin is imported by name on purpose: a saved pipeline records this module as the
# scheduler's library, and diffusers' loader looks for a SchedulerMixin attribute in it.

__all__ = ["BDIADDIMScheduler", "BDIAInverseOutput", "ExactnessWarning", "SchedulerMixin"]


class ExactnessWarning(UserWarning):
    """The latents handed to ``step`` are not the ones the scheduler returned: exact invertibility is lost."""


@dataclass
class BDIAInverseOutput(BaseOutput):
    """Output of :meth:`BDIADDIMScheduler.inverse_step`.

    next_sample: z_{i+1}, the noisier latent (at ``next_timestep``), in the sample's dtype.
    pred_original_sample: x̂0 predicted at (z_i, t_i).
    """

    next_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class BDIADDIMScheduler(DDIMScheduler):
    """DDIM with bi-directional integration (BDIA-DDIM, Zhang et al., ECCV 2024).

    Args: every ``DDIMScheduler`` argument (same names and defaults), plus
        gamma (`float`, defaults to 0.5): weight γ ∈ [0, 1] of the fresh backward estimate of
            the last time slot. 0 is DDIM exactly. The authors sample with 0.5 at 10 steps and
            1.0 at 40; exact inversion (:mod:`diffkit.samplers.inversion`) wants 0.92–1.0.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    #: on accelerators the deferred NaN/inf check runs every this many steps (and at the last grid step)
    check_every = 8

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        gamma: float = 0.5,
    ):
        gamma = check_gamma(gamma)
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing, rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.register_to_config(gamma=gamma)  # one Python float, whatever number type was passed
        if gamma > 0 and prediction_type == "epsilon" and bool(self.alphas_cumprod[-1] == 0):
            raise ValueError(
                "BDIADDIMScheduler: a zero-terminal-SNR schedule (rescale_betas_zero_snr=True, "
                "alphas_cumprod[-1] == 0) with prediction_type='epsilon' cannot be used with gamma > 0: "
                "x̂0 = (z - √(1-ᾱ)ε)/√ᾱ is undefined at ᾱ = 0. Use a v_prediction model, a schedule without "
                "rescale_betas_zero_snr, or gamma=0 (plain DDIM)."
            )
        # float64 levels: diffusers' float32 table upcast (identical to self.alphas_cumprod).
        self._levels = VPSchedule.from_config(dict(self.config))
        self._ac = self._levels.alphas_cumprod.tolist() + [float(self._levels.final_alpha_cumprod)]
        self._device_levels: dict = {}  # device -> (√ᾱ, √(1-ᾱ)) per level as 0-d float64 tensors, uploaded once
        self._work: Optional[tuple] = None  # float64 (ε, x̂0) buffers reused by every step of a shape/device
        self._weights: dict = {}  # (t_{i+1}, t_{i-1}) -> bdia_weights of the step between (γ is fixed)
        self._eps_prediction = prediction_type == "epsilon"  # the config is frozen: read once, not every step
        self._begin_index: Optional[int] = None
        self._grid = self.timesteps.clone()
        self._set_cursor()
        self._reset_state()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """``ConfigMixin.from_config``, refusing configs that are not ε/v/x̂0 diffusion schedules
        (flow matching: SD3, Flux, ...), which diffusers would fill up with default betas."""
        if config is not None:
            check_diffusion_config(config, cls.__name__, require_betas=False)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        """Clears what one loop carries to its next step (not the loop position)."""
        self._z_next: Optional[torch.Tensor] = None  # z_{i+1} in float64
        self._t_next: Optional[int] = None  # its level (the timestep passed with it)
        self._handed: Optional[torch.Tensor] = None  # the tensor returned by the last step
        self._handed_version = -1
        self._shadow: Optional[torch.Tensor] = None  # float64 value of that tensor
        self._warned = False
        self._watch = FiniteWatch("model output")

    @property
    def gamma(self) -> float:
        return float(self.config.gamma)

    @property
    def step_index(self) -> Optional[int]:
        """Index into ``timesteps`` of the next ``step`` call (None before the first one)."""
        return self._cursor.next

    @property
    def begin_index(self) -> Optional[int]:
        """The first index into ``timesteps``, set by img2img pipelines via :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the step counter at ``begin_index`` (pipelines call this after slicing ``timesteps``)."""
        self._begin_index = int(begin_index)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        """DDIM's grid; also clears all BDIA state (previous latent, shadow, step and begin index)."""
        super().set_timesteps(num_inference_steps)
        self._grid = self.timesteps  # CPU copy: timesteps are read here, never from the device
        self.timesteps = self.timesteps.to(device)
        self._set_cursor()
        self._begin_index = None
        self._reset_state()

    def _set_cursor(self) -> None:
        """A cursor over the current grid, and where ``timesteps``' entries live in memory (for
        :meth:`_advance`'s shortcut)."""
        ts = self.timesteps
        self._cursor = GridCursor(self._grid, ts)
        self._ts_memory = (ts, ts.data_ptr(), ts.stride(0) * ts.element_size()) if ts.ndim == 1 else None

    def _is_next_view(self, timestep) -> bool:
        """Whether ``timestep`` is the one-element view of ``timesteps`` at the cursor's next
        index (what ``for t in scheduler.timesteps`` passes). For such a view
        ``GridCursor.locate`` answers (next index, no restart) -- its value is the next grid
        value, and a loop never restarts at its next index -- so this shortcut gives the same
        answer without the storage look-ups; anything else goes through ``locate``."""
        k, mem = self._cursor.next, self._ts_memory
        if k is None or mem is None or k >= len(self._cursor.values) or not isinstance(timestep, torch.Tensor):
            return False
        ts, base, stride = mem
        return (timestep.data_ptr() == base + k * stride and timestep.dtype == ts.dtype and timestep.numel() == 1
                and timestep.device == ts.device)

    def _advance(self, timestep) -> tuple[int, int]:
        """(grid index, integer timestep) of this γ > 0 call, by the rule of
        :mod:`diffkit.samplers.grid_cursor`: the next grid timestep, or the loop's first one, which
        restarts the loop (clearing z_{i+1} and the shadow); anything else raises."""
        if self._is_next_view(timestep):
            k = self._cursor.next
            self._cursor.advance(k, False)
            return k, int(self._cursor.values[k])
        k, starts = self._cursor.locate(timestep, self._begin_index)
        if starts:
            self._reset_state()
        self._cursor.advance(k, starts)
        return k, int(self._cursor.values[k])

    def _count(self, timestep) -> None:
        """γ = 0 (DDIM, which reads the timestep itself, on or off the grid): only keeps ``step_index``."""
        c = self._cursor
        try:
            k, starts = c.locate(timestep, self._begin_index)
        except ValueError:
            k, starts = (0, True) if c.next is None else (c.next, False)
        c.advance(k, starts)

    def _alpha_cumprod(self, t: int) -> float:
        """ᾱ_t as a Python float (a kernel argument: no device copy); t < 0 is final_alpha_cumprod."""
        if t >= len(self._ac) - 1:  # the table holds the num_train_timesteps levels, then the final one
            raise ValueError(f"timestep {t} out of range [0, {self.config.num_train_timesteps - 1}]")
        return self._ac[-1] if t < 0 else self._ac[t]

    def _level_tensors(self, t: int, device: torch.device):
        """(√ᾱ_t, √(1-ᾱ_t)) as 0-dim float64 tensors already on ``device`` (views into tables
        uploaded once per device, split once into per-level views), for the ε/x̂0 conversion
        without per-step host-to-device copies. (Tensors, not Python floats: CUDA divides by a
        Python-float divisor as a multiplication by its reciprocal, which rounds differently.)"""
        levels = self._device_levels.get(device)
        if levels is None:
            ac = torch.tensor(self._ac, dtype=torch.float64)
            levels = self._device_levels[device] = (ac.sqrt().to(device).unbind(), (1 - ac).sqrt().to(device).unbind())
        a, s = levels
        i = len(self._ac) - 1 if t < 0 else t
        return a[i], s[i]

    def _target(self, t: int) -> int:
        """DDIM's target level from t (negative: final_alpha_cumprod)."""
        return t - self.config.num_train_timesteps // self.num_inference_steps

    # ------------------------------------------------------------------ checks
    def _check_finite(self, model_output: torch.Tensor, k: int, t: int) -> None:
        """Raises ``NonFiniteOutputError`` naming step ``k`` if the model output has NaN/inf: at
        once on CPU, deferred on accelerators (``FiniteWatch``)."""
        if model_output.is_cpu:
            # one reduction and no extra tensors: a sum is finite when every element is; a
            # non-finite sum (NaN/inf, or finite values that overflow) is confirmed element-wise
            x = model_output.detach() if model_output.requires_grad else model_output
            if not math.isfinite(x.sum()) and not bool(torch.isfinite(x).all()):
                raise self._watch.error(k, t)
            return
        last = k >= len(self._grid) - 1
        self._watch.update(model_output, k, t, flush=last or (k + 1) % self.check_every == 0)

    def _state(self, sample: torch.Tensor) -> torch.Tensor:
        """z_i in float64: the shadow if the pipeline handed back our tensor untouched."""
        if self._z_next is not None:
            if sample is self._handed and sample._version == self._handed_version:
                return self._shadow
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "BDIADDIMScheduler: the latents passed to step() are not the tensor the previous step returned "
                    "(replaced or modified in place, e.g. by callback_on_step_end, or cast). Continuing from the "
                    "given latents instead of the scheduler's float64 copy of the returned ones: the trajectory "
                    "follows the change (and the latents' dtype), and this run is no longer exactly invertible.",
                    ExactnessWarning, stacklevel=3)
        z = sample.to(torch.float64)
        return z.clone() if z is sample else z

    def _workspace(self, z: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two float64 buffers shaped like z (ε and x̂0 of one step), allocated once per shape and
        device: a step writes into them instead of allocating (and page-faulting) new temporaries.
        Their contents live only until the next step; nothing handed out aliases them."""
        w = self._work
        if w is None or w[0].shape != z.shape or w[0].device != device:
            w = self._work = (torch.empty_like(z, dtype=torch.float64), torch.empty_like(z, dtype=torch.float64))
        return w

    @staticmethod
    def _tracks_grad(*tensors) -> bool:
        """Autograd is recording through this step: the reused buffers (workspace, the state's
        buffer) would be overwritten while the graph still needs them, so the step allocates."""
        if not torch.is_grad_enabled():
            return False
        for x in tensors:
            if x is not None and x.requires_grad:
                return True
        return False

    def _eps_x0(self, model_output: torch.Tensor, t: int, z: torch.Tensor, use_clipped_model_output: bool,
                tracks_grad: bool = True):
        """(ε, x̂0) in float64 at (z_i, t_i), post-processed exactly as DDIM does. ε-prediction
        without autograd computes x̂0 = (z - √(1-ᾱ)·ε)/√ᾱ in the workspace
        (:func:`diffkit.samplers.bdia.x0_from_eps_`: the kernels and roundings of
        :func:`diffkit.denoisers.to_eps_x0`, without its temporaries); a float64 output is used as
        ε as it is (only read), any other dtype is cast into the workspace once."""
        self._alpha_cumprod(t)  # range check
        device = z.device
        a, s = self._level_tensors(t, device)
        in_place = self._eps_prediction and not tracks_grad and model_output.shape == z.shape
        if in_place:
            eps, x0 = self._workspace(z, device)
            if model_output.dtype == torch.float64 and model_output.device == device:
                eps = model_output
            else:
                eps.copy_(model_output)
            x0_from_eps_(x0, z, eps, a, s)
        else:
            eps, x0 = to_eps_x0(model_output.to(torch.float64), z, a, s, self.config.prediction_type)
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp_(-r, r) if in_place else x0.clamp(-r, r)
        if use_clipped_model_output and (self.config.thresholding or self.config.clip_sample):
            eps = to_eps_x0(x0, z, a, s, "sample")[0]  # ε consistent with the clipped x̂0, as DDIM
        return eps, x0

    @staticmethod
    def _hand_out(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` in ``dtype`` as a new tensor (a copy even when ``x`` already has that dtype: the
        caller may keep and edit what it gets, and ``x`` is the scheduler's own state or buffer)."""
        out = x.to(dtype)
        return x.clone() if out is x else out

    # ------------------------------------------------------------------ step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One sampling step z_i → z_{i-1} (``DDIMScheduler.step``'s signature and outputs).

        γ = 0: ``DDIMScheduler.step`` itself. γ > 0: a DDIM step (first call after
        ``set_timesteps``) or the BDIA update, computed in float64 and returned in the
        sample's dtype. ``eta`` must be 0 when γ > 0; ``generator``/``variance_noise`` are
        then unused.
        """
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")
        gamma = self.config.gamma
        if gamma == 0:
            self._count(timestep)
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, return_dict)
        if eta != 0:
            raise ValueError(
                f"eta must be 0 with BDIADDIMScheduler(gamma={gamma}): BDIA is deterministic and its "
                "exact inverse has no noise term; use gamma=0 (plain DDIM) for stochastic sampling")
        k, t = self._advance(timestep)

        self._check_finite(model_output, k, t)  # first: the cast below then reads the output from cache
        z = self._state(sample)
        tracks_grad = self._tracks_grad(model_output, z, self._z_next)
        eps, x0 = self._eps_x0(model_output, t, z, use_clipped_model_output, tracks_grad)
        x0_out = self._hand_out(x0, sample.dtype)  # float64: never the workspace (or the model's output)
        t_prev = self._target(t)
        ac_prev = self._alpha_cumprod(t_prev)
        if self._z_next is None:  # first step: no z_{i+1} yet -> plain DDIM
            z_prev = ddim_map(x0, eps, ac_prev)
        else:
            # bdia_step's update with its weights computed once per pair of levels, written into
            # z_{i+1}'s buffer (ours, no longer needed): no new float64 state per step
            reuse = not (tracks_grad or self._tracks_grad(eps, x0))
            key = (self._t_next, t_prev)  # the two levels the weights depend on
            w = self._weights.get(key)
            if w is None:
                w = self._weights[key] = bdia_weights(self._alpha_cumprod(self._t_next), ac_prev, gamma)
            z_prev = bdia_combine(self._z_next, x0, eps, w, out=self._z_next if reuse else None)
        self._z_next, self._t_next = z, t

        # the returned latents are a normal tensor even under torch.inference_mode, so that its
        # version counter (which inference tensors lack) still tells whether it comes back unchanged
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                out = self._hand_out(z_prev, sample.dtype)
        else:
            out = self._hand_out(z_prev, sample.dtype)
        self._handed, self._handed_version, self._shadow = out, out._version, z_prev
        if not return_dict:
            return (out, x0_out)
        return DDIMSchedulerOutput(prev_sample=out, pred_original_sample=x0_out)

    def inverse_step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        prev_sample: torch.Tensor,
        next_timestep: Optional[int] = None,
        use_clipped_model_output: bool = False,
        return_dict: bool = True,
    ) -> BDIAInverseOutput | tuple:
        """Exact inverse of one BDIA step: (z_{i-1}, z_i) → z_{i+1}. Stateless.

        Args:
            model_output: the model's output at (``sample``, ``timestep``) -- the evaluation the
                forward step makes at z_i (not the "target label" of DDIM inversion).
            timestep: t_i, the level of ``sample``.
            sample: z_i.
            prev_sample: z_{i-1}, the less noisy latent that ``step`` produced from z_i.
            next_timestep: t_{i+1}, the noisier level to recover; defaults to the grid entry
                before ``timestep`` in ``timesteps`` (what a pipeline passes at the previous step).

        Computed in float64; returned in ``sample``'s dtype (pass float64 latents for exact
        round trips). Requires γ > 0; γ < ``GAMMA_WARN_BELOW`` (0.9) warns (``InversionWarning``).
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before inverse_step")
        gamma = check_gamma(self.config.gamma, for_inversion=True)
        warn_inversion_gamma(gamma, stacklevel=2)
        t = int(timestep.detach().cpu()) if isinstance(timestep, torch.Tensor) else int(timestep)
        if next_timestep is None:
            grid = self._grid.tolist()
            if t not in grid or grid.index(t) == 0:
                raise ValueError(f"timestep {t} has no noisier neighbour in timesteps {grid[:3]}…; pass next_timestep")
            next_timestep = grid[grid.index(t) - 1]
        t_next = int(next_timestep.detach().cpu()) if isinstance(next_timestep, torch.Tensor) else int(next_timestep)
        z = sample.to(torch.float64)
        # not in the step's workspace: what inverse_step returns must survive later steps
        eps, x0 = self._eps_x0(model_output, t, z, use_clipped_model_output, tracks_grad=True)
        z_next = bdia_inverse_step(prev_sample.to(torch.float64), z, eps, self._alpha_cumprod(t_next),
                                   self._alpha_cumprod(t), self._alpha_cumprod(self._target(t)), gamma, x0=x0)
        out, x0_out = z_next.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (out, x0_out)
        return BDIAInverseOutput(next_sample=out, pred_original_sample=x0_out)
