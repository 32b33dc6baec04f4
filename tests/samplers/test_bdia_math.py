"""BDIA pure functions: closed forms, exact inverse, the DDIM limit, closed-form data; the one γ
validator and the one inversion warning of every BDIA entrance (DDIM and EDM forms)."""

import math
import warnings

import numpy as np
import pytest
import torch

from diffkit.denoisers import EpsModel, to_eps_x0
from diffkit.samplers import edm, inversion
from diffkit.samplers.bdia import (GAMMA_WARN_BELOW, InversionWarning, bdia_coefficients, bdia_inverse_step,
                                   bdia_combine, bdia_step, bdia_weights, check_gamma, ddim_map,
                                   x0_from_eps_)
from diffkit.samplers.bdia_ddim import BDIADDIMScheduler
from diffkit.samplers.bdia_edm import BDIAEDMScheduler
from diffkit.schedules import VPSchedule
from diffkit.testing import tiny_ddim_scheduler

SCHEDULE = VPSchedule.from_config(tiny_ddim_scheduler().config)  # SD's scaled-linear betas, ᾱ_F = ᾱ_0


def _levels(n):
    ts = SCHEDULE.timesteps(n).tolist()
    return ts, [float(SCHEDULE.alpha_cumprod(t)) for t in ts] + [SCHEDULE.final_alpha_cumprod]


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_step_is_the_explicit_linear_combination():
    # two derivations of the update: D-maps (bdia_step) vs the (z_{i+1}, z_i, ε_i) coefficients
    z_next, z, eps = _rand(3, 4, 8, 8, seed=1).unbind(0)
    for ac_next, ac, ac_prev in [(0.1, 0.3, 0.5), (0.0047, 0.0051, 0.0055), (0.9, 0.95, 0.9991)]:
        for gamma in [0.0, 0.5, 0.94, 1.0]:
            c_next, c_z, c_eps = bdia_coefficients(ac_next, ac, ac_prev, gamma)
            expect = c_next * z_next + c_z * z + c_eps * eps
            got = bdia_step(z_next, z, eps, ac_next, ac, ac_prev, gamma)
            torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


def test_folded_form_equals_the_two_ddim_maps():
    # bdia_step folds γ·(z_{i+1} − D_{i→i+1}) + D_{i→i-1} into one combination; check it against
    # the maps written out, and the inverse against its own written-out form
    z_next, z, eps = _rand(3, 2, 4, 8, 8, seed=8).unbind(0)
    x0 = (z - math.sqrt(1 - 0.3) * eps) / math.sqrt(0.3)
    for gamma in [0.5, 0.94]:
        spelled = gamma * (z_next - ddim_map(x0, eps, 0.2)) + ddim_map(x0, eps, 0.45)
        torch.testing.assert_close(bdia_step(z_next, z, eps, 0.2, 0.3, 0.45, gamma), spelled, rtol=1e-13, atol=1e-13)
        z_prev = spelled
        spelled_inv = (z_prev - ddim_map(x0, eps, 0.45)) / gamma + ddim_map(x0, eps, 0.2)
        torch.testing.assert_close(bdia_inverse_step(z_prev, z, eps, 0.2, 0.3, 0.45, gamma), spelled_inv,
                                   rtol=1e-13, atol=1e-13)


def _bits(x):
    return x.view({torch.float64: torch.int64, torch.float32: torch.int32}[x.dtype])


@pytest.mark.parametrize("numel", [1, 7, 64, 1000, 16387])  # vector bodies and scalar tails
def test_in_place_x0_equals_the_reference_form_bit_for_bit(numel):
    # the scheduler's in-place x̂0 (one buffer, three kernels) against to_eps_x0's ε branch
    z, eps = _rand(2, numel, seed=numel).unbind(0)
    for ac in (0.0047, 0.3, 0.99915):
        a, s = torch.tensor(ac, dtype=torch.float64).sqrt(), torch.tensor(1 - ac, dtype=torch.float64).sqrt()
        ref = to_eps_x0(eps, z, a, s, "epsilon")[1]
        for alpha, std in ((a, s), (float(a), float(s))):
            out = torch.full_like(z, float("nan"))
            assert x0_from_eps_(out, z, eps, alpha, std) is out
            assert torch.equal(_bits(out), _bits(ref)), (ac, (out - ref).abs().max())


def test_combine_in_place_equals_the_new_tensor_form_and_the_weights_are_the_d_maps():
    z_next, x0, eps = _rand(3, 2, 4, 8, 8, seed=9).unbind(0)
    w = bdia_weights(0.2, 0.45, 0.9)
    # the weights are the coefficients of the two D-maps (exact in floating point for these checks)
    assert w[0] == 0.9 and w[1] == math.sqrt(0.45) - 0.9 * math.sqrt(0.2)
    assert w[2] == math.sqrt(1 - 0.45) - 0.9 * math.sqrt(1 - 0.2)
    fresh = bdia_combine(z_next, x0, eps, w)
    buf = z_next.clone()
    assert bdia_combine(buf, x0, eps, w, out=buf) is buf and torch.equal(_bits(buf), _bits(fresh))
    spelled = 0.9 * (z_next - ddim_map(x0, eps, 0.2)) + ddim_map(x0, eps, 0.45)
    torch.testing.assert_close(fresh, spelled, rtol=1e-13, atol=1e-13)


def test_gamma_zero_is_ddim():
    z_next, z, eps = _rand(3, 2, 3, 4, 4, seed=2).unbind(0)
    x0 = (z - math.sqrt(1 - 0.4) * eps) / math.sqrt(0.4)
    ddim = math.sqrt(0.6) * x0 + math.sqrt(1 - 0.6) * eps  # DDIM eq. 12 with σ = 0
    assert torch.equal(bdia_step(z_next, z, eps, 0.2, 0.4, 0.6, 0.0), ddim_map(x0, eps, 0.6))
    torch.testing.assert_close(ddim_map(x0, eps, 0.6), ddim, rtol=0, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.5, 0.94, 1.0])
def test_inverse_undoes_step_and_step_undoes_inverse(gamma):
    z_next, z, eps = _rand(3, 2, 4, 8, 8, seed=3).unbind(0)
    levels = (0.2, 0.35, 0.5)
    z_prev = bdia_step(z_next, z, eps, *levels, gamma)
    back = bdia_inverse_step(z_prev, z, eps, *levels, gamma)
    assert (back - z_next).abs().max() < 1e-14
    again = bdia_step(bdia_inverse_step(z_prev, z, eps, *levels, gamma), z, eps, *levels, gamma)
    assert (again - z_prev).abs().max() < 1e-14


def test_per_sample_levels_and_explicit_x0():
    z_next, z, eps = _rand(3, 3, 2, 4, 4, seed=4).unbind(0)
    ac_next, ac, ac_prev = (torch.tensor(v, dtype=torch.float64) for v in ([0.1, 0.2, 0.3], [0.2, 0.3, 0.4],
                                                                            [0.3, 0.4, 0.5]))
    out = bdia_step(z_next, z, eps, ac_next, ac, ac_prev, 0.8)
    for b in range(3):
        one = bdia_step(z_next[b:b + 1], z[b:b + 1], eps[b:b + 1], float(ac_next[b]), float(ac[b]),
                        float(ac_prev[b]), 0.8)
        torch.testing.assert_close(out[b:b + 1], one, rtol=1e-14, atol=1e-14)
    # a post-processed x̂0 (e.g. clipped) is used by both directions, which stay exact inverses
    x0 = ((z - (1 - ac.view(-1, 1, 1, 1)).sqrt() * eps) / ac.view(-1, 1, 1, 1).sqrt()).clamp(-0.5, 0.5)
    z_prev = bdia_step(z_next, z, eps, ac_next, ac, ac_prev, 0.8, x0=x0)
    assert not torch.allclose(z_prev, out)
    back = bdia_inverse_step(z_prev, z, eps, ac_next, ac, ac_prev, 0.8, x0=x0)
    assert (back - z_next).abs().max() < 1e-14


def test_exact_on_a_single_data_point_for_any_gamma():
    # data = one point x*: ε̂(z, t) = (z - √ᾱ x*)/√(1-ᾱ) exactly, and the ODE path is z_t = √ᾱ x* + √(1-ᾱ) ε.
    # DDIM is exact there, and so is BDIA for every γ -- provided z_{i+1}'s level is the noisier
    # grid neighbour (a wrong neighbour, as in some ports, breaks it).
    x_star, noise = _rand(2, 2, 3, 4, 4, seed=5).unbind(0)
    ts, ac = _levels(20)
    path = [math.sqrt(a) * x_star + math.sqrt(1 - a) * noise for a in ac]
    def eps_fn(z, a):
        return (z - math.sqrt(a) * x_star) / math.sqrt(1 - a)

    for gamma in [0.3, 0.94, 1.0]:
        z_next, z = path[0], path[1]
        for k in range(1, 20):
            z_next, z = z, bdia_step(z_next, z, eps_fn(z, ac[k]), ac[k - 1], ac[k], ac[k + 1], gamma)
        assert (z - x_star * math.sqrt(ac[-1]) - noise * math.sqrt(1 - ac[-1])).abs().max() < 1e-12
    # the wrong neighbour (the less noisy one) is not exact
    z_next, z = path[0], path[1]
    for k in range(1, 20):
        z_next, z = z, bdia_step(z_next, z, eps_fn(z, ac[k]), ac[k + 1], ac[k], ac[k + 1], 1.0)
    assert (z - path[-1]).abs().max() > 1e-3


def test_bdia_integrates_gaussian_data_better_than_ddim():
    # data N(0, c²): ε̂(z, t) = √(1-ᾱ) z / (ᾱc² + 1-ᾱ) and the probability-flow ODE keeps
    # z_t / √Var_t constant -- a closed-form reference. BDIA (γ=0.5, the authors' few-step
    # setting) at the same NFE has a much smaller error than DDIM.
    c = 0.5
    def var(a):
        return a * c * c + 1 - a

    ts, ac = _levels(20)
    z_top = _rand(4096, seed=6) * math.sqrt(var(ac[0]))
    exact = z_top * math.sqrt(var(ac[-1]) / var(ac[0]))
    errs = {}
    for gamma in [0.0, 0.5]:
        z_next, z = None, z_top
        for k in range(20):
            eps = math.sqrt(1 - ac[k]) * z / var(ac[k])
            if z_next is None:
                x0 = (z - math.sqrt(1 - ac[k]) * eps) / math.sqrt(ac[k])
                z_next, z = z, ddim_map(x0, eps, ac[k + 1])  # first step: DDIM
            else:
                z_next, z = z, bdia_step(z_next, z, eps, ac[k - 1], ac[k], ac[k + 1], gamma)
        errs[gamma] = float((z - exact).norm() / exact.norm())
    assert errs[0.5] < 0.5 * errs[0.0], errs


def test_inverse_amplifies_perturbations_by_one_over_gamma():
    # the inverse divides by γ: a perturbation δ of z_{i-1} comes back as δ/γ
    z_prev, z, eps, delta = _rand(4, 1, 2, 4, 4, seed=7).unbind(0)
    levels = (0.2, 0.35, 0.5)
    for gamma in [0.5, 0.94]:
        a = bdia_inverse_step(z_prev, z, eps, *levels, gamma)
        b = bdia_inverse_step(z_prev + 1e-6 * delta, z, eps, *levels, gamma)
        torch.testing.assert_close(b - a, 1e-6 * delta / gamma, rtol=1e-8, atol=1e-18)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), "high", None])
def test_gamma_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="gamma"):
        check_gamma(bad)


def test_inverse_needs_positive_gamma():
    assert check_gamma(0) == 0.0 and check_gamma(1) == 1.0
    with pytest.raises(ValueError, match="gamma must be > 0"):
        check_gamma(0.0, for_inversion=True)
    z = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        bdia_inverse_step(z, z, z, 0.2, 0.3, 0.4, 0.0)


# ----------------------------------------------------------------------------- one γ rule, both forms
def _gauss_denoiser(x, sigma):
    """The exact denoiser of N(0, 0.5²) data (no trained range: any grid is accepted)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x * 0.25 / (0.25 + s * s)


def _gamma_entrances():
    """Every place a user hands BDIA a γ: the validator, both schedulers, the EDM-form functions."""
    sig = edm.model_sigmas(None, 3, sigma_min=0.002, sigma_max=80.0)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return {
        "check_gamma": check_gamma,
        "BDIADDIMScheduler": lambda g: BDIADDIMScheduler(gamma=g).config.gamma,
        "BDIAEDMScheduler": lambda g: BDIAEDMScheduler(gamma=g).config.gamma,
        "sample_bdia_euler": lambda g: edm.sample_bdia_euler(_gauss_denoiser, x, sig, disable=True, gamma=g),
        "sample_bdia_heun": lambda g: edm.sample_bdia_heun(_gauss_denoiser, x, sig, disable=True, gamma=g),
    }


@pytest.mark.parametrize("gamma", [0.5, 1, 0, np.float32(0.5), np.float64(0.25), np.int64(1), np.array(0.75),
                                   torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64), torch.tensor(1)],
                         ids=repr)
def test_every_bdia_entrance_accepts_the_same_gamma_types(gamma):
    value = float(gamma)
    for name, entrance in _gamma_entrances().items():
        out = entrance(gamma)
        if name.startswith("sample_"):  # the same trajectory as with the Python float
            assert torch.equal(out, entrance(value)), name
        else:  # the validated value (and the schedulers' config) is a Python float
            assert type(out) is float and out == value, name


@pytest.mark.parametrize("gamma", [True, False, np.bool_(True), "0.5", None, float("nan"), 1.5, -0.1,
                                   np.float32(1.01), torch.tensor([0.5]), torch.tensor(True), torch.tensor(0.5j),
                                   np.array([0.5]), [0.5]], ids=repr)
def test_every_bdia_entrance_refuses_the_same_gamma_values(gamma):
    for name, entrance in _gamma_entrances().items():
        with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\]"):
            entrance(gamma)
            pytest.fail(f"{name} accepted gamma={gamma!r}")


def _inverters(tiny_unet):
    """Every inversion entrance, as γ -> run: the DDIM form (scheduler step, whole-latent
    inversion) and the EDM form (Euler and Heun)."""
    sig = edm.model_sigmas(None, 4, sigma_min=0.002, sigma_max=80.0)
    pair = tuple(torch.randn(2, 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in (1, 2))
    z = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    model = EpsModel(tiny_unet, tiny_ddim_scheduler())
    c = tiny_unet.config
    clean = torch.zeros(1, c.in_channels, c.sample_size, c.sample_size)

    def ddim_step(g):
        s = BDIADDIMScheduler(gamma=g)
        s.set_timesteps(4)
        return s.inverse_step(z, s.timesteps[1], z, z)

    return {
        "BDIADDIMScheduler.inverse_step": ddim_step,
        "inversion.invert": lambda g: inversion.invert(model, clean, None, steps=3, gamma=g),
        "edm.invert_bdia_euler": lambda g: edm.invert_bdia_euler(_gauss_denoiser, pair, sig, disable=True, gamma=g),
        "edm.invert_bdia_heun": lambda g: edm.invert_bdia_heun(_gauss_denoiser, pair, sig, disable=True, gamma=g),
    }


def test_both_forms_warn_with_one_class_at_one_threshold(tiny_unet):
    assert inversion.InversionWarning is InversionWarning and issubclass(InversionWarning, UserWarning)
    below = np.nextafter(GAMMA_WARN_BELOW, 0.0)
    for name, run in _inverters(tiny_unet).items():
        with pytest.warns(InversionWarning, match=rf"gamma={below} < {GAMMA_WARN_BELOW} for inversion"):
            run(below)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # at the threshold: no warning of any kind
            run(GAMMA_WARN_BELOW)
        with pytest.raises(ValueError, match="gamma must be > 0"):
            run(0.0)
