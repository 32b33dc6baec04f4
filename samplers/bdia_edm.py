"""BDIAEDMScheduler: BDIA on EDM-style Euler/Heun sampling as a diffusers scheduler.

A thin adapter: the pipeline's state is x̃ at the EDM noise level σ; each ``step`` forms the
denoiser output D(x̃, σ) from the raw model output (``diffkit.denoisers.vp_denoised``, or
``diffkit.samplers.edm.edm_denoised`` in EDM mode), then applies the Euler/Heun increments of
``diffkit.samplers.edm`` and BDIA's update (B) of ``diffkit.samplers.bdia`` -- the functions
``sample_bdia_euler`` / ``sample_bdia_heun`` use -- keeping the previous state x_{i+1}. The σ
grids are ``diffkit.samplers.edm.sigma_grid``.

Two modes, chosen by the config:

* **VP mode** (no ``sigma_data``; ε-/v-/sample-prediction models such as SD and the digits
  teacher), following ``EulerDiscreteScheduler``: σ = sigma_ve = √((1-ᾱ)/ᾱ), ``timesteps``
  are the model's own continuous t(σ) (``VPSchedule.sigma_to_t``, the same map as
  ``diffkit.denoisers.Denoiser``; float32 tensors -- a Python float would be truncated by
  ``UNet2DModel``), ``scale_model_input`` divides by √(σ²+1), ``init_noise_sigma`` is
  √(σ_0²+1) (the VP prior z_T ~ N(0, I) in x̃ = z/√ᾱ, as DDIM starts). σ grids:
  ``"karras"`` on the trained range (default), ``"exponential"``, or ``"discrete"`` (σ at
  the DDIM timesteps of ``timestep_spacing``/``steps_offset``, final level
  ``final_alpha_cumprod`` -- with Euler and ``gamma_mode="vp"`` this is BDIA-DDIM).
* **EDM mode** (``sigma_data`` set, e.g. ``from_config`` of an ``EDMEulerScheduler``
  config), following ``EDMEulerScheduler``: c_in = 1/√(σ²+σ_d²), ``timesteps`` = c_noise =
  ¼ ln σ, D = c_skip·x + c_out·F. ``init_noise_sigma`` is σ_0 (EDM's own sampler; diffusers'
  EDM-Euler uses √(σ_max²+1)).

``solver="heun"`` needs two model calls per step and interleaves ``timesteps`` as
``HeunDiscreteScheduler`` does (``order = 2``; no correction on a step onto σ = 0).

State: the previous state is reset by ``set_timesteps``; the first step (or the first after
``set_begin_index``) is a plain Euler/Heun step. Every later call must pass the next entry of
``timesteps``; the loop's first entry restarts the loop (clearing the previous state), anything
else raises -- the rule of :mod:`diffkit.samplers.grid_cursor`, shared with
``BDIADDIMScheduler``. A ``callback_on_step_end`` that replaces the latents leaves the stored
previous state stale -- BDIA then mixes in the old trajectory. Configs of flow-matching
schedulers are refused (:func:`diffkit.schedules.check_diffusion_config`).
Exact inversion is offered by the functional API (``diffkit.samplers.edm.invert_bdia_*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from diffkit.denoisers import check_prediction_type, vp_denoised
from diffkit.samplers.bdia import bdia_edm_gamma_i, bdia_edm_step, check_gamma, check_gamma_mode
from diffkit.samplers.edm import (FORWARD_INCREMENTS, SIGMA_SCHEDULES, check_sigmas, edm_denoised, euler_increment,
                                  heun_corrects, heun_increment, sigma_for_model, sigma_grid, to_d)
from diffkit.samplers.grid_cursor import GridCursor
from diffkit.schedules import VPSchedule, check_diffusion_config

__all__ = ["BDIAEDMScheduler", "BDIAEDMSchedulerOutput"]

_EDM_KEYS = ("sigma_min", "sigma_max", "sigma_data", "rho", "sigma_schedule")


@dataclass
class BDIAEDMSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class BDIAEDMScheduler(SchedulerMixin, ConfigMixin):
    """BDIA-Euler / BDIA-Heun in EDM coordinates (see the module docstring).

    ``gamma`` ∈ [0, 1] (0 = plain EDM Euler/Heun), ``gamma_mode`` "vp" | "constant",
    ``solver`` "euler" | "heun". Beta/spacing keys mirror ``DDIMScheduler``'s names and
    defaults, so ``BDIAEDMScheduler.from_config(pipe.scheduler.config)`` works from SD's
    DDIM/Euler configs; ``sigma_min``/``sigma_max`` (None: the trained range) and ``rho``
    shape the Karras grid.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        set_alpha_to_one: bool = True,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        gamma: float = 0.5,
        gamma_mode: str = "vp",
        solver: str = "euler",
        sigma_schedule: str = "karras",
        rho: float = 7.0,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        sigma_data: Optional[float] = None,
    ):
        self.register_to_config(gamma=check_gamma(gamma))  # one Python float, whatever number type was passed
        check_gamma_mode(gamma_mode)
        if solver not in FORWARD_INCREMENTS:
            raise ValueError(f"solver must be one of {FORWARD_INCREMENTS}, got {solver!r}")
        if sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"sigma_schedule must be one of {SIGMA_SCHEDULES}, got {sigma_schedule!r}")
        if sigma_data is None:  # VP mode: the model's own discrete schedule
            check_prediction_type(prediction_type)
            self.schedule = VPSchedule.from_config(dict(self.config))
            if prediction_type == "epsilon" and self.schedule.zero_terminal_snr:
                raise ValueError("rescale_betas_zero_snr=True needs prediction_type='v_prediction' "
                                 "(x̂0 of an ε model is undefined at ᾱ_T = 0)")
            lo, hi = self.schedule.sigma_ve_min, self.schedule.sigma_ve_max
            sigma_min = lo if sigma_min is None else float(sigma_min)
            sigma_max = hi if sigma_max is None else float(sigma_max)
            if not lo * (1 - 1e-6) <= sigma_min < sigma_max <= hi * (1 + 1e-6):
                raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max} must satisfy "
                                 f"{lo:.6g} <= sigma_min < sigma_max <= {hi:.6g} (the model's trained range)")
            self._trained = (lo, hi)
        else:
            if prediction_type not in ("epsilon", "v_prediction"):
                raise ValueError(f"EDM mode (sigma_data set): prediction_type must be 'epsilon' (EDM's F) or "
                                 f"'v_prediction', got {prediction_type!r}")
            if sigma_schedule == "discrete":
                raise ValueError("sigma_schedule='discrete' needs a VP model (sigma_data unset); "
                                 "EDM mode accepts 'karras' or 'exponential'")
            if sigma_min is None or sigma_max is None or not 0 < sigma_min < sigma_max:
                raise ValueError(f"EDM mode needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
            self.schedule = None
            self._trained = (float(sigma_min), float(sigma_max))
        self._sigma_lo, self._sigma_hi = float(sigma_min), float(sigma_max)
        self.num_inference_steps = None
        self._begin_index = None
        self.set_timesteps(max(2, min(50, num_train_timesteps)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Also accepts an EDM scheduler's config (it has ``sigma_data``): its σ range and σ_data
        are carried over even where they were that class's defaults, which diffusers would
        otherwise drop when switching classes."""
        if config is not None:
            cfg = check_diffusion_config(config, cls.__name__, require_betas=False, allow_sigma_data=True)
            if cfg.get("sigma_data") is not None:  # an EDM-preconditioned model's config
                for k in _EDM_KEYS:
                    if k in cfg and k not in kwargs:
                        kwargs[k] = cfg[k]
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def edm_mode(self) -> bool:
        return self.config.sigma_data is not None

    @property
    def order(self) -> int:
        """Model calls per step (pipelines use it for warm-up and progress cadence)."""
        return 2 if self.config.solver == "heun" else 1

    # ------------------------------------------------------------------ grid
    def _grid(self, n: int) -> torch.Tensor:
        return sigma_grid(n, self._sigma_lo, self._sigma_hi, kind=self.config.sigma_schedule, rho=self.config.rho,
                          schedule=self.schedule)

    def _sigma(self, sigma: float, dtype) -> torch.Tensor:
        """σ as the model sees it (see ``edm.sigma_for_model``)."""
        if self.edm_mode:
            return torch.tensor(sigma, dtype=dtype)
        return sigma_for_model(sigma, dtype, *self._trained)

    def _model_timesteps(self, sigmas: List[float]) -> torch.Tensor:
        # t of the float32-rounded σ: exactly what Denoiser computes for a float32 state, so
        # the scheduler and the functional samplers feed the UNet identical timesteps (the
        # UNet embeds t in float32 either way).
        s = torch.stack([self._sigma(v, torch.float32) for v in sigmas]).double()
        if self.edm_mode:
            return 0.25 * s.log()
        t = self.schedule.sigma_to_t(s)
        near = (t - t.round()).abs() < 1e-9  # a training timestep (Denoiser snaps the same way)
        return torch.where(near, t.round(), t)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      sigmas: Optional[Union[List[float], torch.Tensor]] = None):
        """N steps on the configured grid, or a custom descending ``sigmas`` grid (its final
        level included, e.g. 0). Resets the BDIA history."""
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("pass exactly one of num_inference_steps or sigmas")
        if sigmas is None:
            if int(num_inference_steps) < 1:
                raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
            grid = self._grid(int(num_inference_steps))
        else:
            grid = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
        self._sig = check_sigmas(grid, sigma_min=self._trained[0], sigma_max=self._trained[1])
        self.sigmas = torch.tensor(self._sig, dtype=torch.float64)  # on CPU, as diffusers keeps sigmas
        n = len(self._sig) - 1
        self.num_inference_steps = n
        heun = self.config.solver == "heun"
        # (step j, stage): stage 0 evaluates at σ_j, stage 1 (Heun) at the predictor on σ_{j+1}
        self._calls = [(j, s) for j in range(n) for s in ((0, 1) if heun and self._sig[j + 1] > 0 else (0,))]
        grid = self._model_timesteps([self._sig[j + s] for j, s in self._calls]).to(torch.float32)
        self.timesteps = grid.to(device)
        self._cursor = GridCursor(grid, self.timesteps)
        self._step_index = None
        self._begin_index = None
        self._x_prev = None  # (step j, x_j) of the last finished step's input state
        self._heun = None    # (x_j, d_j) between the two Heun calls

    # ------------------------------------------------------------------ diffusers contract
    @property
    def init_noise_sigma(self) -> float:
        s0 = self._sig[0]
        return s0 if self.edm_mode else math.sqrt(s0 * s0 + 1.0)

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule_timesteps == torch.as_tensor(timestep).to(schedule_timesteps.device)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this scheduler's timesteps "
                             "(call set_timesteps first and pass entries of scheduler.timesteps)")
        return indices[1 if len(indices) > 1 else 0].item()  # as Heun/Euler: img2img starts mid-pair

    def _locate(self, timestep) -> tuple[int, bool]:
        """(call index, whether it starts a loop) of ``timestep`` by the grid rule; a call that
        starts a loop clears the BDIA history."""
        k, starts = self._cursor.locate(timestep, self._begin_index)
        if starts:
            self._x_prev = self._heun = None
        self._step_index = k
        return k, starts

    def _call_sigma(self) -> float:
        j, stage = self._calls[self._step_index]
        return self._sig[j + stage]

    def _c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        sd2 = self.config.sigma_data ** 2 if self.edm_mode else 1.0
        return 1.0 / (sigma * sigma + sd2).sqrt()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        self._locate(timestep)
        sigma = self._sigma(self._call_sigma(), sample.dtype).to(sample.device)
        return sample * self._c_in(sigma)

    def denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x̃, σ) from the raw model output at the current call (x̂0 in data space)."""
        out = model_output.to(sample.dtype)
        s = self._sigma(sigma, sample.dtype).to(sample.device)
        if self.edm_mode:
            return edm_denoised(out, sample, s, self.config.sigma_data, self.config.prediction_type)
        return vp_denoised(out, sample, s, self.config.prediction_type)

    def _finish_step(self, j: int, x: torch.Tensor, d: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x_{j+1} in loop order from x_j and its forward increment: the plain step on a loop's
        first step, else BDIA's (B) with the stored previous state (one level noisier)."""
        prev = self._x_prev
        if prev is None or prev[0] != j - 1 or prev[1].shape != x.shape:
            x_new = x + delta  # no previous state (first step): plain step
        else:
            s_above, s, s_target = self._sig[j - 1], self._sig[j], self._sig[j + 1]
            g = bdia_edm_gamma_i(self.config.gamma, self.config.gamma_mode, s_above, s_target)
            x_new = bdia_edm_step(prev[1].to(x.dtype), x, d, delta, s_above, s, g)
        self._x_prev = (j, x)
        return x_new

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One model call's update: the next state (Euler, Heun correction) or, on a Heun
        step's first call, the predictor at σ_{j+1}."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        k, starts = self._locate(timestep)
        j, stage = self._calls[k]
        sigma, sigma_next = self._sig[j], self._sig[j + 1]
        denoised = self.denoised(model_output, sample, self._sig[j + stage])
        if stage == 0:
            d = to_d(sample, sigma, denoised)
            if heun_corrects(self.config.solver, sigma_next):
                self._heun = (sample, d)
                prev_sample = sample + euler_increment(d, sigma, sigma_next)  # predictor; the next call corrects it
            else:
                prev_sample = self._finish_step(j, sample, d, euler_increment(d, sigma, sigma_next))
        else:
            if self._heun is None:
                raise RuntimeError("Heun correction call without its first call (timesteps out of order)")
            x, d = self._heun
            d_2 = to_d(sample, sigma_next, denoised)
            prev_sample = self._finish_step(j, x, d, heun_increment(d, d_2, sigma, sigma_next))
            self._heun = None
        self._cursor.advance(k, starts)
        self._step_index = k + 1
        if not return_dict:
            return (prev_sample, denoised)
        return BDIAEDMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x̃ = x0 + σ·noise at the σ of the given entries of ``timesteps`` (img2img)."""
        ts = torch.as_tensor(timesteps).reshape(-1)
        idx = [self.index_for_timestep(t) for t in ts] if self._begin_index is None else \
            [self._step_index if self._step_index is not None else self._begin_index] * len(ts)
        sig = torch.tensor([self._sig[self._calls[i][0] + self._calls[i][1]] for i in idx],
                           dtype=original_samples.dtype, device=original_samples.device)
        return original_samples + noise * sig.reshape(-1, *([1] * (original_samples.ndim - 1)))

    def __len__(self) -> int:
        return self.config.num_train_timesteps
