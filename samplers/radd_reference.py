"""A reference of the official RADD ``direct`` draw -- for tests and benchmarks only.

Reimplemented from a description of the official sampler (``DiffusionSampler`` with the
``direct`` strategy; arXiv:2406.03736 App. D.4 for the step law), not from the official code.
Per masked position the official sampler builds a (V+1)-vector -- ψ·p(v) on the real tokens
and 1 - ψ in the mask column (ψ = 1 + 1e-3 at the last step, so the mask weight is negative there) --
stores it in a **float16**
buffer, and draws the winner of an exponential race
in **float32**: argmax_j q_j / E_j with E_j = 1e-10 - log(U_j + 1e-10).

Because a float32 uniform is at most 1 - 2⁻²⁴, E_j >= ~6e-8: a real token whose ψ·p is below
roughly 1e-8 can practically never beat the mask column, and in float16 ψ·p below 3e-8 is 0.
With an uncertain model over GPT-2's 50,257 tokens and small ψ, early reveals are suppressed
and the sampler reports fewer NFEs than the process it claims to simulate (docs/methods/radd.md).
diffkit's sampler (:mod:`diffkit.samplers.absorbing`) does not have this flaw.

Drawing V+1 exponentials per position and step is slow at V = 50,257, so for a *uniform* model
(all real tokens equally likely) :func:`joint_race_unmask_uniform` simulates the same race
exactly and cheaply: all real tokens share one weight, so the best of them is the one with the
largest of V float32 uniforms, whose distribution is known -- torch's float32 ``rand`` returns
k·2⁻²⁴ with k uniform on {0, ..., 2²⁴-1}, so P(max <= k·2⁻²⁴) = ((k+1)/2²⁴)^V.
"""

from __future__ import annotations

import torch

from diffkit.samplers.absorbing import LogLinearSchedule, time_grid, transition_probs

__all__ = ["race_noise", "joint_race_draw", "joint_race_step", "max_uniform_float32", "joint_race_unmask_uniform",
           "simulate_joint_race_nfe", "FINAL_PSI"]

FINAL_PSI = 1.0 + 1e-3  # the official last step: the "stay" weight 1 - ψ is negative
_TWO24 = float(2 ** 24)


def race_noise(u: torch.Tensor) -> torch.Tensor:
    """E = 1e-10 - log(U + 1e-10), all in float32 (the float32 exponential noise of the race)."""
    u = u.float()
    return 1e-10 - torch.log(u + 1e-10)


def _weights(real_probs: torch.Tensor, psi: float):
    """ψ·p on the real tokens and 1 - ψ for the mask column (float64 before the buffer cast)."""
    return real_probs.to(torch.float64) * psi, 1.0 - psi


def joint_race_draw(weights: torch.Tensor, *, generator=None, buffer_dtype=torch.float16) -> torch.Tensor:
    """Winner of the race over the columns of ``weights`` ([K, V+1]; last column = mask), after a
    round trip through ``buffer_dtype``. Brute force: K·(V+1) float32 uniforms."""
    q = weights.to(buffer_dtype).float()
    u = torch.rand(q.shape, generator=generator, dtype=torch.float32)
    return torch.argmax(q / race_noise(u), dim=-1)


def joint_race_step(log_probs: torch.Tensor, sample: torch.LongTensor, psi: float, mask_token_id: int, *,
                    final: bool = False, generator=None, buffer_dtype=torch.float16):
    """One official-style ``direct`` step for every masked position of ``sample`` ([B, L]) given
    model log-probs ``log_probs`` ([B, L, >= V]; columns 0..V-1 = real tokens, V = mask id).
    Returns (prev_sample, changed_rows)."""
    V = mask_token_id
    masked = sample == V
    pos = masked.nonzero()
    prev = sample.clone()
    if pos.shape[0] == 0:
        return prev, torch.zeros(sample.shape[0], dtype=torch.bool)
    p = log_probs[pos[:, 0], pos[:, 1], :V].double().exp()
    real, stay = _weights(p, FINAL_PSI if final else psi)
    w = torch.cat([real, torch.full((p.shape[0], 1), stay, dtype=torch.float64)], dim=1)
    win = joint_race_draw(w, generator=generator, buffer_dtype=buffer_dtype)
    hit = win != V
    prev[pos[hit, 0], pos[hit, 1]] = win[hit]
    changed = torch.zeros(sample.shape[0], dtype=torch.bool)
    changed[pos[hit, 0]] = True
    return prev, changed


def max_uniform_float32(count: int, shape, generator=None) -> torch.Tensor:
    """Exact draw of the maximum of ``count`` float32 ``torch.rand`` values, one per entry of ``shape``:
    k = ceil(2²⁴ W^{1/count}) - 1 for W ~ U(0, 1) inverts P(max <= k·2⁻²⁴) = ((k+1)/2²⁴)^count."""
    w = torch.rand(shape, generator=generator, dtype=torch.float64)
    k = torch.ceil(_TWO24 * torch.exp(torch.log(w) / count)) - 1
    return (k.clamp(0, _TWO24 - 1) / _TWO24).float()  # exact: k < 2^24 fits float32


def joint_race_unmask_uniform(num: int, vocab_size: int, psi: float, *, final: bool = False, generator=None,
                              buffer_dtype=torch.float16) -> torch.Tensor:
    """For ``num`` masked positions of a uniform model (p = 1/V): does a real token win the race?
    Exactly the brute-force race's law (ties go to the real tokens, as argmax picks the first)."""
    real, stay = _weights(torch.tensor(1.0 / vocab_size), FINAL_PSI if final else psi)
    q_real = real.to(buffer_dtype).float()
    q_mask = torch.tensor(stay, dtype=torch.float64).to(buffer_dtype).float()
    e_min = race_noise(max_uniform_float32(vocab_size, (num,), generator))
    e_mask = race_noise(torch.rand(num, generator=generator, dtype=torch.float32))
    return q_real / e_min >= q_mask / e_mask


def simulate_joint_race_nfe(num_steps: int, length: int, vocab_size: int, num_samples: int, *, generator=None,
                            buffer_dtype=torch.float16, sampling_eps: float = 1e-5) -> torch.Tensor:
    """Per-sample NFE (steps with >= 1 reveal, the official ``update_cnt`` of the direct path) of
    the official race with a uniform model, log-linear schedule, uniform grid, batch of 1 each."""
    psis = transition_probs(LogLinearSchedule(), time_grid(num_steps, sampling_eps))
    masked = torch.full((num_samples,), length, dtype=torch.long)
    nfe = torch.zeros(num_samples, dtype=torch.long)
    rows = torch.arange(num_samples)
    for i, psi in enumerate(psis):
        total = int(masked.sum())
        if total == 0:
            break
        hit = joint_race_unmask_uniform(total, vocab_size, psi, final=i == num_steps - 1, generator=generator,
                                        buffer_dtype=buffer_dtype)
        counts = torch.zeros(num_samples, dtype=torch.long).index_add_(0, rows.repeat_interleave(masked), hit.long())
        nfe += counts > 0
        masked -= counts
    return nfe
