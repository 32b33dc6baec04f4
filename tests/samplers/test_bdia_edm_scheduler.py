"""BDIAEDMScheduler: same trajectory as the functional samplers, diffusers conventions, pipelines."""

import pytest
import torch
from diffusers import DDIMScheduler, EDMEulerScheduler, EulerDiscreteScheduler

from diffkit.conditioning import class_guidance
from diffkit.denoisers import Denoiser, EpsModel
from diffkit.pipelines import load_pipeline
from diffkit.pipelines.class_conditional import ClassConditionalPipeline
from diffkit.samplers import edm
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.samplers.bdia_edm import BDIAEDMScheduler
from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _run(sched, model_fn, x):
    """The loop diffusers pipelines run (timesteps as tensors, as the pipelines pass them)."""
    for t in sched.timesteps:
        out = model_fn(sched.scale_model_input(x, t), t)
        x = sched.step(out, t, x).prev_sample
    return x


def _models():
    unet = tiny_unet2d(num_classes=10)
    yield "tiny", unet, tiny_ddim_scheduler().config
    yield "tiny-v", unet, tiny_ddim_scheduler(prediction_type="v_prediction").config
    pipe = load_pipeline("digits-unet")  # shipped: a missing or broken asset fails the test
    yield "digits-unet", pipe.unet, pipe.scheduler.config


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_vp_mode_trajectory_equals_functional_sampler_float32(solver):
    for name, unet, cfg in _models():
        em = EpsModel(unet, cfg)
        guidance = class_guidance(unet, [2, 9])
        c, s = unet.config.in_channels, unet.config.sample_size
        for mode in ("vp", "constant"):
            sched = BDIAEDMScheduler.from_config(cfg, gamma=0.7, gamma_mode=mode, solver=solver)
            sched.set_timesteps(5)
            assert sched.timesteps.dtype == torch.float32
            x = _noise((2, c, s, s)) * sched.init_noise_sigma
            states = []
            with torch.no_grad():
                for t in sched.timesteps:
                    j, stage = sched._calls[sched.step_index if sched.step_index is not None else 0]
                    if stage == 0:
                        states.append(x)
                    x = sched.step(em.raw(sched.scale_model_input(x, t), t, guidance), t, x).prev_sample
            states.append(x)
            ref = []
            fn = getattr(edm, f"sample_bdia_{solver}")
            out = fn(Denoiser(em), states[0], sched.sigmas, {"guidance": guidance}, disable=True, gamma=0.7,
                     gamma_mode=mode, callback=lambda info: ref.append(info["x"]))
            ref.append(out)
            assert len(ref) == len(states) == 6
            for k, (a, b) in enumerate(zip(states, ref)):
                assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(b.abs().max())), (name, mode, k)


def test_gamma_zero_follows_diffusers_euler_conventions():
    unet = tiny_unet2d()
    cfg = tiny_ddim_scheduler().config
    ours = BDIAEDMScheduler.from_config(cfg, gamma=0.0)
    ours.set_timesteps(6)
    euler = EulerDiscreteScheduler.from_config(cfg)
    euler.set_timesteps(sigmas=ours.sigmas.tolist())
    assert torch.allclose(euler.timesteps.double(), ours.timesteps.double(), atol=2e-3)
    x0 = _noise((2, 1, 8, 8), seed=1) * ours.init_noise_sigma
    with torch.no_grad():
        fn = lambda x, t: unet(x, t).sample  # noqa: E731
        a, b = _run(ours, fn, x0.clone()), _run(euler, fn, x0.clone())
    assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_edm_mode_gamma_zero_equals_edm_euler_scheduler():
    unet = tiny_unet2d()
    edm_sched = EDMEulerScheduler(sigma_max=20.0)
    ours = BDIAEDMScheduler.from_config(EDMEulerScheduler().config)  # defaults carried over
    assert ours.edm_mode and (ours.config.sigma_min, ours.config.sigma_max, ours.config.sigma_data) == (0.002, 80, 0.5)
    ours = BDIAEDMScheduler.from_config(edm_sched.config, gamma=0.0)
    edm_sched.set_timesteps(6)
    ours.set_timesteps(6)
    assert torch.allclose(ours.timesteps, edm_sched.timesteps, atol=1e-6)  # c_noise = ln(σ)/4
    x0 = _noise((2, 1, 8, 8)) * 20.0
    with torch.no_grad():
        fn = lambda x, t: unet(x, t).sample  # noqa: E731
        a, b = _run(ours, fn, x0.clone()), _run(edm_sched, fn, x0.clone())
    assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def test_discrete_grid_vp_mode_is_bdia_ddim():
    unet = tiny_unet2d()
    cfg = tiny_ddim_scheduler().config
    ours = BDIAEDMScheduler.from_config(cfg, gamma=0.8, gamma_mode="vp", sigma_schedule="discrete")
    ours.set_timesteps(8)
    ref = BDIADDIMScheduler.from_config(cfg, gamma=0.8)
    ref.set_timesteps(8)
    assert torch.equal(ours.timesteps.round().long(), ref.timesteps)  # the training timesteps
    z = _noise((2, 1, 8, 8), seed=2)
    with torch.no_grad():
        x = _run(ours, lambda x, t: unet(x, t).sample, z * ours.init_noise_sigma)
        zr = _run(ref, lambda x, t: unet(x, t).sample, z)
    a_final = 1 / (1 + ours.sigmas[-1] ** 2) ** 0.5
    assert float((x * a_final - zr).abs().max()) <= 1e-5


def test_from_config_and_save_round_trip(tmp_path):
    sd = tiny_ddim_scheduler()
    s = BDIAEDMScheduler.from_config(sd.config, gamma=0.3, solver="heun")
    assert not s.edm_mode and s.order == 2
    assert torch.equal(s.schedule.alphas_cumprod, sd.alphas_cumprod.double())
    assert s.config.set_alpha_to_one is False and s.config.steps_offset == 1
    s.save_config(tmp_path)
    again = BDIAEDMScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in again.config.items() if not k.startswith("_")} == \
        {k: v for k, v in s.config.items() if not k.startswith("_")}
    back = DDIMScheduler.from_config(s.config)  # and back to diffusers
    assert torch.equal(back.alphas_cumprod, sd.alphas_cumprod)
    s2 = BDIAEDMScheduler.from_config(EulerDiscreteScheduler.from_config(sd.config).config)
    assert s2.config.beta_schedule == "scaled_linear" and s2.order == 1
    # custom grids, Heun's interleaving
    s.set_timesteps(sigmas=[10.0, 3.0, 1.0, 0.0])
    assert len(s.timesteps) == 2 * 3 - 1 and s.timesteps[1] == s.timesteps[2]
    assert s.init_noise_sigma == pytest.approx((10.0 ** 2 + 1) ** 0.5)


def test_in_pipelines(tiny_sd):
    # Stable Diffusion: Euler and Heun solvers, guidance, state reset between calls
    old = tiny_sd.scheduler
    try:
        for solver, steps in (("euler", 3), ("heun", 2)):
            tiny_sd.scheduler = BDIAEDMScheduler.from_config(old.config, solver=solver, gamma=0.6)
            calls = []
            hook = tiny_sd.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
            try:
                kw = dict(num_inference_steps=steps, guidance_scale=2.0, output_type="pt")
                a = tiny_sd("the cat", generator=torch.Generator().manual_seed(0), **kw).images
                b = tiny_sd("the cat", generator=torch.Generator().manual_seed(0), **kw).images
            finally:
                hook.remove()
            assert torch.isfinite(a).all() and torch.equal(a, b)
            assert len(calls) == 2 * (steps if solver == "euler" else 2 * steps - 1)
    finally:
        tiny_sd.scheduler = old
    # the class-conditional pipeline keeps its scheduler and counts NFE
    pipe = ClassConditionalPipeline(tiny_unet2d(num_classes=10),
                                    BDIAEDMScheduler.from_config(DDIMScheduler().config, solver="heun"))
    out = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="pt", progress=False)
    assert out.nfe == 5 and out.images.shape == (2, 1, 8, 8)


def test_registry_entries():
    from diffkit.registry import get_sampler, make_scheduler

    assert get_sampler("bdia-edm").load() is BDIAEDMScheduler
    for name, fn in edm.SAMPLERS.items():
        assert get_sampler(name).kind == "function" and get_sampler(name).load() is fn
    s = make_scheduler("bdia-edm", tiny_ddim_scheduler(), solver="heun")
    assert isinstance(s, BDIAEDMScheduler) and s.order == 2


def test_bad_input_errors():
    cfg = tiny_ddim_scheduler().config
    s = BDIAEDMScheduler.from_config(cfg)
    with pytest.raises(ValueError, match="strictly decreasing"):
        s.set_timesteps(sigmas=[1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="outside the model's trained range"):
        s.set_timesteps(sigmas=[80.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="exactly one of"):
        s.set_timesteps()
    for bad in (dict(gamma=1.2), dict(gamma=-0.5)):
        with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
            BDIAEDMScheduler.from_config(cfg, **bad)
    with pytest.raises(ValueError, match="gamma_mode must be one of"):
        BDIAEDMScheduler.from_config(cfg, gamma_mode="sigma")
    with pytest.raises(ValueError, match="solver must be one of"):
        BDIAEDMScheduler.from_config(cfg, solver="rk4")
    with pytest.raises(ValueError, match="sigma_schedule must be one of"):
        BDIAEDMScheduler.from_config(cfg, sigma_schedule="linear")
    with pytest.raises(ValueError, match="trained range"):
        BDIAEDMScheduler.from_config(cfg, sigma_max=100.0)
    with pytest.raises(ValueError, match="'discrete' needs a VP model"):
        BDIAEDMScheduler.from_config(EDMEulerScheduler().config, sigma_schedule="discrete")
    with pytest.raises(ValueError, match="not in this scheduler's timesteps"):
        s.set_timesteps(4)
        s.step(torch.zeros(1, 1, 2, 2), torch.tensor(123.456), torch.zeros(1, 1, 2, 2))


def _toy(x, t):
    return torch.tanh(x * (float(t) + 1) / 700) * 0.7 + 0.05 * x


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_inference_mode_and_loop_position(solver):
    sched = BDIAEDMScheduler.from_config(tiny_ddim_scheduler().config, gamma=0.7, solver=solver)
    sched.set_timesteps(5)
    x = _noise((2, 1, 4, 4)) * sched.init_noise_sigma
    with torch.no_grad():
        first = _run(sched, _toy, x)
    with torch.inference_mode():
        second = _run(sched, _toy, x)  # inference mode, and no set_timesteps in between: the loop restarts
    assert torch.equal(first, second)
    ts = sched.timesteps
    y = x
    for t in ts[:2]:
        y = sched.step(_toy(sched.scale_model_input(y, t), t), t, y).prev_sample
    with pytest.raises(ValueError, match="call set_timesteps before a new loop"):
        sched.scale_model_input(y, ts[3])  # skipped a call
    with pytest.raises(ValueError, match="call set_timesteps before a new loop"):
        sched.step(_toy(y, ts[3]), ts[3], y)
