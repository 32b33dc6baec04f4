"""The two losses of score distillation: the score networks' denoising loss and the
generator's distribution-matching gradient.

* **One loss for every score network** (Stage-1 path, online "fake" score): the teacher's
  own DDPM loss, i.e. :class:`DDPMEpsLoss` (L_simple, Ho et al. 2020 Eq. 14)
  on generator samples, restricted to t ∈ {20..980} and with label dropout kept so the
  null class stays trained. :func:`score_loss` returns exactly that object for an
  ε-prediction teacher; a v- or x0-prediction teacher gets the same draws with its own
  regression target (:class:`DDPMLoss`).

* **Distribution matching** (Diff-Instruct / DMD / VSD; DisBack Eq. 8): with x = G(z),
  x_t = √ᾱ_t x + √(1-ᾱ_t) ε and x̂0 predictions of a fake and a target score network,

      ∇_x L = w · (x̂0_fake(x_t) − x̂0_target(x_t))                      (per sample)

  — the score difference s_fake − s_target written in x̂0 space (s = (√ᾱ x̂0 − x_t)/(1-ᾱ)).
  Descending moves x toward the target's prediction and away from the fake's.
  Weightings: ``"dmd2"`` w = 1 / mean|x − x̂0_target| per sample (stop-grad; DMD2's
  normaliser), ``"di"`` w = 1 (Diff-Instruct: w(σ) = σ² in score units).
  The gradient is applied through the surrogate ½‖x − sg(x − g)‖² summed over a sample's
  pixels and averaged over the batch, so ∂L/∂x_b = g_b / B (not divided by the pixel count;
  harmless under Adam, but it keeps the scale meaningful under SGD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from diffkit.denoisers import from_eps_x0
from diffkit.distill.config import DEFAULT_T_RANGE, WEIGHTINGS
from diffkit.schedules import VPSchedule, config_to_dict
from diffkit.seeding import rand_for_indices, randint_for_indices, randn_for_indices

__all__ = ["WEIGHTINGS", "DEFAULT_T_RANGE", "dm_gradient", "dm_surrogate", "DMStats",
           "DistributionMatchingLoss", "DDPMEpsLoss", "DDPMLoss", "score_loss"]



def _check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return weighting


def check_t_range(t_range, num_train_timesteps: int) -> tuple[int, int]:
    lo, hi = int(t_range[0]), int(t_range[1])
    if not 0 <= lo <= hi <= num_train_timesteps - 1:
        raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= {num_train_timesteps - 1} "
                         f"(num_train_timesteps - 1), got {tuple(t_range)}")
    return lo, hi


# ---------------------------------------------------------------------------- pure math
def dm_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_target: torch.Tensor, weighting: str = "dmd2",
                eps: float = 1e-12) -> torch.Tensor:
    """Per-pixel generator gradient w·(x̂0_fake − x̂0_target) (DisBack Eq. 8 in x̂0 space).

    ``"dmd2"``: w = 1 / mean|x − x̂0_target| over each sample's pixels, computed in float64
    (a sample the target reproduces exactly gets no gradient instead of inf/NaN).
    ``"di"``: w = 1. Non-finite entries become 0. Returned in x's dtype, no graph.
    """
    _check_weighting(weighting)
    dtype = x.dtype
    x, f, r = x.detach().double(), x0_fake.detach().double(), x0_target.detach().double()
    g = f - r
    if weighting == "dmd2":
        norm = (x - r).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        g = torch.where(norm > 0, g / norm.clamp_min(eps), torch.zeros_like(g))
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).to(dtype)


def dm_surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """½‖x − sg(x − g)‖² summed per sample, mean over the batch: ∂/∂x_b = g_b / B."""
    dt = torch.promote_types(x.dtype, torch.float32)  # half-precision outputs are summed in float32
    target = (x - grad.to(x.dtype)).detach()
    return 0.5 * ((x.to(dt) - target.to(dt)) ** 2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------------------- generator loss
@dataclass
class DMStats:
    """Per-call diagnostics (means over the local batch)."""

    mismatch: float    # per-sample RMS of x̂0_target − x̂0_fake ("score mismatch")
    grad_rms: float    # per-sample RMS of the applied gradient g


class DistributionMatchingLoss:
    """The generator's distribution-matching loss, with t and ε drawn per global sample index.

    ``fake`` and ``target`` are anything with ``predict(z, t, guidance) -> (ε, x̂0)`` (a
    :class:`diffkit.denoisers.EpsModel`, or an exact closed-form predictor in tests); both
    run without gradient. t ~ U{t_range}, ε ~ N(0, I) from streams ``"dm-timestep"`` /
    ``"dm-noise"`` of ``seed``.
    """

    def __init__(self, scheduler_config, seed: int = 0, t_range=DEFAULT_T_RANGE, weighting: str = "dmd2"):
        self.schedule = (scheduler_config if isinstance(scheduler_config, VPSchedule)
                         else VPSchedule.from_config(scheduler_config))
        self.t_range = check_t_range(t_range, self.schedule.num_train_timesteps)
        self.weighting = _check_weighting(weighting)
        self.seed = int(seed)

    def noisy(self, x: torch.Tensor, indices):
        """(x_t, t, alpha, std) for the (detached) generator output x."""
        lo, hi = self.t_range
        t = randint_for_indices(lo, hi + 1, indices, self.seed, stream="dm-timestep")
        noise = randn_for_indices(x.shape[1:], indices, self.seed, stream="dm-noise", dtype=x.dtype, device=x.device)
        ac = self.schedule.alpha_cumprod(t).to(device=x.device, dtype=x.dtype)
        alpha, std = ac.sqrt(), (1 - ac).sqrt()
        shape = (-1,) + (1,) * (x.ndim - 1)
        return alpha.reshape(shape) * x.detach() + std.reshape(shape) * noise, t.to(x.device), alpha, std

    def __call__(self, x: torch.Tensor, fake, target, indices, fake_guidance=None, target_guidance=None):
        """(surrogate loss with ∂/∂x = g/B, DMStats)."""
        xt, t, alpha, std = self.noisy(x, indices)
        with torch.no_grad():
            x0_fake = fake.predict(xt, t, fake_guidance, alpha=alpha, std=std)[1]
            x0_target = target.predict(xt, t, target_guidance, alpha=alpha, std=std)[1]
        g = dm_gradient(x, x0_fake, x0_target, self.weighting)
        rms = lambda v: float(v.detach().double().flatten(1).pow(2).mean(1).sqrt().mean())  # noqa: E731
        return dm_surrogate(x, g), DMStats(mismatch=rms(x0_target - x0_fake), grad_rms=rms(g))


# ---------------------------------------------------------------------------- score loss
class DDPMEpsLoss:
    """ε-prediction DDPM loss, L_simple of Ho et al. 2020 (Eq. 14): E‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖².

    Batches are ``x0`` or ``(x0, labels)``. With labels, each label is replaced by the null
    class with probability ``label_dropout`` (classifier-free guidance training; null class
    = ``num_class_embeds - 1``). t ~ U{0..T-1}, ε ~ N(0, I) and the dropout coin are drawn
    per global sample index. ``t_range=(lo, hi)`` restricts t to U{lo..hi} (DisBack/DMD2
    train their score networks on t ∈ {20..980}); the default is the full grid.
    """

    def __init__(self, scheduler_config, seed: int = 0, label_dropout: float = 0.1, null_class: Optional[int] = None,
                 t_range: Optional[tuple] = None):
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.schedule = VPSchedule.from_config(scheduler_config)
        if self.schedule.prediction_type != "epsilon":
            raise ValueError(f"DDPMEpsLoss trains ε-prediction; the scheduler says {self.schedule.prediction_type!r}")
        self.seed, self.label_dropout, self.null_class = int(seed), float(label_dropout), null_class
        T = self.schedule.num_train_timesteps
        lo, hi = (0, T - 1) if t_range is None else (int(t_range[0]), int(t_range[1]))
        if not 0 <= lo <= hi <= T - 1:
            raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= {T - 1} (num_train_timesteps - 1), got {t_range}")
        self.t_range = (lo, hi)

    def noisy(self, x0: torch.Tensor, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, ε) for the given global sample indices."""
        lo, hi = self.t_range
        t = randint_for_indices(lo, hi + 1, indices, self.seed, stream="train-timestep")
        eps = randn_for_indices(x0.shape[1:], indices, self.seed, stream="train-noise", dtype=x0.dtype)
        ac = self.schedule.alphas_cumprod[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (ac.sqrt() * x0.cpu() + (1 - ac).sqrt() * eps).to(x0.device), t.to(x0.device), eps.to(x0.device)

    def drop_labels(self, labels: torch.Tensor, indices) -> torch.Tensor:
        if self.null_class is None or self.label_dropout == 0:
            return labels
        coin = rand_for_indices((), indices, self.seed, stream="train-label-dropout").to(labels.device)
        return torch.where(coin < self.label_dropout, torch.full_like(labels, self.null_class), labels)

    def __call__(self, model, batch, indices, step):
        x0, labels = (batch, None) if isinstance(batch, torch.Tensor) else batch
        z, t, eps = self.noisy(x0, indices)
        kw = {}
        if labels is not None:
            kw["class_labels"] = self.drop_labels(labels, indices)
        out = model(z, t, **kw)
        out = out.sample if hasattr(out, "sample") else out
        return torch.mean((out.float() - eps.float()) ** 2)




class DDPMLoss(DDPMEpsLoss):
    """:class:`DDPMEpsLoss`'s draws (t, ε, label dropout per global index) with
    the regression target in the model's own parameterisation (v = √ᾱ ε − √(1-ᾱ) x0, or x0).

    For ε-prediction use ``DDPMEpsLoss`` itself (:func:`score_loss` does).
    """

    def __init__(self, scheduler_config, seed: int = 0, label_dropout: float = 0.1, null_class: Optional[int] = None,
                 t_range=None):
        cfg = config_to_dict(scheduler_config)
        prediction_type = VPSchedule.from_config(cfg).prediction_type
        # The parent only accepts ε-prediction; the schedule (ᾱ table) is the same either way.
        super().__init__({**cfg, "prediction_type": "epsilon"}, seed=seed, label_dropout=label_dropout,
                         null_class=null_class, t_range=t_range)
        self.prediction_type = prediction_type

    def __call__(self, model, batch, indices, step):
        x0, labels = (batch, None) if isinstance(batch, torch.Tensor) else batch
        z, t, eps = self.noisy(x0, indices)
        kw = {} if labels is None else {"class_labels": self.drop_labels(labels, indices)}
        out = model(z, t, **kw)
        out = out.sample if hasattr(out, "sample") else out
        ac = self.schedule.alphas_cumprod[t.cpu()].to(device=x0.device, dtype=torch.float32)
        target = from_eps_x0(eps.float(), x0.float(), ac.sqrt(), (1 - ac).sqrt(), self.prediction_type)
        return torch.mean((out.float() - target) ** 2)


def score_loss(scheduler_config, seed: int = 0, label_dropout: float = 0.1, null_class: Optional[int] = None,
               t_range=DEFAULT_T_RANGE):
    """The teacher's own DDPM loss for its prediction type (``DDPMEpsLoss`` for ε-prediction)."""
    pt = VPSchedule.from_config(scheduler_config).prediction_type
    cls = DDPMEpsLoss if pt == "epsilon" else DDPMLoss
    return cls(scheduler_config, seed=seed, label_dropout=label_dropout, null_class=null_class, t_range=t_range)
