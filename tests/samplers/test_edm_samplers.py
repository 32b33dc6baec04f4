"""EDM / BDIA functional samplers (diffkit.samplers.edm): exactness, orders, inverse, errors."""

import math

import pytest
import torch

from diffkit.conditioning import class_guidance
from diffkit.denoisers import Denoiser, EpsModel
from diffkit.samplers import edm
from diffkit.samplers.bdia import GAMMA_MODES
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.testing import tiny_ddim_scheduler, tiny_unet2d


class GaussianDenoiser:
    """Exact denoiser of data x0 ~ N(0, s²I): D(x, σ) = x·s²/(s²+σ²). The probability-flow ODE
    then has the closed-form solution x(σ) = x(σ_0)·√((s²+σ²)/(s²+σ_0²))."""

    sigma_min, sigma_max, s = 0.002, 80.0, 0.5

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.s ** 2 / (self.s ** 2 + sig * sig)

    def exact(self, x_start, sigma_start, sigma_end=0.0):
        return x_start * math.sqrt((self.s ** 2 + sigma_end ** 2) / (self.s ** 2 + sigma_start ** 2))


@pytest.fixture(scope="module")
def unet_model():
    unet = tiny_unet2d(num_classes=10)
    model = EpsModel(unet, tiny_ddim_scheduler())
    return unet, model


def _noise(shape=(2, 1, 8, 8), seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- closed form
def _rel_err(sampler, n, **kw):
    D = GaussianDenoiser()
    x = _noise((128, 4), dtype=torch.float64) * D.sigma_max
    out = sampler(D, x, edm.model_sigmas(D, n), disable=True, **kw)
    ref = D.exact(x, D.sigma_max)
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("sampler,kw,lo,hi", [
    (edm.sample_euler, {}, 1.8, 2.2),                                             # first order
    (edm.sample_heun, {}, 3.5, 5.0),                                              # second order
    (edm.sample_bdia_euler, {"gamma": 1.0, "gamma_mode": "constant"}, 3.5, 5.0),  # γ=1: leapfrog, 2nd order
    (edm.sample_bdia_euler, {"gamma": 1.0, "gamma_mode": "vp"}, 3.5, 5.0),
    (edm.sample_bdia_heun, {"gamma": 1.0, "gamma_mode": "constant"}, 1.8, 3.0),   # Euler backward caps it
])
def test_convergence_order_on_exact_gaussian_score(sampler, kw, lo, hi):
    ratio = _rel_err(sampler, 32, **kw) / _rel_err(sampler, 64, **kw)
    assert lo < ratio < hi, ratio


def test_heun_costs_2n_minus_1_evaluations_and_euler_n():
    D = GaussianDenoiser()
    x = _noise((3, 2)) * 80
    sig = edm.model_sigmas(D, 7)
    for sampler, expected in [(edm.sample_euler, 7), (edm.sample_heun, 13), (edm.sample_bdia_euler, 7),
                              (edm.sample_bdia_heun, 13)]:
        D.calls = 0
        _, nfe = sampler(D, x, sig, disable=True, return_nfe=True)
        assert nfe == D.calls == expected, sampler.__name__
    # a grid that does not end in 0 gets the correction on its last step too
    D.calls = 0
    _, nfe = edm.sample_heun(D, x, sig[:-1], disable=True, return_nfe=True)
    assert nfe == D.calls == 2 * 6


# ----------------------------------------------------------------------------- γ = 0
@pytest.mark.parametrize("forward", ["euler", "heun"])
def test_gamma_zero_is_the_plain_sampler_bit_for_bit(unet_model, forward):
    unet, model = unet_model
    D = Denoiser(model)
    sig = edm.model_sigmas(D, 5)
    x = _noise() * sig[0]
    extra = {"guidance": class_guidance(unet, [3, 7])}
    plain = getattr(edm, f"sample_{forward}")(D, x, sig, extra, disable=True)
    for mode in GAMMA_MODES:
        bdia = getattr(edm, f"sample_bdia_{forward}")(D, x, sig, extra, disable=True, gamma=0.0, gamma_mode=mode)
        assert torch.equal(plain, bdia)


# ----------------------------------------------------------------------------- exact inverse
@pytest.mark.parametrize("forward,mode", [("euler", "constant"), ("heun", "constant"), ("euler", "vp")])
def test_inverse_round_trip_18_steps_gamma_1_float64(unet_model, forward, mode):
    unet, model = unet_model
    D = Denoiser(EpsModel(unet.double(), model.schedule))
    try:
        sig = edm.model_sigmas(D, 18)
        noise = _noise(dtype=torch.float64) * sig[0]
        extra = {"guidance": class_guidance(unet, [1, 8])}
        sample, invert = getattr(edm, f"sample_bdia_{forward}"), getattr(edm, f"invert_bdia_{forward}")
        first = []
        g = dict(gamma=1.0, gamma_mode=mode)
        pair = sample(D, noise, sig, extra, disable=True, return_pair=True, **g,
                      callback=lambda info: first.append(info["x"]) if info["i"] == 1 else None)
        x0, x1 = invert(D, pair, sig, extra, disable=True, **g)
        scale = float(noise.abs().max())
        assert float((x0 - noise).abs().max()) <= 1e-10 * scale
        assert float((x1 - first[0]).abs().max()) <= 1e-10 * scale
        if (forward, mode) != ("euler", "constant"):  # the clean-sample path below: once is enough
            return
        # a clean sample: start pair (one plain inversion step), exact inversion, regeneration
        clean = pair[1]
        inv = invert(D, edm.bdia_start_pair(D, clean, sig, extra), sig, extra, disable=True, **g)
        regen = sample(D, inv[1], sig, extra, disable=True, x_prev=inv[0], **g)
        assert float((regen - clean).abs().max()) <= 1e-10 * float(clean.abs().max())
    finally:
        unet.float()


def test_inverse_warns_below_0_9_and_refuses_0():
    D = GaussianDenoiser()
    sig = edm.model_sigmas(D, 4)
    pair = (_noise((2, 2)), _noise((2, 2), seed=1))
    with pytest.warns(UserWarning, match="gamma=0.5 < 0.9"):
        edm.invert_bdia_euler(D, pair, sig, disable=True, gamma=0.5)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        edm.invert_bdia_euler(D, pair, sig, disable=True, gamma=0.0)


# ----------------------------------------------------------------------------- BDIA-DDIM
@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_vp_mode_equals_bdia_ddim_float64(unet_model, gamma):
    unet, model = unet_model
    cfg = tiny_ddim_scheduler().config  # 'leading', steps_offset 1, set_alpha_to_one False
    unet.double()
    try:
        em = EpsModel(unet, cfg)
        guidance = class_guidance(unet, [0, 5])
        sched = BDIADDIMScheduler.from_config(cfg, gamma=gamma)
        sched.set_timesteps(10)
        z = _noise(dtype=torch.float64)
        z_T = z.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                z = sched.step(em.raw(z, t, guidance), t, z).prev_sample
        # the same grid in sigma_ve: the DDIM timesteps, ending at final_alpha_cumprod
        sch = em.schedule
        ts = torch.from_numpy(sch.timesteps(10).copy())
        sig = torch.cat([sch.sigma_ve(ts), sch.sigma_ve(torch.tensor([-1]))])
        D = Denoiser(em)
        a = lambda s: 1.0 / math.sqrt(float(s) ** 2 + 1)  # noqa: E731
        x = edm.sample_bdia_euler(D, z_T / a(sig[0]), sig, {"guidance": guidance}, disable=True,
                                  gamma=gamma, gamma_mode="vp")
        assert float((x * a(sig[-1]) - z).abs().max()) <= 1e-10
        # a constant γ in σ coordinates is a different scheme
        xc = edm.sample_bdia_euler(D, z_T / a(sig[0]), sig, {"guidance": guidance}, disable=True,
                                   gamma=gamma, gamma_mode="constant")
        assert float((xc * a(sig[-1]) - z).abs().max()) > 1e-6
    finally:
        unet.float()


# ----------------------------------------------------------------------------- options
def test_float64_state_callback_and_churn(unet_model):
    unet, model = unet_model
    D = Denoiser(model)
    sig = edm.model_sigmas(D, 4)
    x = _noise() * sig[0]
    churn = dict(s_churn=2.0, disable=True, extra_args={"guidance": class_guidance(unet, [2, 4])})
    seen = []
    out = edm.sample_euler(D, x, sig, dtype=torch.float64, callback=seen.append, **churn | {"s_churn": 0.0})
    assert out.dtype == torch.float64
    assert [s["i"] for s in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised", "nfe"}
    assert seen[2]["sigma"] == pytest.approx(float(sig[2]))
    a = edm.sample_euler(D, x, sig, generator=torch.Generator().manual_seed(3), **churn)
    b = edm.sample_euler(D, x, sig, generator=torch.Generator().manual_seed(3), **churn)
    c = edm.sample_euler(D, x, sig, **churn | {"s_churn": 0.0})
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="generator is required"):
        edm.sample_heun(D, x, sig, **churn)


def test_float32_state_at_the_edge_of_the_trained_range(unet_model):
    # float32(σ_max) rounds above σ_max; the sampler keeps the model inside its range
    unet, model = unet_model
    D = Denoiser(model)
    sig = edm.model_sigmas(D, 3)
    assert float(torch.tensor(float(sig[0]), dtype=torch.float32)) > D.sigma_max
    s = edm.sigma_for_model(float(sig[0]), torch.float32, D.sigma_min, D.sigma_max)
    assert float(s) <= D.sigma_max and abs(float(s) - D.sigma_max) < 1e-5
    out = edm.sample_bdia_heun(D, _noise() * sig[0], sig, {"guidance": class_guidance(unet, [0, 1])},
                               disable=True, gamma=0.5)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(unet_model):
    D = Denoiser(unet_model[1])
    sig = edm.model_sigmas(D, 4)
    x = _noise()
    with pytest.raises(ValueError, match="strictly decreasing"):
        edm.sample_euler(D, x, sig.flip(0), disable=True)
    with pytest.raises(ValueError, match="strictly decreasing"):
        edm.sample_bdia_euler(D, x, torch.tensor([5.0, 5.0, 1.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="outside the model's trained range"):
        edm.sample_heun(D, x, torch.tensor([80.0, 1.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="outside the model's trained range"):
        edm.sample_bdia_heun(D, x, torch.tensor([10.0, 1.0, 1e-3, 0.0]), disable=True)
    for g in (-0.1, 1.5, "1"):
        with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
            edm.sample_bdia_euler(D, x, sig, disable=True, gamma=g)
    with pytest.raises(ValueError, match="gamma_mode must be one of"):
        edm.sample_bdia_heun(D, x, sig, disable=True, gamma_mode="ve")
    with pytest.raises(ValueError, match="at least 2 noise levels"):
        edm.sample_euler(D, x, sig[:1], disable=True)
    with pytest.raises(ValueError, match="> 0 except possibly the final"):
        edm.sample_euler(D, x, torch.tensor([1.0, 0.0, -1.0]), disable=True)
