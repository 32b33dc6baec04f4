"""Noise schedules read from diffusers scheduler configs.

Conventions used everywhere in diffkit:

* ``alphas_cumprod`` (ᾱ) is the diffusers scheduler's own float32 table upcast to
  float64 -- never recomputed. Recomputing the betas' cumulative product in float64
  differs by ~2e-6 relative and breaks bit-level agreement with diffusers.
* Two named noise quantities, never a bare "sigma":
  ``sigma_ve = sqrt((1 - ᾱ) / ᾱ)`` -- the noise level in EDM/VE coordinates x̃ = z / √ᾱ;
  ``std_vp  = sqrt(1 - ᾱ)``       -- the noise standard deviation of the VP latent z.
* Zero-terminal-SNR configs (ᾱ_T = 0, ``rescale_betas_zero_snr=True``): the table is kept
  as diffusers makes it; ``sigma_ve`` at ᾱ = 0 is computed with ᾱ clamped to 2**-24, the
  value diffusers' Euler-type schedulers use, and ε-prediction models are refused by the
  model adapters (x̂0 = (z - std·ε)/√ᾱ is undefined there).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

__all__ = [
    "VPSchedule",
    "ZERO_SNR_CLAMP",
    "ddim_timesteps",
    "karras_sigmas",
    "config_to_dict",
    "check_diffusion_config",
    "scheduler_class_name",
    "DIFFUSION_PREDICTION_TYPES",
]

#: ᾱ used in place of an exact 0 when a noise level must be finite (as in diffusers' Euler).
ZERO_SNR_CLAMP = 2.0**-24

_TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def config_to_dict(config: Any) -> dict:
    """A scheduler, a FrozenDict config or a plain mapping -> a plain dict."""
    if hasattr(config, "config") and not isinstance(config, Mapping):
        config = config.config
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config: expected a diffusers scheduler, its .config or a mapping, got {type(config).__name__}"
        )
    return dict(config)


#: prediction types of ε / v / x̂0 diffusion models (what every diffkit model adapter converts)
DIFFUSION_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _flow_matching_marks(cfg: Mapping) -> list[str]:
    """What marks ``cfg`` as a flow-matching (or other non ε/v/x̂0) schedule; empty for a diffusion one.

    Only flow-matching schedulers have a ``shift`` key (FlowMatch*, FlowMap*, Helios, Piflow, ...);
    the multistep solvers (DPM-Solver, UniPC, DEIS, SA-Solver) carry ``use_flow_sigmas`` /
    ``flow_shift`` / ``use_dynamic_shifting`` / ``shift_terminal`` keys whose *values* decide, so
    those count only when switched on; a prediction type outside epsilon / v_prediction / sample
    (``flow_prediction``, ``trigflow``) marks the model itself.
    """
    marks = []
    name = str(cfg.get("_class_name") or "")
    if "flow" in name.lower() or name.endswith("RFScheduler"):
        marks.append(f"_class_name={name!r}")
    if "shift" in cfg:
        marks.append(f"shift={cfg['shift']!r}")
    for key in ("use_flow_sigmas", "use_dynamic_shifting"):
        if cfg.get(key):
            marks.append(f"{key}={cfg[key]!r}")
    if cfg.get("shift_terminal") is not None:
        marks.append(f"shift_terminal={cfg['shift_terminal']!r}")
    if cfg.get("prediction_type", "epsilon") not in DIFFUSION_PREDICTION_TYPES:
        marks.append(f"prediction_type={cfg['prediction_type']!r}")
    return marks


def scheduler_class_name(cfg: Mapping) -> str:
    """The scheduler class a config belongs to: its ``_class_name`` (configs loaded from a file),
    else the diffusers scheduler(s) whose constructor takes exactly its keys (in-memory configs,
    ``scheduler.config``, carry no class name), else "this scheduler"."""
    if cfg.get("_class_name"):
        return str(cfg["_class_name"])
    import diffusers.schedulers

    keys = {k for k in cfg if not k.startswith("_")}
    names = []
    for n in sorted(dir(diffusers.schedulers)):
        if not n.endswith("Scheduler") or n == "SchedulerMixin":
            continue
        try:  # some classes need optional backends (torchsde, ...) and raise on access
            params = set(inspect.signature(getattr(diffusers.schedulers, n).__init__).parameters) - {"self"}
        except Exception:
            continue
        if params == keys:
            names.append(n)
    return " / ".join(names) if names else "this scheduler"


def check_diffusion_config(config: Any, who: str = "diffkit", *, require_betas: bool = True,
                           allow_sigma_data: bool = False) -> dict:
    """Refuse the config of a scheduler that is not an ε / v / x̂0 diffusion schedule; returns it as a dict.

    The one check behind :meth:`VPSchedule.from_config` and the BDIA schedulers' ``from_config``.
    Refused, with an error naming the config's class: flow-matching configs (see
    :func:`_flow_matching_marks`: SD3, Flux, Wan, SANA, ...) and configs without betas
    (``beta_schedule``/``beta_start``/``trained_betas``). ``require_betas=False`` asks for betas only
    of configs that come from a scheduler (a diffusers ``FrozenDict`` or a dict with ``_class_name``),
    so a plain dict of a few keys keeps the constructor's defaults; ``allow_sigma_data`` accepts an
    EDM-preconditioned config (``sigma_data`` set) in place of betas.
    """
    from diffusers.configuration_utils import FrozenDict

    cfg = config_to_dict(config)
    from_scheduler = isinstance(config, FrozenDict) or not isinstance(config, Mapping) or "_class_name" in cfg
    marks = _flow_matching_marks(cfg)
    has_levels = any(k in cfg for k in ("beta_schedule", "beta_start", "trained_betas")) or (
        allow_sigma_data and cfg.get("sigma_data") is not None)
    no_betas = not has_levels and (require_betas or from_scheduler)
    if not (marks or no_betas):
        return cfg
    what = []
    if no_betas:
        what.append(f"has no betas (keys: {sorted(k for k in cfg if not k.startswith('_'))})")
    if marks:
        what.append(f"is a flow-matching schedule ({', '.join(marks)})")
    levels = "beta_schedule/beta_start/trained_betas" + (", or sigma_data for EDM preconditioning" if allow_sigma_data
                                                          else "")
    raise ValueError(
        f"{scheduler_class_name(cfg)} config {' and '.join(what)}; {who} needs a discrete VP/DDPM noise schedule "
        f"({levels}) for an epsilon, v_prediction or sample model. "
        "Flow-matching pipelines (SD3, Flux) are out of scope."
    )


def ddim_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """Descending int64 timesteps exactly as diffusers' ``DDIMScheduler.set_timesteps`` makes them."""
    n, T = int(num_inference_steps), int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {num_inference_steps}")
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        step_ratio = T // n
        ts = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)
        return ts + int(steps_offset)
    if timestep_spacing == "trailing":
        step_ratio = T / n
        return np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {_TIMESTEP_SPACINGS}, got {timestep_spacing!r}")


def karras_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, append_zero: bool = True
) -> torch.Tensor:
    """EDM/Karras noise levels (float64, descending), Karras et al. 2022 eq. (5); final 0 appended."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


@dataclass(frozen=True)
class VPSchedule:
    """The discrete VP schedule of a diffusers model, in float64.

    ``alphas_cumprod[t]`` for t = 0 .. T-1 is diffusers' float32 table upcast; the
    level "after the last step" is ``final_alpha_cumprod`` (1.0 when ``set_alpha_to_one``,
    else ᾱ_0), as in ``DDIMScheduler``.
    """

    alphas_cumprod: torch.Tensor  # float64, shape (T,)
    final_alpha_cumprod: float
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    prediction_type: str = "epsilon"

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: Any) -> "VPSchedule":
        """Build from any diffusers scheduler (or its config) that has betas."""
        cfg = check_diffusion_config(config)
        from diffusers import DDIMScheduler

        # DDIM computes betas -> alphas_cumprod exactly as DDPM/Euler/... do; only keys
        # DDIM knows are forwarded, so Euler-only keys do not warn.
        known = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
        ddim = DDIMScheduler(**{k: v for k, v in cfg.items() if k in known and not k.startswith("_")})
        ac = ddim.alphas_cumprod.to(torch.float64)
        final = float(ddim.final_alpha_cumprod.to(torch.float64))
        return cls(
            alphas_cumprod=ac,
            final_alpha_cumprod=final,
            timestep_spacing=cfg.get("timestep_spacing", "leading"),
            steps_offset=int(cfg.get("steps_offset", 0)),
            prediction_type=cfg.get("prediction_type", "epsilon"),
        )

    def __post_init__(self):
        object.__setattr__(self, "_device_tables", {})

    # ----------------------------------------------------------------- basic levels
    def _tables_on(self, device: torch.device):
        """(ᾱ table with final_alpha_cumprod appended, log sigma_ve table) on ``device``, cached."""
        key = str(device)
        if key not in self._device_tables:
            ext = torch.cat([self.alphas_cumprod, self.alphas_cumprod.new_tensor([self.final_alpha_cumprod])])
            self._device_tables[key] = (ext.to(device), self.sigmas_ve.log().to(device))
        return self._device_tables[key]

    def alpha_cumprod_on_device(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ(t) in float64 on t's device, without a host sync (no range checks).

        Integer t: the table value (t = -1 is ``final_alpha_cumprod``). Floating t: continuous,
        from sigma_ve interpolated linearly in log between grid points (pass integer tensors
        where table values must be bit-exact).
        """
        table, log_sigmas = self._tables_on(t.device)
        if not t.is_floating_point():
            return table[torch.where(t < 0, torch.full_like(t, self.num_train_timesteps), t)]
        tt = t.to(torch.float64).clamp(0, self.num_train_timesteps - 1)
        lo = tt.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        w = tt - lo.double()
        sigma = ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
        return 1.0 / (1.0 + sigma * sigma)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def alpha_cumprod(self, t) -> torch.Tensor:
        """ᾱ at integer timestep(s) t; t = -1 means ``final_alpha_cumprod``."""
        t = torch.as_tensor(t, dtype=torch.long)
        table = torch.cat([self.alphas_cumprod, self.alphas_cumprod.new_tensor([self.final_alpha_cumprod])])
        idx = torch.where(t < 0, torch.full_like(t, self.num_train_timesteps), t)
        if (idx > self.num_train_timesteps).any() or (t < -1).any():
            raise ValueError(f"timestep out of range [-1, {self.num_train_timesteps - 1}]: {t.tolist()}")
        return table[idx]

    def std_vp(self, t) -> torch.Tensor:
        return (1 - self.alpha_cumprod(t)).sqrt()

    def sigma_ve(self, t) -> torch.Tensor:
        return alpha_cumprod_to_sigma_ve(self.alpha_cumprod(t))

    @property
    def sigmas_ve(self) -> torch.Tensor:
        """``sigma_ve`` of every training timestep (ascending with t), float64."""
        return alpha_cumprod_to_sigma_ve(self.alphas_cumprod)

    @property
    def sigma_ve_min(self) -> float:
        return float(self.sigmas_ve[0])

    @property
    def sigma_ve_max(self) -> float:
        return float(self.sigmas_ve[-1])

    # ----------------------------------------------------------------- grids
    def timesteps(self, num_inference_steps: int, spacing: str | None = None) -> np.ndarray:
        return ddim_timesteps(
            num_inference_steps, self.num_train_timesteps, spacing or self.timestep_spacing, self.steps_offset
        )

    def karras_sigmas(self, n: int, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None):
        """Karras grid on the model's own trained ``sigma_ve`` range (final 0 appended)."""
        return karras_sigmas(n, sigma_min or self.sigma_ve_min, sigma_max or self.sigma_ve_max, rho)

    # ----------------------------------------------------------------- sigma <-> t
    def sigma_to_t(self, sigma_ve, mode: str = "interpolate") -> torch.Tensor:
        """Continuous (``"interpolate"``: linear in log sigma_ve between grid points, as
        k-diffusion's ``DiscreteSchedule``) or ``"nearest"`` training timestep, float64.

        Raises for sigma outside the trained range [sigma_ve_min, sigma_ve_max].
        """
        sigma = torch.as_tensor(sigma_ve, dtype=torch.float64)
        log_sigmas = self.sigmas_ve.log()
        lo, hi = float(log_sigmas[0]), float(log_sigmas[-1])
        ls = sigma.log()
        tol = 1e-9
        if (ls < lo - tol).any() or (ls > hi + tol).any():
            raise ValueError(
                f"sigma_ve {sigma.flatten().tolist()[:4]} outside the model's trained range "
                f"[{math.exp(lo):.6g}, {math.exp(hi):.6g}]"
            )
        ls = ls.clamp(lo, hi)
        if mode == "nearest":
            return (ls.reshape(-1, 1) - log_sigmas.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape).double()
        if mode != "interpolate":
            raise ValueError(f"mode must be 'interpolate' or 'nearest', got {mode!r}")
        idx = torch.searchsorted(log_sigmas, ls.reshape(-1).contiguous()).clamp(1, len(log_sigmas) - 1)
        l_lo, l_hi = log_sigmas[idx - 1], log_sigmas[idx]
        w = ((ls.reshape(-1) - l_lo) / (l_hi - l_lo)).clamp(0, 1)
        return ((idx - 1).double() + w).reshape(sigma.shape)

    def t_to_sigma(self, t) -> torch.Tensor:
        """sigma_ve at continuous t (interpolated linearly in log sigma_ve), float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        log_sigmas = self.sigmas_ve.log()
        lo = t.floor().long().clamp(0, len(log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(log_sigmas) - 1)
        w = t - lo.double()
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()


def alpha_cumprod_to_sigma_ve(ac: torch.Tensor) -> torch.Tensor:
    ac = torch.as_tensor(ac, dtype=torch.float64)
    ac = ac.clamp(min=ZERO_SNR_CLAMP)
    return ((1 - ac) / ac).sqrt()


def sigma_ve_to_alpha_cumprod(sigma_ve) -> torch.Tensor:
    s = torch.as_tensor(sigma_ve, dtype=torch.float64)
    return 1 / (1 + s * s)
