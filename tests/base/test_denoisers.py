"""ε/x̂0/v conversions, the VP→VE denoiser adapter, guidance, bad input."""

import pytest
import torch
from diffusers import DDIMScheduler

from diffkit.conditioning import Guidance, class_guidance, prompt_guidance
from diffkit.denoisers import Denoiser, EpsModel, from_eps_x0, to_eps_x0


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_conversions_round_trip_float64(ptype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    ac = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    a, s = ac.sqrt(), (1 - ac).sqrt()
    x0 = (z - s.view(-1, 1, 1, 1) * eps) / a.view(-1, 1, 1, 1)  # consistent triple
    out = from_eps_x0(eps, x0, a, s, ptype)
    eps2, x02 = to_eps_x0(out, z, a, s, ptype)
    assert torch.allclose(eps2, eps, rtol=0, atol=1e-12)
    assert torch.allclose(x02, x0, rtol=0, atol=1e-12)


def test_v_definition():
    a, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    eps, x0 = torch.ones(1, 1, dtype=torch.float64), 2 * torch.ones(1, 1, dtype=torch.float64)
    assert from_eps_x0(eps, x0, a, s, "v_prediction").item() == pytest.approx(0.6 * 1 - 0.8 * 2)


def _model(unet, ptype="epsilon"):
    return EpsModel(unet, DDIMScheduler(prediction_type=ptype).config)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_denoiser_agrees_with_ddim_x0_at_grid_points(tiny_unet, ptype):
    model = _model(tiny_unet, ptype)
    den = Denoiser(model)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    for t in [0, 1, 250, 999]:
        _, x0_direct = model.predict(z, torch.tensor(t))
        # DDIM's own x̂0 from the raw output (diffusers' formula)
        sched = DDIMScheduler(prediction_type=ptype, clip_sample=False)
        sched.set_timesteps(1000)
        ref = sched.step(model.raw(z.float(), torch.tensor(t)), t, z.float()).pred_original_sample
        assert torch.allclose(x0_direct.float(), ref, atol=1e-5)
        sigma = model.schedule.sigma_ve(t)
        x_ve = z / model.schedule.alpha_cumprod(t).sqrt()
        d = den(x_ve, sigma)
        assert torch.allclose(d, x0_direct, atol=1e-5), (t, (d - x0_direct).abs().max())


def test_denoiser_between_grid_points_is_continuous(tiny_unet):
    den = Denoiser(_model(tiny_unet))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = den.schedule.sigma_ve(torch.tensor([400, 401]))
    mid = (s[0] * s[1]).sqrt()
    d0, dm, d1 = den(x, s[0]), den(x, mid), den(x, s[1])
    # interpolated timestep lies between its neighbours: the output is close to both
    assert (dm - d0).abs().max() < 0.1 and (dm - d1).abs().max() < 0.1
    with pytest.raises(ValueError, match="trained range"):
        den(x, den.sigma_max * 2)
    nearest = Denoiser(_model(tiny_unet), t_mode="nearest")
    assert torch.equal(nearest.sigma_to_t(mid.view(1)), torch.tensor([400.0], dtype=torch.float64)) or \
        torch.equal(nearest.sigma_to_t(mid.view(1)), torch.tensor([401.0], dtype=torch.float64))


def test_class_guidance_equals_separate_calls(tiny_class_unet):
    model = _model(tiny_class_unet)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(500)
    g = class_guidance(tiny_class_unet, [1, 2, 3, 4], guidance_scale=3.0)
    out = model.raw(z, t, g)
    c = model.raw(z, t, Guidance(g.cond))
    u = model.raw(z, t, Guidance(g.uncond))
    assert torch.allclose(out, u + 3.0 * (c - u), atol=1e-5)
    assert (g.uncond.class_labels == 10).all()  # null class = last index
    assert torch.equal(model.raw(z, t, g.with_scale(1.0)), c)
    with pytest.raises(ValueError, match=r"accepted labels are 0\.\.9"):
        class_guidance(tiny_class_unet, [10])


@pytest.mark.parametrize("which", ["tiny_sd", "tiny_sdxl"])
def test_text_guidance_equals_separate_calls(which, request):
    pipe = request.getfixturevalue(which)
    model = EpsModel(pipe.unet, pipe.scheduler.config)
    g = prompt_guidance(pipe, "a cat", "blurry", guidance_scale=4.0)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor(300)
    out = model.raw(z, t, g)
    c, u = model.raw(z, t, Guidance(g.cond)), model.raw(z, t, Guidance(g.uncond))
    assert torch.allclose(out, u + 4.0 * (c - u), atol=1e-5)
    with pytest.raises(ValueError, match="prompt"):
        prompt_guidance(pipe, "   ")


def test_bad_inputs(tiny_unet):
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        EpsModel(tiny_unet, DDIMScheduler().config, prediction_type="flow")
    with pytest.raises(TypeError, match="UNet2DModel or UNet2DConditionModel"):
        EpsModel(torch.nn.Linear(2, 2), DDIMScheduler().config)
    with pytest.raises(ValueError, match="no betas"):
        EpsModel(tiny_unet, {"num_train_timesteps": 1000, "shift": 3.0})
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        EpsModel(tiny_unet, DDIMScheduler(rescale_betas_zero_snr=True).config)
    EpsModel(tiny_unet, DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction").config)
    with pytest.raises(TypeError, match="EpsModel"):
        Denoiser(tiny_unet)


def test_model_dtype_cast_keeps_state_dtype(tiny_unet):
    model = _model(tiny_unet)
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert model(z, torch.tensor(10)).dtype == torch.float64
    tiny_unet.to(torch.bfloat16)
    assert model(z, torch.tensor(10)).dtype == torch.float64
