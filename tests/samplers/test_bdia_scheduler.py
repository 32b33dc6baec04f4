"""BDIADDIMScheduler: DDIM bit for bit at γ = 0, the diffusers scheduler contract at γ = 0.5,
BDIA semantics (first step, neighbours, float64 shadow, inverse_step), errors, and pipelines."""

import inspect
import json
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from diffkit.numerics import FiniteWatch, NonFiniteOutputError
from diffkit.samplers.bdia import bdia_step, ddim_map
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler, ExactnessWarning

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
          set_alpha_to_one=False, steps_offset=1)


def model(sample, t):
    """A deterministic, nonlinear stand-in for a network (casts its input like a real one would)."""
    x = sample.float()
    t = float(t)
    return (torch.tanh(x * (t + 1) / 700) * 0.7 + 0.05 * x).to(sample.dtype)


def sample_(seed=0, dtype=torch.float32, shape=(2, 3, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def loop(scheduler, x, steps=10, **kw):
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(7)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=gen, **kw).prev_sample
    return x


# ---------------------------------------------------------------------- γ = 0: DDIM exactly
# The configurations of diffusers' own DDIM scheduler tests (tests/schedulers/test_scheduler_ddim.py:
# its base config, then one option varied at a time), each run as full loops of both schedulers.
# "Bit for bit" = identical bit patterns of every output (NaN/inf included: some of these configs,
# e.g. betas up to 2 or a zero-terminal-SNR schedule with ε-prediction, produce them in DDIM too).
DIFFUSERS_BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                      clip_sample=True)
DIFFUSERS_CONFIGS = (
    [{}]
    + [dict(num_train_timesteps=n) for n in (100, 500)]
    + [dict(steps_offset=o) for o in (0, 1)]
    + [dict(beta_start=b0, beta_end=b1) for b0, b1 in ((0.0001, 0.002), (0.001, 0.02), (0.01, 0.2), (0.1, 2))]
    + [dict(beta_schedule="squaredcos_cap_v2")]
    + [dict(prediction_type=p) for p in ("v_prediction", "sample")]
    + [dict(clip_sample=False), dict(clip_sample=False, clip_sample_range=0.5)]
    + [dict(timestep_spacing=sp) for sp in ("trailing", "linspace")]
    + [dict(rescale_betas_zero_snr=True), dict(rescale_betas_zero_snr=True, prediction_type="v_prediction")]
    + [dict(thresholding=True, prediction_type=p, sample_max_value=m) for m in (0.5, 1.0, 2.0)
       for p in ("epsilon", "v_prediction")]
    + [dict(set_alpha_to_one=one, beta_start=0.01) for one in (True, False)]
    + [SD]  # Stable Diffusion's config (scaled_linear, offset 1, set_alpha_to_one False, no clipping)
)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(x.dtype, torch.int16))


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what):
    assert a.dtype == b.dtype and torch.equal(bits(a), bits(b)), (what, (a - b).abs().max())


def full_loops(cfg, steps=10, eta=0.0, clipped=False, start=0, noise=False, dtype=torch.float32):
    """One loop each of DDIMScheduler and BDIADDIMScheduler(gamma=0): all outputs of every step."""
    outs = []
    for sched in (DDIMScheduler(**cfg), BDIADDIMScheduler(**cfg, gamma=0)):
        sched.set_timesteps(steps)
        x, gen, seq = sample_(0, dtype), torch.Generator().manual_seed(7), []
        ts = sched.timesteps[start:]
        if noise:  # diffusers' test_full_loop_with_noise: add_noise to the first timestep, then denoise
            x = sched.add_noise(x, sample_(1, dtype), ts[:1])
            seq.append(x)
        for t in ts:
            o = sched.step(model(x, t), t, x, eta, clipped, generator=gen)
            x = o.prev_sample
            seq += [o.prev_sample, o.pred_original_sample]
        outs.append((sched.timesteps, seq))
    return outs


@pytest.mark.parametrize("overrides", DIFFUSERS_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or
                         "base")
def test_gamma_zero_is_ddim_bit_for_bit_over_diffusers_ddim_test_configs(overrides):
    cfg = {**DIFFUSERS_BASE, **overrides}
    runs = [dict(eta=eta) for eta in (0.0, 0.5, 1.0)] + [dict(clipped=True, eta=0.5), dict(noise=True, start=8)]
    for kw in runs:
        (t_ddim, ddim), (t_bdia, bdia) = full_loops(cfg, **kw)
        assert torch.equal(t_ddim, t_bdia) and len(ddim) == len(bdia)
        for k, (a, b) in enumerate(zip(ddim, bdia)):
            assert_same_bits(b, a, (overrides, kw, f"output {k}"))


@pytest.mark.parametrize("overrides", DIFFUSERS_CONFIGS[:-1], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "base")
def test_gamma_positive_first_step_is_ddim_in_float64_over_the_same_configs(overrides):
    """The deliberate difference at γ > 0: BDIA's own (float64) ε/x̂0 post-processing (v/sample
    conversion, clipping, thresholding) gives DDIM's first step up to float32 rounding, not bit for bit."""
    cfg = {**DIFFUSERS_BASE, **overrides}
    d = DDIMScheduler(**cfg)
    if d.alphas_cumprod[-1] == 0 and cfg.get("prediction_type", "epsilon") == "epsilon":  # zero SNR; betas to 2
        with pytest.raises(ValueError, match="zero-terminal-SNR"):
            BDIADDIMScheduler(**cfg, gamma=0.5)
        return
    s = BDIADDIMScheduler(**cfg, gamma=0.5)
    d.set_timesteps(10), s.set_timesteps(10)
    x, t = sample_(0), d.timesteps[0]
    a, b = d.step(model(x, t), t, x), s.step(model(x, t), t, x)
    tol = 4e-7 * 8 / float(d.alphas_cumprod[t]) ** 0.5  # float32 rounding of x̂0 = (z - √(1-ᾱ)ε)/√ᾱ, |z| < 8
    for mine, ddim in ((b.prev_sample, a.prev_sample), (b.pred_original_sample, a.pred_original_sample)):
        torch.testing.assert_close(mine, ddim, rtol=0, atol=tol)


def test_gamma_zero_is_ddim_steps_dtypes_variance_and_off_grid_timesteps():
    for steps in (50, 500):  # diffusers' test_inference_steps (10 is in every loop above)
        (_, a), (_, b) = full_loops(DIFFUSERS_BASE, steps=steps, eta=0.5)
        assert all(torch.equal(bits(x), bits(y)) for x, y in zip(a, b)), steps
    for dtype in (torch.bfloat16, torch.float64):
        (_, a), (_, b) = full_loops(SD, dtype=dtype)
        assert all(torch.equal(bits(x), bits(y)) for x, y in zip(a, b)), dtype
    s, d = BDIADDIMScheduler(**DIFFUSERS_BASE, gamma=0), DDIMScheduler(**DIFFUSERS_BASE)
    for t, prev in ((0, 0), (420, 400), (980, 960), (487, 486), (999, 998)):  # test_variance
        assert_same_bits(s._get_variance(t, prev), d._get_variance(t, prev), (t, prev))
    s1, d1 = (cls(**DIFFUSERS_BASE, steps_offset=1, **kw) for cls, kw in ((BDIADDIMScheduler, {"gamma": 0}),
                                                                          (DDIMScheduler, {})))
    s1.set_timesteps(5), d1.set_timesteps(5)
    assert s1.timesteps.tolist() == d1.timesteps.tolist() == [801, 601, 401, 201, 1]
    errors = []
    for sched in (s, d):  # diffusers' test_num_inference_steps_zero_raises (the error type is the installed DDIM's)
        with pytest.raises(Exception) as e:
            sched.set_timesteps(num_inference_steps=0)
        errors.append(e.type)
    assert errors[0] is errors[1], errors
    # off-grid single steps with given variance noise (test_time_indices / test_inference_steps / test_eta)
    for t, steps, eta in ((1, 50, 0.0), (10, 50, 0.5), (49, 50, 1.0), (1, 10, 0.0), (50, 500, 0.0), (999, 50, 0.5)):
        for cfg in (DIFFUSERS_BASE, dict(beta_schedule="linear", thresholding=True, sample_max_value=2.0,
                                         prediction_type="v_prediction")):
            s, d = BDIADDIMScheduler(**cfg, gamma=0), DDIMScheduler(**cfg)
            s.set_timesteps(steps), d.set_timesteps(steps)
            x = sample_(1)
            a = s.step(model(x, t), t, x, eta, True, variance_noise=x * 0.1)
            b = d.step(model(x, t), t, x, eta, True, variance_noise=x * 0.1)
            assert_same_bits(a.prev_sample, b.prev_sample, (t, steps, eta))
            assert_same_bits(a.pred_original_sample, b.pred_original_sample, (t, steps, eta))


# ---------------------------------------------------------------------- diffusers' common checks at γ = 0.5
def test_config_save_load_round_trip_and_step(tmp_path):
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    s.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "BDIADDIMScheduler" and saved["gamma"] == 0.5
    t = BDIADDIMScheduler.from_pretrained(tmp_path)
    cfg = dict(s.config)
    cfg.pop("_use_default_values", None)
    assert dict(t.config) == cfg
    assert torch.equal(loop(s, sample_()), loop(t, sample_()))


def test_from_config_swaps_with_ddim_both_ways():
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    d = DDIMScheduler.from_config(s.config)  # gamma travels as a hidden config key
    assert {k: v for k, v in d.config.items() if k in inspect.signature(DDIMScheduler).parameters} == \
        {k: v for k, v in s.config.items() if k in inspect.signature(DDIMScheduler).parameters}
    back = BDIADDIMScheduler.from_config(d.config)
    assert back.config.gamma == 0.5 and back.config.steps_offset == 1
    # from a plain DDIM config: defaults plus the override; and every diffusers compatible builds from ours
    fresh = BDIADDIMScheduler.from_config(DDIMScheduler(**SD).config, gamma=0.94)
    assert fresh.config.gamma == 0.94 and fresh.config.beta_schedule == "scaled_linear"
    # diffusers' schedulers build from our config (gamma is ignored with diffusers' usual warning)
    for cls in (EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        other = cls.from_config(s.config)
        assert isinstance(other, cls) and other.config.beta_schedule == "scaled_linear"
        assert BDIADDIMScheduler.from_config(other.config).config.gamma == 0.5


def test_tuple_and_dict_outputs_agree_and_shapes():
    outs = []
    for return_dict in (True, False):
        s = BDIADDIMScheduler(**SD, gamma=0.5)
        s.set_timesteps(10)
        x = sample_()
        for t in s.timesteps[:3]:
            o = s.step(model(x, t), t, x, return_dict=return_dict)
            x = o.prev_sample if return_dict else o[0]
        outs.append((o.prev_sample, o.pred_original_sample) if return_dict else o)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][0].shape == outs[0][1].shape == sample_().shape


def test_public_api_trained_betas_and_deprecated_kwargs(tmp_path):
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    x = sample_()
    assert s.init_noise_sigma == 1.0 and s.scale_model_input(x, 0.0) is x and len(s) == 1000
    s.set_timesteps(10)
    assert s.add_noise(x, x, s.timesteps[5][None]).shape == x.shape
    tb = BDIADDIMScheduler(trained_betas=np.array([0.1, 0.3]), gamma=0.5)
    tb.save_pretrained(tmp_path)
    assert BDIADDIMScheduler.from_pretrained(tmp_path).betas.tolist() == tb.betas.tolist()
    has_kwargs = "kwargs" in inspect.signature(BDIADDIMScheduler.__init__).parameters
    assert has_kwargs == (len(BDIADDIMScheduler._deprecated_kwargs) > 0)
    assert list(inspect.signature(BDIADDIMScheduler.step).parameters)[1:] == \
        list(inspect.signature(DDIMScheduler.step).parameters)[1:]


# ---------------------------------------------------------------------- BDIA semantics
def test_first_step_is_ddim_then_bdia_with_grid_neighbours():
    s = BDIADDIMScheduler(**SD, gamma=0.7)
    s.set_timesteps(10)
    ts = s.timesteps.tolist()  # 901, 801, ..., 1 (leading, offset 1)
    ac = s.alphas_cumprod.double()
    z0 = sample_(3, torch.float64)
    z1 = s.step(model(z0, ts[0]), ts[0], z0).prev_sample
    e0 = model(z0, ts[0])
    x00 = (z0 - (1 - ac[ts[0]]).sqrt() * e0) / ac[ts[0]].sqrt()
    torch.testing.assert_close(z1, ddim_map(x00, e0, float(ac[ts[1]])), rtol=0, atol=1e-14)
    z2 = s.step(model(z1, ts[1]), ts[1], z1).prev_sample
    # z_{i+1} = z0 at 901 (the previous timestep passed); target = DDIM's t - T//N = 701
    expect = bdia_step(z0, z1, model(z1, ts[1]), float(ac[ts[0]]), float(ac[ts[1]]), float(ac[ts[2]]), 0.7)
    torch.testing.assert_close(z2, expect, rtol=0, atol=1e-14)
    # the last step lands on final_alpha_cumprod (ᾱ_0 with set_alpha_to_one=False)
    for t in ts[2:]:
        z1, z2 = z2, s.step(model(z2, t), t, z2).prev_sample
    assert s.step_index == 10


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_steady_steps_equal_bdia_step_bit_for_bit_across_grids(spacing):
    # the step combines with weights computed once per pair of levels (kept across set_timesteps):
    # every step of loops on different grids must equal bdia_step on the same inputs, bit for bit
    s = BDIADDIMScheduler(**dict(SD, timestep_spacing=spacing), gamma=0.8)
    T = s.config.num_train_timesteps
    for n in (10, 7, 10, 25):
        s.set_timesteps(n)
        ts = s.timesteps.tolist()
        states = [sample_(n, torch.float64)]
        for k, t in enumerate(ts):
            eps = model(states[-1], t)
            states.append(s.step(eps, t, states[-1]).prev_sample)
            if k:
                ac = [float(s.alphas_cumprod[v]) if v >= 0 else float(s.final_alpha_cumprod)
                      for v in (ts[k - 1], t, t - T // n)]
                expect = bdia_step(states[-3], states[-2], eps, *ac, 0.8)
                assert torch.equal(bits(states[-1]), bits(expect)), (spacing, n, k)


def test_scheduler_inverse_step_recovers_the_trajectory():
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(25)
    ts = s.timesteps.tolist()
    z = [sample_(4, torch.float64)]
    for t in ts:
        z.append(s.step(model(z[-1], t), t, z[-1]).prev_sample)
    lower, cur = z[-1], z[-2]  # (z at the final level, z at ts[-1])
    for k in range(len(ts) - 1, 0, -1):  # recover z at ts[k-1] from (z below ts[k], z at ts[k])
        nxt = s.inverse_step(model(cur, ts[k]), ts[k], cur, lower).next_sample
        lower, cur = cur, nxt
    assert float((cur - z[0]).norm() / z[0].norm()) < 1e-12  # back to the latent passed at ts[0]
    with pytest.raises(ValueError, match="no noisier neighbour"):
        s.inverse_step(model(z[0], ts[0]), ts[0], z[0], z[1])


def test_inverse_step_outputs_survive_later_steps():
    # float64 latents: inverse_step's x̂0 must be its own tensor, not a buffer a later step overwrites
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    ts = s.timesteps.tolist()
    z = [sample_(5, torch.float64)]
    for t in ts[:3]:
        z.append(s.step(model(z[-1], t), t, z[-1]).prev_sample)
    inv = s.inverse_step(model(z[2], ts[2]), ts[2], z[2], z[3])
    kept = [inv.next_sample.clone(), inv.pred_original_sample.clone()]
    for t in ts[3:6]:
        z.append(s.step(model(z[-1], t), t, z[-1]).prev_sample)
    assert torch.equal(inv.next_sample, kept[0]) and torch.equal(inv.pred_original_sample, kept[1])


def test_float64_shadow_makes_low_precision_latents_follow_the_float64_run():
    # the pipeline hands back the tensor it got: the recurrence continues from the float64
    # shadow, so float32 latents are exactly the float64 run cast (the model sees the same input)
    a = loop(BDIADDIMScheduler(**SD, gamma=0.94), sample_(5, torch.float64).float(), steps=20)
    b = loop(BDIADDIMScheduler(**SD, gamma=0.94), sample_(5, torch.float64).float().double(), steps=20)
    assert a.dtype == torch.float32 and torch.equal(a, b.float())


@pytest.mark.parametrize("how", ["replace", "in_place", "clone"])
def test_altered_latents_warn_once_and_continue(how):
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    x = sample_()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i, t in enumerate(s.timesteps):
            x = s.step(model(x, t), t, x).prev_sample
            if i % 3 == 1:
                x = {"replace": lambda v: v * 1.0, "in_place": lambda v: v.add_(0.0), "clone": torch.clone}[how](x)
    msgs = [m for m in w if issubclass(m.category, ExactnessWarning)]
    assert len(msgs) == 1 and "no longer exactly invertible" in str(msgs[0].message)
    assert "sampling is unaffected" not in str(msgs[0].message)  # it is affected: the shadow is dropped
    assert torch.isfinite(x).all()


def test_set_timesteps_resets_state_and_begin_index():
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)
        first, second = loop(s, sample_()), loop(s, sample_())  # same scheduler, two runs
    assert torch.equal(first, second)
    s.set_timesteps(10)
    assert s.begin_index is None and s.step_index is None
    s.set_begin_index(4)
    x = sample_()
    for t in s.timesteps[4:]:
        x = s.step(model(x, t), t, x).prev_sample
    assert s.begin_index == 4 and s.step_index == 10


def test_accelerator_timesteps_are_never_read():
    # on a GPU, reading a timestep tensor would synchronise the device; with set_begin_index the
    # scheduler takes timesteps from its CPU grid instead. A meta tensor cannot be read at all.
    a, b = BDIADDIMScheduler(**SD, gamma=0.94), BDIADDIMScheduler(**SD, gamma=0.94)
    a.set_timesteps(10), b.set_timesteps(10)
    a.set_begin_index(0)
    xa = xb = sample_()
    for t in a.timesteps:
        xa = a.step(model(xa, t), t.to("meta"), xa).prev_sample
        xb = b.step(model(xb, t), t, xb).prev_sample
    assert torch.equal(xa, xb)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
        BDIADDIMScheduler(gamma=1.5)
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
        BDIADDIMScheduler.from_config(DDIMScheduler().config, gamma=-0.2)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        BDIADDIMScheduler(rescale_betas_zero_snr=True, gamma=0.5)
    BDIADDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", gamma=0.5)
    BDIADDIMScheduler(rescale_betas_zero_snr=True, gamma=0.0)  # plain DDIM, as diffusers allows
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    x = sample_()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 1, x)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="eta must be 0"):
        s.step(model(x, 901), 901, x, eta=0.5)


def test_nan_model_output_names_the_step():
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    s.set_timesteps(10)
    x = sample_()
    with pytest.raises(NonFiniteOutputError, match=r"step 3 \(timestep 601\)"):
        for k, t in enumerate(s.timesteps):
            out = model(x, t)
            if k == 3:
                out[0, 0, 0, 0] = float("nan")
            x = s.step(out, t, x).prev_sample


def test_deferred_finite_check_reports_the_first_bad_step_at_flush():
    # the accelerator path (no per-step sync), exercised on CPU
    w = FiniteWatch("model output", deferred=True)
    good, bad = torch.zeros(3), torch.tensor([0.0, float("inf"), 1.0])
    w.update(good, 0, 901)
    w.update(bad, 1, 801)  # recorded, not raised
    w.update(bad, 2, 701)
    with pytest.raises(NonFiniteOutputError, match=r"step 1 \(timestep 801\)"):
        w.flush()


# ---------------------------------------------------------------------- pipelines
def test_sd_pipeline_gamma_zero_equals_ddim_and_bdia_is_repeatable(tiny_sd):
    ddim = tiny_sd.scheduler
    try:
        kw = dict(prompt="a cat", num_inference_steps=5, output_type="pt")
        ref = tiny_sd(**kw, generator=torch.Generator().manual_seed(0)).images
        tiny_sd.scheduler = BDIADDIMScheduler.from_config(ddim.config, gamma=0.0)
        assert torch.equal(tiny_sd(**kw, generator=torch.Generator().manual_seed(0)).images, ref)
        tiny_sd.scheduler = BDIADDIMScheduler.from_config(ddim.config, gamma=0.94)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExactnessWarning)  # the pipeline hands latents back untouched
            a = tiny_sd(**kw, generator=torch.Generator().manual_seed(0)).images
            b = tiny_sd(**kw, generator=torch.Generator().manual_seed(0)).images
        assert torch.equal(a, b) and not torch.equal(a, ref)

        def edit(pipe, i, t, kwargs):
            return {"latents": kwargs["latents"] * 1.0}

        with pytest.warns(ExactnessWarning, match="callback_on_step_end"):
            tiny_sd(**dict(kw, num_inference_steps=3), callback_on_step_end=edit,
                    callback_on_step_end_tensor_inputs=["latents"])
    finally:
        tiny_sd.scheduler = ddim


def test_img2img_and_sdxl_pipelines(tiny_sd, tiny_sdxl):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)
        for pipe, i2i_cls in ((tiny_sd, StableDiffusionImg2ImgPipeline), (tiny_sdxl, StableDiffusionXLImg2ImgPipeline)):
            comps = dict(pipe.components, scheduler=BDIADDIMScheduler.from_config(pipe.scheduler.config, gamma=0.9))
            i2i = i2i_cls(**comps)
            i2i.set_progress_bar_config(disable=True)
            out = i2i("a cat", image=image, strength=0.5, num_inference_steps=6, output_type="pt").images
            assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
            assert i2i.scheduler.begin_index == 3 and i2i.scheduler.step_index == 6
        xl = type(tiny_sdxl)(**dict(tiny_sdxl.components,
                                    scheduler=BDIADDIMScheduler.from_config(tiny_sdxl.scheduler.config, gamma=0.5)))
        xl.set_progress_bar_config(disable=True)
        out = xl("a cat", num_inference_steps=4, height=32, width=32, output_type="pt").images
        assert torch.isfinite(out).all()


def test_pipeline_save_load_keeps_the_scheduler(tmp_path, tiny_sd, tiny_class_unet):
    from diffusers import StableDiffusionPipeline

    from diffkit.pipelines import load_pipeline
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    scheduler = BDIADDIMScheduler.from_config(tiny_sd.scheduler.config, gamma=0.94)
    pipe = StableDiffusionPipeline(**dict(tiny_sd.components, scheduler=scheduler))
    pipe.save_pretrained(tmp_path / "sd")
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffkit.samplers.bdia_ddim", "BDIADDIMScheduler"]
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert isinstance(loaded.scheduler, BDIADDIMScheduler) and loaded.scheduler.config.gamma == 0.94

    cc = ClassConditionalPipeline(tiny_class_unet, BDIADDIMScheduler(**SD, gamma=0.5))
    cc.save_pretrained(tmp_path / "cc")
    cc2 = load_pipeline(str(tmp_path / "cc"))
    assert isinstance(cc2.scheduler, BDIADDIMScheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)
        a = cc2(class_labels=[1, 2], num_inference_steps=10, output_type="pt", progress=False).images
        b = cc2(class_labels=[1, 2], num_inference_steps=10, output_type="pt", progress=False).images
    assert torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="eta must be 0"):
        cc2(class_labels=[1], num_inference_steps=3, eta=1.0, progress=False)


def test_registry_entry():
    from diffkit.registry import get_sampler, make_scheduler

    assert get_sampler("bdia-ddim").load() is BDIADDIMScheduler
    s = make_scheduler("bdia-ddim", DDIMScheduler(**SD), gamma=0.94)
    assert isinstance(s, BDIADDIMScheduler) and s.config.gamma == 0.94 and s.config.steps_offset == 1


# ---------------------------------------------------------------------- inference mode
def test_inference_mode_gives_the_no_grad_result_and_keeps_the_shadow():
    x = sample_(5, torch.float64).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)  # the latents go back untouched: the shadow is used
        with torch.no_grad():
            a = loop(BDIADDIMScheduler(**SD, gamma=0.94), x, steps=20)
        with torch.inference_mode():
            b = loop(BDIADDIMScheduler(**SD, gamma=0.94), x, steps=20)
    ref = loop(BDIADDIMScheduler(**SD, gamma=0.94), x.double(), steps=20)
    assert torch.equal(a, b) and torch.equal(b, ref.float())  # the float32 run followed the float64 one
    # an in-place edit inside inference mode is still seen: the returned latents are normal tensors
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    with torch.inference_mode(), pytest.warns(ExactnessWarning, match="no longer exactly invertible"):
        x = sample_()
        for i, t in enumerate(s.timesteps):
            x = s.step(model(x, t), t, x).prev_sample
            if i == 3:
                x.add_(0.0)


# ---------------------------------------------------------------------- where a loop stands
def _steps(s, x, timesteps):
    for t in timesteps:
        x = s.step(model(x, t), t, x).prev_sample
    return x


def test_a_new_loop_without_set_timesteps_restarts_at_the_first_timestep():
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactnessWarning)
        first = _steps(s, sample_(), s.timesteps)
        second = _steps(s, sample_(), s.timesteps)  # no set_timesteps in between: DDIM repeats itself, so must BDIA
        _steps(s, sample_(1), s.timesteps[:4])  # a loop abandoned halfway...
        third = _steps(s, sample_(), s.timesteps.tolist())  # ...then a new one (Python ints this time)
        assert torch.equal(first, second) and torch.equal(first, third)
        s.set_timesteps(10)
        s.set_begin_index(4)  # img2img: the loop starts (and restarts) at timesteps[begin_index]
        a, b = _steps(s, sample_(), s.timesteps[4:]), _steps(s, sample_(), s.timesteps[4:])
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", ["skipped", "repeated", "off_grid", "after_the_end", "not_the_begin_index",
                                 "first_not_at_begin_index"])
def test_a_timestep_that_is_not_the_next_one_raises(bad):
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    ts = s.timesteps.tolist()  # 901, 801, ..., 1
    x = _steps(s, sample_(), s.timesteps[:10 if bad == "after_the_end" else 3])
    t = {"skipped": ts[4], "repeated": ts[2], "off_grid": 650, "after_the_end": ts[5]}.get(bad, ts[0])
    if bad in ("not_the_begin_index", "first_not_at_begin_index"):
        s.set_timesteps(10)
        s.set_begin_index(4)
        x = sample_() if bad == "first_not_at_begin_index" else _steps(s, sample_(), s.timesteps[4:6])
    with pytest.raises(ValueError, match="call set_timesteps before a new loop"):
        s.step(model(x, t), t, x)
    with pytest.raises(ValueError, match="call set_timesteps before a new loop"):  # a tensor, as pipelines pass
        s.step(model(x, t), torch.tensor(t), x)
    if t in ts:  # a view of the scheduler's own timesteps, as `for t in scheduler.timesteps` passes
        with pytest.raises(ValueError, match="call set_timesteps before a new loop"):
            s.step(model(x, t), s.timesteps[ts.index(t)], x)


def test_views_of_timesteps_numbers_and_copies_walk_the_same_loop():
    # views of `timesteps` take the step's shortcut to the next grid index; numbers and tensors
    # that are not views take GridCursor.locate: both must walk the same loop, bit for bit
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    views = _steps(s, sample_(), s.timesteps)
    ints = _steps(s, sample_(), s.timesteps.tolist())
    copies = _steps(s, sample_(), s.timesteps.clone())
    assert torch.equal(views, ints) and torch.equal(views, copies)
    s.set_timesteps(10)
    s.set_begin_index(4)
    assert torch.equal(_steps(s, sample_(), s.timesteps[4:]), _steps(s, sample_(), s.timesteps[4:].tolist()))
    assert s.step_index == 10


@pytest.mark.parametrize("dtype,big", [(torch.float32, 3e38), (torch.float64, 1e308)])
def test_finite_outputs_whose_sum_overflows_pass_the_cpu_check(dtype, big):
    # the CPU check sums the output (one reduction); a sum that overflows on finite values is
    # re-checked element-wise, so only NaN/inf elements raise
    s = BDIADDIMScheduler(**SD, gamma=0.5)
    s.set_timesteps(10)
    x = sample_(dtype=dtype)
    for k, t in enumerate(s.timesteps[:2]):  # (the latents after the huge output would overflow the model)
        out = torch.full_like(x, big) if k == 1 else model(x, t)
        x = s.step(out, t, x).prev_sample
    x = sample_(dtype=dtype)
    s.set_timesteps(10)
    with pytest.raises(NonFiniteOutputError, match=r"step 1 \(timestep 801\)"):
        for k, t in enumerate(s.timesteps[:3]):
            out = model(x, t)
            if k == 1:
                out[0, 0, 0, 0] = float("-inf")
            x = s.step(out, t, x).prev_sample


def test_a_float64_model_output_is_read_not_written_nor_handed_out():
    # float64 outputs serve as ε without a copy: they must stay unchanged and unaliased
    s = BDIADDIMScheduler(**SD, gamma=0.94)
    s.set_timesteps(10)
    x = sample_(dtype=torch.float64)
    for t in s.timesteps[:4]:
        out = model(x, t)
        kept = out.clone()
        o = s.step(out, t, x)
        assert torch.equal(out, kept)
        for handed in (o.prev_sample, o.pred_original_sample):
            assert handed.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
        x = o.prev_sample


@pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only slows them
def test_pipelines_under_inference_mode_give_the_no_grad_result(tiny_sd, tiny_class_unet):
    from diffkit.pipelines.class_conditional import ClassConditionalPipeline

    ddim = tiny_sd.scheduler
    cc = ClassConditionalPipeline(tiny_class_unet, BDIADDIMScheduler(**SD, gamma=0.5))
    try:
        tiny_sd.scheduler = BDIADDIMScheduler.from_config(ddim.config, gamma=0.94)
        runs = [lambda: tiny_sd(prompt="a cat", num_inference_steps=5, output_type="pt",
                                generator=torch.Generator().manual_seed(0)).images,
                lambda: cc(class_labels=[1, 2], num_inference_steps=10, output_type="pt", progress=False).images]
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExactnessWarning)
            for run in runs:
                ref = run()
                with torch.inference_mode():
                    got = run()
                assert torch.equal(got, ref)
    finally:
        tiny_sd.scheduler = ddim


def test_a_loop_under_autograd_backpropagates_like_ddim():
    """With autograd recording (a model output that requires grad), the step allocates instead of
    reusing its buffers, so a loss on the final sample backpropagates to the model's parameters,
    and the values equal the no-grad loop's bit for bit."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.tensor(0.3))
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    def loop(track):
        s = BDIADDIMScheduler(num_train_timesteps=100, gamma=0.9)
        s.set_timesteps(6)
        x = x_T
        with torch.set_grad_enabled(track):
            for t in s.timesteps:
                x = s.step(weight * x, t, x).prev_sample
        return x

    tracked = loop(True)
    tracked.square().sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad) and weight.grad != 0
    assert torch.equal(tracked.detach(), loop(False))
