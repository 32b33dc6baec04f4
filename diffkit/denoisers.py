"""Model adapters: any diffusers UNet as an ε/x̂0 predictor on the VP grid, or as an
EDM-style denoiser D(x̃, sigma_ve). Differentiable (distillation backpropagates
through them). The conversions between ε, x̂0 and v live here and nowhere else.

Coordinates: a VP latent z_t = a·x0 + s·ε with a = √ᾱ_t, s = std_vp = √(1-ᾱ_t); the
EDM/VE latent is x̃ = z/a with noise level sigma_ve = s/a.

Precision: the model runs in its own dtype; its input is cast to that dtype and its
output is cast back to the dtype of the sample that was passed in (float64 state stays
float64). Conversions run in the sample's dtype with ᾱ from the float64 table.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from diffkit.conditioning import Condition, Guidance
from diffkit.schedules import VPSchedule

__all__ = [
    "PREDICTION_TYPES",
    "check_prediction_type",
    "to_eps_x0",
    "from_eps_x0",
    "vp_denoised",
    "EpsModel",
    "Denoiser",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def _bcast(v, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


def to_eps_x0(output: torch.Tensor, sample: torch.Tensor, alpha, std, prediction_type: str):
    """(ε, x̂0) from a model output of the given type at z = sample, a = alpha, s = std."""
    a, s = _bcast(alpha, sample), _bcast(std, sample)
    if prediction_type == "epsilon":
        return output, (sample - s * output) / a
    if prediction_type == "sample":
        return (sample - a * output) / s, output
    if prediction_type == "v_prediction":  # v = a·ε - s·x0, with a² + s² = 1
        return a * output + s * sample, a * sample - s * output
    check_prediction_type(prediction_type)


def from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, alpha, std, prediction_type: str) -> torch.Tensor:
    """The model output of the given type that corresponds to (ε, x̂0)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return _bcast(alpha, eps) * eps - _bcast(std, eps) * x0
    check_prediction_type(prediction_type)


def vp_denoised(output: torch.Tensor, x: torch.Tensor, sigma_ve, prediction_type: str) -> torch.Tensor:
    """D(x̃, sigma_ve) = x̃ − sigma_ve·ε̂ from a VP model's raw ``output`` at z = x̃/√(sigma_ve²+1)
    (k-diffusion's VP→VE conversion); ``sigma_ve`` is a scalar or one per sample."""
    sigma = _bcast(sigma_ve, x)
    c_in = 1.0 / (sigma * sigma + 1).sqrt()
    eps, _ = to_eps_x0(output, x * c_in, c_in, sigma * c_in, prediction_type)
    return x - sigma * eps


def _is_unet(model) -> bool:
    from diffusers import UNet2DConditionModel, UNet2DModel

    return isinstance(model, (UNet2DModel, UNet2DConditionModel))


class EpsModel(nn.Module):
    """A diffusers UNet as ε(z, t) / x̂0(z, t) on its discrete VP schedule.

    ``t`` may be an integer training timestep or a continuous one (a float tensor, which
    UNets embed without truncation); ᾱ at continuous t comes from the schedule's
    log-sigma interpolation unless ``alpha``/``std`` are given explicitly.
    """

    def __init__(self, unet: nn.Module, schedule, prediction_type: Optional[str] = None):
        super().__init__()
        if not _is_unet(unet):
            raise TypeError(
                f"unet: expected a diffusers UNet2DModel or UNet2DConditionModel, got {type(unet).__name__}"
            )
        self.unet = unet
        self.schedule = schedule if isinstance(schedule, VPSchedule) else VPSchedule.from_config(schedule)
        self.prediction_type = check_prediction_type(prediction_type or self.schedule.prediction_type)
        if self.prediction_type == "epsilon" and self.schedule.zero_terminal_snr:
            raise ValueError(
                "zero-terminal-SNR schedule (alphas_cumprod[-1] == 0) with prediction_type='epsilon': x̂0 is "
                "undefined at the last timestep; use a v_prediction model or a schedule without rescale_betas_zero_snr"
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # ------------------------------------------------------------------ levels
    def levels(self, t, like: torch.Tensor):
        """(alpha, std) = (√ᾱ_t, √(1-ᾱ_t)) per sample, in ``like``'s dtype.

        Integer t reads the float64 table; floating t is continuous (log-sigma interpolation).
        Computed on the sample's device without a host sync (no per-step GPU stall).
        """
        t = torch.as_tensor(t, device=like.device)
        ac = self.schedule.alpha_cumprod_on_device(t.detach())
        ac = ac.to(dtype=like.dtype)
        return ac.sqrt(), (1 - ac).sqrt()

    # ------------------------------------------------------------------ calls
    def raw(self, z: torch.Tensor, t, guidance: Optional[Guidance] = None) -> torch.Tensor:
        """The UNet's guided output in its own parameterisation, cast to z's dtype."""
        guidance = guidance or Guidance()
        n = z.shape[0]
        t = torch.as_tensor(t, device=z.device)
        t = t.expand(n) if t.ndim == 0 else t
        if not t.is_floating_point():
            t = t.long()
        else:
            t = t.to(torch.float32)
        zin = z.to(self.dtype)
        cond = guidance.cond.expand(n)
        if guidance.active:
            both = Condition.cat(guidance.uncond.expand(n), cond).to(self.device, self.dtype)
            out = self.unet(torch.cat([zin, zin]), torch.cat([t, t]), **both.unet_kwargs(), return_dict=False)[0]
            out_u, out_c = out.to(z.dtype).chunk(2)
            return out_u + guidance.scale * (out_c - out_u)
        out = self.unet(zin, t, **cond.to(self.device, self.dtype).unet_kwargs(), return_dict=False)[0]
        return out.to(z.dtype)

    def predict(self, z: torch.Tensor, t, guidance: Optional[Guidance] = None, alpha=None, std=None):
        """(ε, x̂0) at (z, t)."""
        if alpha is None or std is None:
            alpha, std = self.levels(t, z)
        return to_eps_x0(self.raw(z, t, guidance), z, alpha, std, self.prediction_type)

    def forward(self, z: torch.Tensor, t, guidance: Optional[Guidance] = None) -> torch.Tensor:
        """ε(z, t)."""
        if self.prediction_type == "epsilon":
            return self.raw(z, t, guidance)
        return self.predict(z, t, guidance)[0]


class Denoiser(nn.Module):
    """EDM-style denoiser D(x̃, sigma_ve) of a VP model (k-diffusion's VP→VE conversion).

    D(x̃, σ) = x̃ - σ · ε(x̃ / √(σ²+1), t(σ)): the VP latent is z = x̃·√ᾱ with
    √ᾱ = 1/√(σ²+1). Between grid points t(σ) is, by default, interpolated linearly in
    log sigma_ve (``t_mode="interpolate"``; a continuous timestep is passed to the UNet as
    a float tensor); ``t_mode="nearest"`` snaps to the nearest training timestep. Noise
    levels that land on a grid point (within 1e-9 in t) use that integer timestep exactly.
    σ outside the model's trained range raises.
    """

    def __init__(self, model: EpsModel, t_mode: str = "interpolate"):
        super().__init__()
        if not isinstance(model, EpsModel):
            raise TypeError("model: expected an EpsModel (EpsModel(unet, scheduler_config)), "
                            f"got {type(model).__name__}")
        if t_mode not in ("interpolate", "nearest"):
            raise ValueError(f"t_mode must be 'interpolate' or 'nearest', got {t_mode!r}")
        self.model = model
        self.t_mode = t_mode

    @property
    def schedule(self) -> VPSchedule:
        return self.model.schedule

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_ve_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_ve_max

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        t = self.schedule.sigma_to_t(sigma.detach().cpu().to(torch.float64), self.t_mode)
        near = (t - t.round()).abs() < 1e-9
        return torch.where(near, t.round(), t)

    def forward(self, x: torch.Tensor, sigma, guidance: Optional[Guidance] = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        t = self.sigma_to_t(sigma)
        t = t.long() if torch.equal(t, t.round()) else t
        c_in = 1.0 / (sigma * sigma + 1).sqrt()
        out = self.model.raw(x * _bcast(c_in, x), t.to(x.device), guidance)
        return vp_denoised(out, x, sigma, self.model.prediction_type)
