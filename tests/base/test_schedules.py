"""Schedules equal diffusers' own values exactly; sigma/t maps; bad configs."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from diffkit.schedules import VPSchedule, ddim_timesteps, karras_sigmas

CONFIGS = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(trained_betas=np.linspace(1e-4, 2e-2, 1000).tolist()),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["linear", "scaled_linear", "cosine", "trained"])
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler])
def test_alphas_equal_diffusers_table_bitwise(cfg, cls):
    sched = cls(**cfg)
    vp = VPSchedule.from_config(sched.config)
    assert vp.alphas_cumprod.dtype == torch.float64
    assert torch.equal(vp.alphas_cumprod, sched.alphas_cumprod.to(torch.float64))


def test_final_alpha_cumprod_follows_set_alpha_to_one():
    assert VPSchedule.from_config(DDIMScheduler(set_alpha_to_one=True).config).final_alpha_cumprod == 1.0
    s = DDIMScheduler(set_alpha_to_one=False)
    assert VPSchedule.from_config(s.config).final_alpha_cumprod == float(s.alphas_cumprod[0])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", [1, 7, 10, 50, 333, 1000])
def test_timesteps_equal_ddim_set_timesteps(spacing, offset, n):
    s = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(n)
    ours = VPSchedule.from_config(s.config).timesteps(n)
    assert np.array_equal(ours, s.timesteps.numpy())
    assert np.array_equal(ddim_timesteps(n, 1000, spacing, offset), s.timesteps.numpy())


def test_sigma_quantities():
    vp = VPSchedule.from_config(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config)
    ac = vp.alphas_cumprod
    assert torch.allclose(vp.sigma_ve(torch.arange(1000)), ((1 - ac) / ac).sqrt(), rtol=0, atol=0)
    assert torch.allclose(vp.std_vp(torch.arange(1000)), (1 - ac).sqrt(), rtol=0, atol=0)
    assert vp.sigma_ve_min == pytest.approx(float(((1 - ac[0]) / ac[0]).sqrt()))
    # sigma -> t -> sigma round trip, at grid points and in between
    t = torch.tensor([0.0, 0.5, 17.25, 500.0, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(vp.sigma_to_t(vp.t_to_sigma(t)), t, atol=1e-9)
    grid = torch.arange(0, 1000, 37)
    assert torch.allclose(vp.sigma_to_t(vp.sigma_ve(grid)), grid.double(), atol=1e-9)
    inner = grid[:-1]  # nudging the top level up would leave the trained range
    assert torch.equal(vp.sigma_to_t(vp.sigma_ve(inner) * 1.0001, mode="nearest"), inner.double())
    with pytest.raises(ValueError, match="outside the model's trained range"):
        vp.sigma_to_t(torch.tensor([vp.sigma_ve_max * 1.5]))
    with pytest.raises(ValueError, match="mode"):
        vp.sigma_to_t(torch.tensor([1.0]), mode="cubic")


def test_karras_grid():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.dtype == torch.float64 and len(s) == 11 and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    assert (s[:-1].diff() < 0).all()
    rho = 7.0  # equal spacing in sigma^(1/rho)
    r = s[:-1] ** (1 / rho)
    assert torch.allclose(r.diff(), r.diff()[0].expand(9), atol=1e-12)
    vp = VPSchedule.from_config(DDIMScheduler().config)
    g = vp.karras_sigmas(5)
    assert g[0].item() == pytest.approx(vp.sigma_ve_max) and g[-2].item() == pytest.approx(vp.sigma_ve_min)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(5, 1.0, 0.5)


def test_config_without_betas_is_rejected():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="no betas.*Flow-matching"):
        VPSchedule.from_config(FlowMatchEulerDiscreteScheduler().config)
    with pytest.raises(TypeError, match="config"):
        VPSchedule.from_config(42)


def test_bad_spacing_and_steps():
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        ddim_timesteps(10, 1000, "uniform")
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddim_timesteps(0, 1000)


def test_zero_terminal_snr_is_defined():
    s = DDIMScheduler(rescale_betas_zero_snr=True)
    vp = VPSchedule.from_config(s.config)
    assert vp.zero_terminal_snr and vp.alphas_cumprod[-1] == 0
    # documented clamp: finite sigma_ve at the last step, as diffusers' Euler (ᾱ -> 2**-24)
    assert torch.isfinite(vp.sigma_ve(999)) and vp.sigma_ve(999).item() == pytest.approx((1 - 2**-24) ** 0.5 / 2**-12)


def _flow_configs():
    from diffusers import (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                           UniPCMultistepScheduler)

    saved = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config, _class_name="FlowMatchEulerDiscreteScheduler")
    return [
        ("FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler().config),
        ("FlowMatchHeunDiscreteScheduler", FlowMatchHeunDiscreteScheduler().config),
        ("FlowMatchEulerDiscreteScheduler", saved),  # as loaded from a saved scheduler_config.json
        # betas present, but flow sigmas and flow prediction (Wan/SANA-style UniPC)
        ("UniPCMultistepScheduler", UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                            flow_shift=3.0).config),
    ]


def test_flow_matching_configs_are_refused_naming_their_class():
    from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
    from diffkit.samplers.bdia_edm import BDIAEDMScheduler

    for name, cfg in _flow_configs():
        for build in (VPSchedule.from_config, BDIADDIMScheduler.from_config, BDIAEDMScheduler.from_config):
            with pytest.raises(ValueError, match=f"{name} config .*Flow-matching"):
                build(cfg)


def test_diffusion_configs_are_still_accepted():
    from diffusers import DPMSolverMultistepScheduler, EDMEulerScheduler, UniPCMultistepScheduler

    from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
    from diffkit.samplers.bdia_edm import BDIAEDMScheduler

    # these carry flow_shift / use_dynamic_shifting / shift_terminal keys at their non-flow defaults
    for cls in (DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        cfg = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
        VPSchedule.from_config(cfg)
        assert BDIADDIMScheduler.from_config(cfg).config.beta_schedule == "scaled_linear"
        assert BDIAEDMScheduler.from_config(cfg).config.beta_schedule == "scaled_linear"
    assert BDIAEDMScheduler.from_config(EDMEulerScheduler().config).edm_mode  # EDM: sigma_data instead of betas
    assert BDIADDIMScheduler.from_config({"gamma": 0.3}).gamma == 0.3  # a plain dict of a few keys: defaults
    with pytest.raises(ValueError, match="EDMEulerScheduler config has no betas"):
        BDIADDIMScheduler.from_config(EDMEulerScheduler().config)
