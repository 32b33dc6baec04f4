"""RADDScheduler: the absorbing-diffusion reverse step as a diffusers scheduler.

Shaped like diffusers' token-diffusion schedulers (``DiscreteDDIMScheduler``,
``BlockRefinementScheduler``): ``set_timesteps(n)`` then ``step(model_output, timestep, sample)``
with ``model_output`` the denoiser logits [B, L, N] (columns = token ids; the mask column, if
present, is ignored) and ``sample`` the current ids [B, L]. ``timesteps`` are step indices
0..n-1; the continuous times are ``self.times`` (float64, t_0 = 1 ... t_n = sampling_eps).

diffusers (0.42) has no shared contract for token schedulers -- its discrete schedulers disagree
on the output fields and on the order of the timesteps -- so the output here is RADD's own
(:class:`RADDSchedulerOutput`, read by name). Its fields avoid diffusers' names where the meaning
differs: ``DiscreteDDIMScheduler``'s ``sampled_tokens`` / ``sampled_probs`` are the predicted
clean tokens at *every* position and their probabilities, while a RADD step draws a token only
where a position is revealed. The old names still read (deprecated): ``sampled_tokens`` is
``prev_sample``, ``sampled_probs`` is ``revealed_probs``.

The math lives in :mod:`diffkit.samplers.absorbing`; this class only holds the grid and the
filter settings. It reports which rows changed (``changed_rows``): that is all a per-row cache
needs, because a RADD network has no time input -- its output for an unchanged row is reused
exactly (Ou et al. 2024, arXiv:2406.03736, §3.2). The cache itself is the pipeline's
(:class:`diffkit.pipelines.discrete.RowCache`).

"sigma" in RADD/SEDD code is the *total* noise σ̄(t) (the masking probability is 1 - e^{-σ̄}): the
geometric schedule's bounds are ``total_noise_min`` / ``total_noise_max`` here; the old config
names ``sigma_min`` / ``sigma_max`` still load.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from diffkit.models.config_aliases import ConfigAliasMixin, resolve_aliases
from diffkit.samplers.absorbing import (METHODS, PRECISIONS, SCHEDULES, choose_unmask, draw_reveal_steps, filter_logits,
                                        inverse_cdf, make_schedule, sample_categorical, time_grid, transition_probs,
                                        unnormalised_probs)

__all__ = ["RADDScheduler", "RADDSchedulerOutput", "FINALS", "TOTAL_NOISE_ALIASES"]

FINALS = ("sample", "argmax")
TOTAL_NOISE_ALIASES = {"sigma_min": "total_noise_min", "sigma_max": "total_noise_max"}
Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


@dataclass
class RADDSchedulerOutput(BaseOutput):
    """
    prev_sample:    [B, L] ids after the step (unmasked tokens never change; the revealed positions
                    hold the tokens drawn this step).
    revealed_probs: [B, L] float64 probability of each token revealed this step under the raw
                    (unfiltered, temperature 1) distribution over real tokens; 0 where nothing was
                    revealed. (Not diffusers' ``sampled_probs``, which covers every position.)
    pred_logits:    the ``model_output`` passed in.
    unmasked:       [B, L] bool, the positions revealed this step.
    changed_rows:   [B] bool, rows with at least one reveal (their cached output is now stale).

    ``return_dict=False`` gives these five in this order. Deprecated aliases: ``sampled_tokens``
    (= ``prev_sample``) and ``sampled_probs`` (= ``revealed_probs``).
    """

    prev_sample: torch.LongTensor
    revealed_probs: torch.Tensor
    pred_logits: torch.Tensor
    unmasked: torch.BoolTensor
    changed_rows: torch.BoolTensor

    @property
    def sampled_tokens(self) -> torch.LongTensor:
        """Deprecated: ``prev_sample`` (a RADD step draws tokens only where a position is revealed)."""
        warnings.warn("RADDSchedulerOutput.sampled_tokens is deprecated: it is prev_sample (unlike "
                      "DiscreteDDIMScheduler's sampled_tokens, the clean-token prediction at every position); "
                      "read prev_sample", FutureWarning, stacklevel=2)
        return self.prev_sample

    @property
    def sampled_probs(self) -> torch.Tensor:
        """Deprecated: ``revealed_probs``."""
        warnings.warn("RADDSchedulerOutput.sampled_probs is deprecated: it is revealed_probs (probabilities of the "
                      "tokens revealed this step, 0 elsewhere; unlike DiscreteDDIMScheduler's sampled_probs); read "
                      "revealed_probs", FutureWarning, stacklevel=2)
        return self.revealed_probs


def _top_k(top_k) -> Optional[int]:
    """``top_k``: None or 0 = off (as in transformers' generation config), else a positive integer."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not hasattr(top_k, "__index__") or operator.index(top_k) < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 or None = off), got {top_k!r}")
    return operator.index(top_k) or None


def _check_filters(temperature, top_k, top_p):
    """Validated (temperature, top_k, top_p), with top_k = 0 read as None (off)."""
    if temperature is None or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    top_k = _top_k(top_k)
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    return temperature, top_k, top_p


def _uniform(shape, generator: Generators, device, dtype=torch.float64) -> torch.Tensor:
    """Uniforms on the generator's device (CPU draws are bit-reproducible), moved to ``device``.
    A list of generators draws row b of ``shape`` from generator b."""
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            g = generator[0]
            return torch.rand(tuple(shape), generator=g, dtype=dtype, device=g.device).to(device)
        rows = [torch.rand(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device) for g in generator]
        return torch.stack(rows).to(device)
    if generator is None:
        return torch.rand(tuple(shape), dtype=dtype, device=device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)


def _uniform_per_position(rows: torch.Tensor, batch: int, generator: Generators, device, extra=()) -> torch.Tensor:
    """One uniform (or a vector of shape ``extra``) per selected position, taken from the
    generator of its row when per-row generators are given (``rows`` is sorted)."""
    if not isinstance(generator, (list, tuple)) or len(generator) == 1:
        g = generator[0] if isinstance(generator, (list, tuple)) else generator
        return _uniform((rows.numel(), *extra), g, device, torch.float64 if not extra else torch.float32)
    counts = torch.bincount(rows, minlength=batch).tolist()
    dtype = torch.float64 if not extra else torch.float32
    parts = [torch.rand((c, *extra), generator=generator[b], dtype=dtype, device=generator[b].device).to(device)
             for b, c in enumerate(counts) if c]
    return torch.cat(parts)


class RADDScheduler(ConfigAliasMixin, SchedulerMixin, ConfigMixin):
    """Reverse sampler for absorbing (masked) discrete diffusion with a RADD / MDLM-style denoiser.

    Args:
        num_inference_steps: default number of steps n (uniform grid from 1 to ``sampling_eps``).
        mask_token_id: id of [M] (RADD: 50257 = the number of real tokens).
        noise_schedule: ``"loglinear"`` (all released RADD/SEDD/MDLM models) or ``"geometric"``.
        eps: ε of the log-linear schedule.
        total_noise_min, total_noise_max: the geometric schedule's range of the total noise σ̄
            (RADD/SEDD configs: ``sigma_min`` / ``sigma_max``, still accepted here and in saved configs).
        sampling_eps: last time of the grid (RADD: 1e-5).
        method: ``"tweedie"`` or ``"euler"`` ψ(t, s); identical under log-linear.
        final: ``"sample"`` (RADD: the remaining masks are sampled at the last step) or ``"argmax"``
            (MDLM's greedy noise removal).
        precision: ``"float64"`` (exact inverse-CDF draw) or ``"float32"`` (float32 Gumbel-max, the
            public code's regime; lower entropy). The unmask/stay choice is float64 either way.
        temperature, top_k, top_p: token filters applied to real tokens only (defaults; ``step``
            may override them). ``temperature=0`` is greedy; ``top_k`` 0 or None is off.
    """

    order = 1
    _config_aliases = TOTAL_NOISE_ALIASES
    ignore_for_config = ["sigma_min", "sigma_max"]

    @register_to_config
    def __init__(self, num_inference_steps: int = 128, mask_token_id: int = 50257, noise_schedule: str = "loglinear",
                 eps: float = 1e-3, total_noise_min: float = 1e-4, total_noise_max: float = 20.0,
                 sampling_eps: float = 1e-5, method: str = "tweedie", final: str = "sample", precision: str = "float64",
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        if noise_schedule not in SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {SCHEDULES}, got {noise_schedule!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if final not in FINALS:
            raise ValueError(f"final must be one of {FINALS}, got {final!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if mask_token_id < 0:
            raise ValueError(f"mask_token_id must be >= 0, got {mask_token_id}")
        _check_filters(temperature, top_k, top_p)
        noise = resolve_aliases(self, dict(sigma_min=sigma_min, sigma_max=sigma_max),
                                dict(total_noise_min=total_noise_min, total_noise_max=total_noise_max))
        self.schedule = make_schedule(noise_schedule, eps=eps, **noise)
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        self.times = time_grid(num_inference_steps, self.config.sampling_eps)
        self.psis = transition_probs(self.schedule, self.times, self.config.method)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = torch.arange(self.num_inference_steps, dtype=torch.long, device=device)

    def total_noise(self, timestep: int) -> float:
        """σ̄(t_i) at step i (the input of a time-conditioned network such as SEDD)."""
        return self.schedule.total_noise(self.times[int(timestep)])

    def add_noise(self, original_samples: torch.LongTensor, noise: torch.Tensor,
                  timesteps: Union[int, torch.Tensor]) -> torch.LongTensor:
        """The forward (masking) process at step index ``timesteps`` (an int, or one per row [B]):
        each token becomes the mask id iff its uniform ``noise`` (same shape, in [0, 1)) is below
        λ(t_i) = 1 - e^{-σ̄(t_i)} (arXiv:2406.03736 §2.1). diffusers' image signature, with uniforms
        as the noise; a mask token stays masked."""
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise must have the shape of original_samples {tuple(original_samples.shape)}, "
                             f"got {tuple(noise.shape)}")
        idx = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1).tolist()
        bad = [i for i in idx if not 0 <= i < self.num_inference_steps]
        if bad:
            raise ValueError(f"timesteps must be step indices in [0, {self.num_inference_steps - 1}], got {bad[:5]}")
        lam = torch.tensor([self.schedule.mask_prob(self.times[i]) for i in idx], dtype=torch.float64,
                           device=original_samples.device)
        lam = lam.reshape(-1, *([1] * (original_samples.dim() - 1))) if lam.numel() > 1 else lam.reshape(())
        masked = noise.to(device=original_samples.device, dtype=torch.float64) < lam
        return torch.where(masked, torch.full_like(original_samples, self.config.mask_token_id), original_samples)

    def reveal_steps(self, sample: torch.LongTensor, generator: Generators = None) -> torch.LongTensor:
        """The stage-1 choices of a whole run drawn at once: for each masked position of ``sample``
        the step index at which it is revealed (-1 for fixed tokens); same law as the step-by-step
        Bernoulli(ψ_i) draws (:func:`~diffkit.samplers.absorbing.draw_reveal_steps`). Pass
        ``unmask=(steps == i)`` to ``step`` -- steps with no reveal then need no call at all."""
        u = _uniform(tuple(sample.shape), generator, sample.device)
        steps = draw_reveal_steps(self.psis, u)
        return torch.where(sample == self.config.mask_token_id, steps, torch.full_like(steps, -1))

    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.LongTensor, *,
             generator: Generators = None, temperature: Optional[float] = None, top_k: Optional[int] = None,
             top_p: Optional[float] = None, unmask: Optional[torch.BoolTensor] = None,
             final_step: Optional[bool] = None, mask_token_id: Optional[int] = None, return_dict: bool = True):
        """One reverse step t_i -> t_{i+1}.

        ``unmask`` (bool [B, L]) replaces the Bernoulli(ψ) choice by given positions (pre-drawn with
        :meth:`reveal_steps`, or an any-order autoregressive order); masked positions only are used.
        ``final_step`` (default: the last timestep) says whether the ``final`` rule applies
        (``"argmax"``) -- pass False in autoregressive use. ``generator`` may be a list of B
        generators (row b draws only from generator b: results do not depend on the batch).
        ``mask_token_id`` (as diffusers' ``BlockRefinementScheduler.step`` takes it) must be the
        config's: the mask id is part of the scheduler's configuration, not a per-call choice."""
        i = int(timestep)
        if not 0 <= i < self.num_inference_steps:
            raise ValueError(f"timestep must be a step index in [0, {self.num_inference_steps - 1}], got {i}")
        if sample.dim() != 2 or model_output.dim() != 3 or model_output.shape[:2] != sample.shape:
            raise ValueError(f"model_output must be [B, L, N] and sample [B, L]; got {tuple(model_output.shape)} "
                             f"and {tuple(sample.shape)}")
        cfg = self.config
        if mask_token_id is not None and mask_token_id != cfg.mask_token_id:
            raise ValueError(f"mask_token_id={mask_token_id!r} differs from the scheduler's configured mask_token_id "
                             f"{cfg.mask_token_id}; build the scheduler with mask_token_id={mask_token_id!r} instead")
        if temperature is None and top_k is None and top_p is None:
            temperature, top_k, top_p = cfg.temperature, _top_k(cfg.top_k), cfg.top_p
        else:
            temperature = cfg.temperature if temperature is None else temperature
            top_k = cfg.top_k if top_k is None else top_k
            top_p = cfg.top_p if top_p is None else top_p
            temperature, top_k, top_p = _check_filters(temperature, top_k, top_p)
        if isinstance(generator, (list, tuple)) and len(generator) != sample.shape[0]:
            raise ValueError(f"generator list must have one generator per row ({sample.shape[0]}), "
                             f"got {len(generator)}")

        B, L = sample.shape
        mask_id = cfg.mask_token_id
        masked = sample == mask_id
        last = i == self.num_inference_steps - 1
        final_rule = last if final_step is None else bool(final_step)
        if unmask is not None:
            if unmask.shape != sample.shape:
                raise ValueError(f"unmask must have the shape of sample {tuple(sample.shape)}, "
                                 f"got {tuple(unmask.shape)}")
            reveal = unmask & masked
        else:
            u = _uniform((B, L), generator, sample.device)  # drawn every step: the stream never depends on the state
            reveal = masked if last else choose_unmask(masked, self.psis[i], u)

        pos = reveal.nonzero()
        if pos.shape[0] == 0:
            out = (sample, torch.zeros(B, L, dtype=torch.float64, device=sample.device), model_output,
                   reveal, torch.zeros(B, dtype=torch.bool, device=sample.device))
            return RADDSchedulerOutput(*out) if return_dict else out

        rows, cols = pos[:, 0], pos[:, 1]
        logits = model_output[rows, cols]  # [K, N]: only the positions that unmask are touched
        N = logits.shape[-1]
        if mask_id == N - 1:
            logits = logits[:, :-1]
        elif mask_id < N:
            logits = logits.clone()
            logits[:, mask_id] = -float("inf")
        logits = logits.to(torch.float64)
        w = unnormalised_probs(logits)  # ∝ the raw distribution over real tokens

        if temperature == 0 or (final_rule and cfg.final == "argmax"):
            tokens = torch.argmax(logits, dim=-1)
        elif cfg.precision == "float64":
            u2 = _uniform_per_position(rows, B, generator, sample.device)
            if temperature == 1 and top_k is None and top_p is None:
                tokens = inverse_cdf(w, u2)
            else:
                tokens = sample_categorical(filter_logits(logits, temperature, top_k, top_p), u=u2)
        else:
            g = _uniform_per_position(rows, B, generator, sample.device, extra=(logits.shape[-1],))
            tokens = sample_categorical(filter_logits(logits, temperature, top_k, top_p), u=g, precision="float32")

        prev = sample.clone()
        prev[rows, cols] = tokens
        probs = torch.zeros(B, L, dtype=torch.float64, device=sample.device)
        probs[rows, cols] = w.gather(-1, tokens[:, None]).squeeze(-1) / w.sum(-1)
        changed = torch.zeros(B, dtype=torch.bool, device=sample.device)
        changed[rows] = True
        out = (prev, probs, model_output, reveal, changed)
        return RADDSchedulerOutput(*out) if return_dict else out

    def __len__(self):
        return self.num_inference_steps
