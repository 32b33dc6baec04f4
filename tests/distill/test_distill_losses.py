"""Score-distillation losses: the generator's distribution-matching gradient on 2-D
Gaussians / Gaussian mixtures whose x̂0 predictions are exact, and the score networks'
DDPM loss in the teacher's parameterisation."""

import math

import pytest
import torch

from diffkit.commands.train_teacher import SCHEDULER
from diffkit.distill.losses import (DDPMLoss, DistributionMatchingLoss, dm_gradient, dm_surrogate, score_loss)
from diffkit.train import DDPMEpsLoss


# ---------------------------------------------------------------------------- exact x̂0 predictors
class GaussianMixtureX0:
    """E[x0 | z_t] for x0 ~ Σ_k π_k N(m_k, v I) and z_t = a x0 + s ε (a² + s² = 1), exactly.

    p(z|k) = N(a m_k, (a²v + s²) I); E[x0|z,k] = m_k + a v/(a²v + s²) (z − a m_k).
    Same ``predict(z, t, guidance, alpha, std) -> (ε, x̂0)`` interface as an EpsModel.
    """

    def __init__(self, means, var):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)

    def predict(self, z, t, guidance=None, alpha=None, std=None):
        a, s = alpha.reshape(-1, 1).double(), std.reshape(-1, 1).double()
        z = z.double()
        tot = a * a * self.var + s * s                                     # (B, 1) or (B, d)
        d2 = ((z[:, None, :] - a[:, None, :] * self.means[None]) ** 2 / tot[:, None, :]).sum(-1)
        r = torch.softmax(-0.5 * d2, dim=1)                                # equal weights, equal variances
        cond = self.means[None] + (a * self.var / tot)[:, None, :] * (z[:, None, :] - a[:, None, :] * self.means[None])
        x0 = (r[..., None] * cond).sum(1)
        return (z - a * x0) / s, x0


def gaussian_x0(mean, var):
    return GaussianMixtureX0(torch.as_tensor(mean, dtype=torch.float64)[None], var)


def energy_distance(x, y):
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


# ---------------------------------------------------------------------------- sign and scale
@pytest.mark.parametrize("weighting", ["di", "dmd2"])
def test_dm_gradient_sign_and_scale_closed_form(weighting):
    """data N(m, I), generator x = μ + n with n ~ N(0, I): x̂0_fake − x̂0_target = (1 − ᾱ_t)(μ − m) exactly.

    So the surrogate's gradient w.r.t. μ is mean_b w_b (1 − ᾱ_b)(μ − m): it points from the
    data to the generator (descent moves μ toward m), with the stated per-sample weight.
    """
    m = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mu = torch.tensor([3.0, 0.5], dtype=torch.float64, requires_grad=True)
    B = 64
    idx = torch.arange(B)
    n = torch.randn(B, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = mu + n
    loss_fn = DistributionMatchingLoss(SCHEDULER, seed=3, weighting=weighting)
    fake, target = gaussian_x0(mu.detach(), 1.0), gaussian_x0(m, 1.0)
    loss, stats = loss_fn(x, fake, target, idx)
    loss.backward()

    xt, t, alpha, std = loss_fn.noisy(x.detach(), idx)
    assert int(t.min()) >= 20 and int(t.max()) <= 980
    per = (std**2)[:, None] * (mu.detach() - m)                           # x̂0_fake − x̂0_target, exact
    if weighting == "dmd2":
        x0_t = target.predict(xt, t, alpha=alpha, std=std)[1]
        per = per / (x.detach() - x0_t).abs().mean(1, keepdim=True)
    torch.testing.assert_close(mu.grad, per.mean(0), rtol=1e-9, atol=1e-12)
    # descent direction: moves μ toward the data mean
    assert float(torch.dot(mu.grad, mu.detach() - m)) > 0
    assert stats.mismatch == pytest.approx(float(((std**2)[:, None] * (mu.detach() - m)).norm(dim=1).mean()
                                                 / math.sqrt(2)), rel=1e-9)


def test_dm_gradient_vanishes_at_the_target_and_guards_zero_normaliser():
    m = torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = (m + torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).requires_grad_()
    loss, _ = DistributionMatchingLoss(SCHEDULER)(x, gaussian_x0(m, 1.0), gaussian_x0(m, 1.0), torch.arange(16))
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    # a sample the target reproduces exactly: no inf/NaN, zero gradient for that sample only
    xs = torch.zeros(2, 3)
    g = dm_gradient(xs, torch.ones(2, 3), torch.stack([torch.zeros(3), torch.full((3,), 0.5)]), "dmd2")
    assert torch.isfinite(g).all() and torch.count_nonzero(g[0]) == 0 and torch.count_nonzero(g[1]) == 3
    # surrogate: ∂/∂x_b = g_b / B, not divided by the pixel count
    xv = torch.randn(4, 5, requires_grad=True)
    gv = torch.randn(4, 5)
    dm_surrogate(xv, gv).backward()
    torch.testing.assert_close(xv.grad, gv / 4)
    with pytest.raises(ValueError, match="weighting must be one of"):
        dm_gradient(xs, xs, xs, "sid")
    with pytest.raises(ValueError, match="t_range must satisfy"):
        DistributionMatchingLoss(SCHEDULER, t_range=(20, 1000))


@pytest.mark.parametrize("weighting", ["di", "dmd2"])
def test_training_toward_exact_gmm_score_moves_generator_to_the_data(weighting):
    """A Gaussian generator N(μ, diag σ²), started far from an 8-mode ring, trained with the
    exact GMM target and its own exact fake score: its samples move onto the data (energy
    distance to data samples falls > 90%, the mean lands on the ring's centre)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    var = 0.02
    target = GaussianMixtureX0(means, var)
    g = torch.Generator().manual_seed(0)
    data = means[torch.randint(0, 8, (512,), generator=g)] + math.sqrt(var) * torch.randn(512, 2, generator=g,
                                                                                            dtype=torch.float64)
    mu = torch.tensor([4.0, -3.0], dtype=torch.float64, requires_grad=True)
    log_sd = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mu, log_sd], lr=0.1)
    loss_fn = DistributionMatchingLoss(SCHEDULER, seed=0, weighting=weighting)
    probe = torch.randn(512, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def distance():
        with torch.no_grad():
            return energy_distance(mu + log_sd.exp() * probe, data)

    ed0 = distance()
    B = 32
    for step in range(120):
        idx = torch.arange(step * B, (step + 1) * B)
        n = torch.randn(B, 2, generator=torch.Generator().manual_seed(1000 + step), dtype=torch.float64)
        x = mu + log_sd.exp() * n
        fake = GaussianMixtureX0(mu.detach()[None], (2 * log_sd.detach()).exp())
        loss, _ = loss_fn(x, fake, target, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ed1 = distance()
    assert ed1 < 0.1 * ed0, (ed0, ed1)
    assert float(mu.detach().norm()) < 0.3, mu


# ---------------------------------------------------------------------------- score-network loss
def test_score_loss_is_the_teachers_ddpm_loss():
    eps_loss = score_loss(SCHEDULER, seed=1, label_dropout=0.1, null_class=10)
    assert type(eps_loss) is DDPMEpsLoss and eps_loss.t_range == (20, 980)
    z, t, _ = eps_loss.noisy(torch.zeros(500, 1, 2, 2), torch.arange(500))
    assert int(t.min()) >= 20 and int(t.max()) <= 980 and len(set(t.tolist())) > 300
    with pytest.raises(ValueError, match="t_range must satisfy"):
        score_loss(SCHEDULER, t_range=(-1, 10))

    # v-prediction: the same draws, the v target; an oracle that knows x0 has zero loss
    vcfg = {**SCHEDULER, "prediction_type": "v_prediction"}
    vloss = score_loss(vcfg, seed=1, t_range=(0, 999))
    assert isinstance(vloss, DDPMLoss) and vloss.prediction_type == "v_prediction"
    x0 = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    ac = vloss.schedule.alphas_cumprod.float()

    def oracle(kind):
        def model(z, t):  # v = (√ᾱ z − x0)/√(1−ᾱ); ε = (z − √ᾱ x0)/√(1−ᾱ)
            a, s = ac[t].sqrt().reshape(-1, 1, 1, 1), (1 - ac[t]).sqrt().reshape(-1, 1, 1, 1)
            return (a * z - x0) / s if kind == "v" else (z - a * x0) / s
        return model

    idx = torch.arange(32)
    assert float(vloss(oracle("v"), x0, idx, 0)) < 1e-8
    assert float(vloss(oracle("eps"), x0, idx, 0)) > 0.1
    # and the ε loss (same draws) is zero for the ε oracle
    eloss = score_loss(SCHEDULER, seed=1, t_range=(0, 999))
    assert float(eloss(oracle("eps"), x0, idx, 0)) < 1e-8
