"""Absorbing-diffusion sampler math: schedules, ψ(t, s), the two-stage draw, filters, the NFE law
(including the uniform-model check at GPT-2's vocabulary that the official float32 race fails)."""

import math

import pytest
import torch

from diffkit.samplers.absorbing import (GeometricSchedule, LogLinearSchedule, choose_unmask, draw_reveal_steps,
                                        expected_forward_calls, expected_nfe, expected_nfe_exact, filter_logits,
                                        inverse_cdf, make_schedule, psi_euler, psi_tweedie, reveal_probabilities,
                                        sample_categorical, time_grid, transition_probs)
from diffkit.samplers.radd import RADDScheduler
from diffkit.samplers.radd_reference import (joint_race_draw, joint_race_unmask_uniform, max_uniform_float32,
                                             simulate_joint_race_nfe)


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: one intra-op thread avoids thread wake-up costs on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("sched", [LogLinearSchedule(), LogLinearSchedule(1e-2), GeometricSchedule()])
def test_schedule_closed_forms(sched):
    for t in (1e-4, 0.1, 0.5, 0.999, 1.0):
        sb = sched.total_noise(t)
        assert sched.keep_prob(t) == pytest.approx(math.exp(-sb), rel=1e-12)
        assert sched.mask_prob(t) == pytest.approx(-math.expm1(-sb), rel=1e-12)
        h = 1e-6 * min(t, 1 - t) if 0 < t < 1 else 0
        if h:  # σ(t) = dσ̄/dt (central difference)
            fd = (sched.total_noise(t + h) - sched.total_noise(t - h)) / (2 * h)
            assert sched.rate(t) == pytest.approx(fd, rel=1e-6)
    if isinstance(sched, LogLinearSchedule):
        assert sched.mask_prob(0.3) == pytest.approx((1 - sched.eps) * 0.3, rel=1e-15)


def test_make_schedule_errors():
    with pytest.raises(ValueError, match="noise_schedule must be one of .*'loglinear'"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="total_noise_min < total_noise_max"):
        make_schedule("geometric", total_noise_min=5, total_noise_max=1)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        time_grid(0)


@pytest.mark.parametrize("n", [1, 7, 128, 4096])
def test_euler_equals_tweedie_equals_closed_form_under_loglinear(n):
    sched = LogLinearSchedule()
    times = time_grid(n)
    for t, s in zip(times[:-1], times[1:]):
        expected = (t - s) / t  # ε cancels (RADD §D.4)
        assert psi_tweedie(sched, t, s) == pytest.approx(expected, rel=1e-9)
        assert psi_euler(sched, t, s) == pytest.approx(expected, rel=1e-9)
    assert transition_probs(sched, times, "euler")[:-1] == pytest.approx(transition_probs(sched, times)[:-1], rel=1e-9)
    assert transition_probs(sched, times)[-1] == 1.0  # the final step fills every mask


def test_euler_and_tweedie_differ_under_geometric_and_are_clamped():
    sched = GeometricSchedule()
    times = time_grid(4)
    tw, eu = transition_probs(sched, times, "tweedie"), transition_probs(sched, times, "euler")
    assert all(0 <= p <= 1 for p in tw + eu)
    assert abs(psi_euler(sched, times[1], times[2]) - psi_tweedie(sched, times[1], times[2])) > 1e-2
    raw = [psi_euler(sched, t, s) for t, s in zip(times[:-1], times[1:])]
    assert max(raw) > 1 and max(eu) == 1.0  # coarse Euler overshoots; clamped to [0, 1]


def test_reveal_probabilities_loglinear_uniform():
    n, eps = 50, 1e-5
    q = reveal_probabilities(transition_probs(LogLinearSchedule(), time_grid(n, eps)))
    dt = (1 - eps) / n
    assert sum(q) == pytest.approx(1.0, abs=1e-12)
    assert q[:-1] == pytest.approx([dt] * (n - 1), rel=1e-9)  # reveal time is uniform on the grid
    assert q[-1] == pytest.approx(dt + eps, rel=1e-9)


@pytest.mark.parametrize("sched", [LogLinearSchedule(), GeometricSchedule()])
def test_pre_drawn_reveal_steps_have_the_step_by_step_law(sched):
    """Stage 1 drawn for all steps at once (one uniform per position) has the law of the per-step
    Bernoulli(ψ_i) draws: P(step i) = q_i; and the number of distinct steps follows the NFE law."""
    n = 12
    psis = transition_probs(sched, time_grid(n), "tweedie")
    q = torch.tensor(reveal_probabilities(psis), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    steps = draw_reveal_steps(psis, torch.rand(200_000, generator=g, dtype=torch.float64))
    freq = torch.bincount(steps, minlength=n).double() / 200_000
    assert torch.allclose(freq, q, atol=5 * (q * (1 - q) / 200_000).sqrt().max().item())
    # the same through RADDScheduler.step's per-step Bernoulli draws
    s = RADDScheduler(num_inference_steps=n, noise_schedule=sched.name, mask_token_id=3)
    x, out = torch.full((1, 30_000), 3), torch.zeros(1, 30_000, 4)
    first = torch.full((30_000,), -1)
    for i in s.timesteps:
        res = s.step(out, i, x, generator=g)
        first[res.unmasked[0]] = i
        x = res.prev_sample
    freq2 = torch.bincount(first, minlength=n).double() / 30_000
    assert torch.allclose(freq2, q, atol=5 * (q * (1 - q) / 30_000).sqrt().max().item())
    # many rows at l = 1024, n = 4096: distinct reveal steps per row vs the law (906.1)
    psis = transition_probs(LogLinearSchedule(), time_grid(4096))
    rows = draw_reveal_steps(psis, torch.rand(16, 1024, generator=g, dtype=torch.float64))
    distinct = torch.tensor([len(torch.unique(r)) for r in rows], dtype=torch.float64)
    assert distinct.mean().item() == pytest.approx(expected_nfe(4096, 1024), rel=0.01)


def test_nfe_law_closed_forms():
    psis = transition_probs(LogLinearSchedule(), time_grid(1024))
    # the paper's law (eq. D.31) and the exact grid formula agree: 647.5 / actual calls 647.8
    assert expected_nfe(1024, 1024) == pytest.approx(647.5, abs=0.05)
    assert expected_nfe_exact(psis, 1024) == pytest.approx(expected_nfe(1024, 1024), rel=1e-4)
    assert expected_forward_calls(psis, 1024) == pytest.approx(647.8, abs=0.05)
    assert expected_nfe(4096, 1024) == pytest.approx(906.1, abs=0.05)
    assert expected_nfe(8, 3) == pytest.approx(8 * (1 - (7 / 8) ** 3), rel=1e-14)
    assert expected_nfe(10 ** 6, 1024) < 1024  # bounded by l


def test_choose_unmask_and_inverse_cdf_exact():
    masked = torch.tensor([[True, True, False, True]])
    u = torch.tensor([[0.1, 0.5, 0.0, 0.2]], dtype=torch.float64)
    assert choose_unmask(masked, 0.2, u).tolist() == [[True, False, False, False]]  # u < ψ, masked only
    assert choose_unmask(masked, 1.0, torch.full_like(u, 1 - 2 ** -53)).tolist() == masked.tolist()
    w = torch.tensor([[1.0, 0.0, 3.0]], dtype=torch.float64).expand(5, 3)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.9, 1 - 2 ** -53], dtype=torch.float64)
    assert inverse_cdf(w, u).tolist() == [0, 0, 2, 2, 2]  # the zero-weight token is never returned


def test_sample_categorical_matches_distribution_and_never_draws_excluded():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=torch.float64)).expand(40000, 4)
    for precision in ("float64", "float32"):
        draws = sample_categorical(logits, generator=g, precision=precision)
        freq = torch.bincount(draws, minlength=4).double() / len(draws)
        assert freq[2] == 0
        assert freq.tolist() == pytest.approx([0.5, 0.3, 0.0, 0.2], abs=0.012)  # > 4.5 SE
    with pytest.raises(ValueError, match="precision must be one of .*'float64'"):
        sample_categorical(logits, generator=g, precision="float16")


def test_filters():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]], dtype=torch.float64))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.76)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    t = filter_logits(logits, temperature=0.5)
    assert torch.softmax(t, -1)[0, 0] == pytest.approx(0.25 / (0.25 + 0.0625 + 0.0225 + 0.01), rel=1e-12)


def test_scheduler_bad_config():
    for kw, msg in [(dict(method="heun"), "method must be one of"), (dict(final="greedy"), "final must be one of"),
                    (dict(precision="half"), "precision must be one of"), (dict(temperature=-1), "temperature must be"),
                    (dict(top_k=-1), "top_k must be a non-negative integer"),
                    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
                    (dict(noise_schedule="cosine"), "noise_schedule must be one of")]:
        with pytest.raises(ValueError, match=msg):
            RADDScheduler(**kw)


def test_scheduler_step_contract():
    V, B, L = 5, 2, 6
    s = RADDScheduler(num_inference_steps=3, mask_token_id=V)
    logits = torch.randn(B, L, V + 1, generator=torch.Generator().manual_seed(0))
    logits[..., V] = 100.0  # a huge mask column must be ignored
    x = torch.full((B, L), V)
    x[0, 0] = 1
    g = torch.Generator().manual_seed(1)
    for i in s.timesteps:
        out = s.step(logits, i, x, generator=g)
        assert (out.prev_sample[~out.unmasked] == x[~out.unmasked]).all()  # only revealed positions change
        assert (out.prev_sample[out.unmasked] < V).all()
        drawn = out.prev_sample.clamp(max=V - 1)[..., None]
        raw = torch.softmax(logits[..., :V].double(), -1).gather(-1, drawn)[..., 0]
        assert torch.allclose(out.revealed_probs[out.unmasked], raw[out.unmasked], rtol=1e-12)
        assert out.changed_rows.tolist() == out.unmasked.any(1).tolist()
        x = out.prev_sample
    assert (x < V).all() and x[0, 0] == 1
    with pytest.raises(ValueError, match=r"timestep must be a step index in \[0, 2\]"):
        s.step(logits, 3, x)
    with pytest.raises(ValueError, match="model_output must be"):
        s.step(logits[0], 0, x)


def test_final_argmax_and_greedy():
    V = 7
    s = RADDScheduler(num_inference_steps=1, mask_token_id=V, final="argmax")
    logits = torch.randn(3, 4, V + 1, generator=torch.Generator().manual_seed(0))
    x = torch.full((3, 4), V)
    out = s.step(logits, 0, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.prev_sample, logits[..., :V].argmax(-1))
    s2 = RADDScheduler(num_inference_steps=1, mask_token_id=V)
    assert torch.equal(s2.step(logits, 0, x, temperature=0.0).prev_sample, logits[..., :V].argmax(-1))


# ------------------------------------------------------------------------- the NFE law, large vocabulary

V_GPT2, L_BIG, N_BIG = 50257, 1024, 4096


def test_nfe_law_uniform_model_gpt2_vocab(one_thread):
    """Acceptance: l = 1024, n = 4096, uniform model over 50,257 tokens: mean NFE within 2% of
    the law (906.1). No network: the model's output is an expanded constant; only the Bernoulli
    per masked position and the categorical where unmasking are computed."""
    B = 4
    sched = RADDScheduler(num_inference_steps=N_BIG, mask_token_id=V_GPT2)
    out = torch.zeros(1, 1, V_GPT2 + 1).expand(B, L_BIG, V_GPT2 + 1)
    x = torch.full((B, L_BIG), V_GPT2)
    g = torch.Generator().manual_seed(0)
    changes = torch.zeros(B)
    for i in sched.timesteps:
        res = sched.step(out, i, x, generator=g)
        x, changes = res.prev_sample, changes + res.changed_rows
    law = expected_nfe(N_BIG, L_BIG)
    assert law == pytest.approx(906.1, abs=0.05)
    assert changes.mean().item() == pytest.approx(law, rel=0.02)
    assert (x < V_GPT2).all()


def test_reference_joint_race_fails_the_law(one_thread):
    """The official float32 race (float32 buffer: ≈ 578 measured on the official sampler; float16: worse)
    is far below 906."""
    g = torch.Generator().manual_seed(0)
    law = expected_nfe(N_BIG, L_BIG)
    race = simulate_joint_race_nfe(N_BIG, L_BIG, V_GPT2, 2, generator=g, buffer_dtype=torch.float32).double().mean()
    assert abs(race / law - 1) > 0.02  # the acceptance check fails ...
    assert 540 < race < 620  # ... by the amount measured on the real sampler


def test_race_single_step_suppresses_reveals():
    """docs/methods/radd.md (float32 race): ψ = 1/4096, uniform p over 50,257 tokens: float32 race unmask
    probability ≈ 0 (intended 2.4e-4); the two-stage draw gives ψ."""
    g = torch.Generator().manual_seed(0)
    K, psi = 400_000, 1 / 4096
    race = joint_race_unmask_uniform(K, V_GPT2, psi, generator=g, buffer_dtype=torch.float32).sum().item()
    two_stage = choose_unmask(torch.ones(K, dtype=torch.bool), psi, torch.rand(K, generator=g, dtype=torch.float64))
    assert race <= 5  # intended: 97.7 ± 9.9
    assert two_stage.sum().item() == pytest.approx(K * psi, abs=5 * math.sqrt(K * psi))


def test_max_uniform_float32_law():
    g = torch.Generator().manual_seed(0)
    m = max_uniform_float32(1000, (20000,), g).double()
    assert ((m * 2 ** 24) == (m * 2 ** 24).round()).all()  # on the float32 rand lattice
    direct = torch.rand(200, 1000, generator=g).max(1).values.double()
    # E[max of n U(0,1)] = n/(n+1); compare both with it
    assert m.mean().item() == pytest.approx(1000 / 1001, abs=3e-5)
    assert direct.mean().item() == pytest.approx(1000 / 1001, abs=3e-4)


@pytest.mark.parametrize("buffer", [torch.float16, torch.float32])
def test_cheap_race_simulation_matches_brute_force(buffer):
    """The max-of-uniforms shortcut has the law of the brute-force (V+1)-way race."""
    V, K = 1000, 4000
    g = torch.Generator().manual_seed(1)
    for psi in (0.3, 0.02):  # 0.02: ψ/V = 2e-5 is a float16 subnormal
        w = torch.cat([torch.full((K, V), psi / V, dtype=torch.float64),
                       torch.full((K, 1), 1 - psi, dtype=torch.float64)], 1)
        brute = (joint_race_draw(w, generator=g, buffer_dtype=buffer) != V).double().mean().item()
        cheap = joint_race_unmask_uniform(K, V, psi, generator=g, buffer_dtype=buffer).double().mean().item()
        p = (brute + cheap) / 2
        se = math.sqrt(max(p * (1 - p), 1e-4) * 2 / K)
        assert abs(brute - cheap) < 5 * se, (psi, brute, cheap)
