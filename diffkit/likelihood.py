"""Likelihood of a text under an absorbing-diffusion denoiser (RADD, arXiv:2406.03736 §3.3, App. C, G).

* :func:`lambda_dce_nll` -- the λ-DCE upper bound on -log p(x₀), a Monte Carlo average over
  masking rates λ of (1/λ) Σ_{masked i} -log c_θ(x₀ⁱ | unmasked), each token masked with
  probability λ. Integrating λ out gives exactly the any-order autoregressive NLL averaged over
  uniformly random orders (App. C.3): E_λ[...] = E_π[Σ_k -log c_θ(x^{π_k} | x^{π_<k})].
* :func:`k_dce_nll` -- the same bound with exactly k ~ U{1..L} positions masked, weight L/k.
* :func:`ar_nll` -- the exact NLL of the fixed-order autoregressive model the denoiser defines
  (one masked-input evaluation per position; ``order`` = forward / backward / a permutation).
* :func:`blocked_nll` -- a text longer than the model's length, cut into blocks, each block
  estimated with its own seed ``seed + block index`` (:func:`block_seed`, the one rule of
  ``diffkit text nll`` and the model card's held-out bound): the blocks' Monte Carlo errors are
  then independent and their standard errors add in quadrature.

k-DCE is the default estimator: its weight L/k is bounded, so it has finite variance and its
standard error is an honest error bar. λ-DCE's weight 1/λ makes its variance infinite (the
second moment of (1/λ)·Σ_masked CE grows like L/λ as λ → 0, whose integral diverges), even
though its mean is the same bound.

All sums are in float64; results are in nats per sequence. The model interface is the one of
:mod:`diffkit.pipelines.discrete`: ``model(ids) -> [B, L, N]`` log-probs or logits, column v =
token v, the mask column ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

__all__ = ["NLLResult", "lambda_dce_nll", "k_dce_nll", "ar_nll", "token_nll", "estimate_nll", "blocked_nll",
           "split_blocks", "block_seed", "ESTIMATORS", "DEFAULT_ESTIMATOR"]

ESTIMATORS = ("k-dce", "lambda-dce", "ar-forward", "ar-backward", "ar-random")
DEFAULT_ESTIMATOR = "k-dce"


@dataclass
class NLLResult:
    """NLL of one sequence in nats: ``nll`` (total), ``per_token``, ``ppl`` = exp(per_token).
    ``stderr`` is the Monte Carlo standard error (0 for the exact AR NLL); ``blocks`` holds the
    per-block results of :func:`blocked_nll`."""

    nll: float
    num_tokens: int
    estimator: str
    num_draws: int = 0
    stderr: float = 0.0
    draws: list = field(default_factory=list, repr=False)
    blocks: list = field(default_factory=list, repr=False)  # per-block results (blocked_nll)

    @property
    def per_token(self) -> float:
        return self.nll / max(self.num_tokens, 1)

    @property
    def ppl(self) -> float:
        return math.exp(self.per_token)

    def summary(self) -> str:
        se = f" ± {self.stderr:.3f}" if self.stderr else ""
        return (f"{self.estimator}: NLL {self.nll:.3f}{se} nats over {self.num_tokens} tokens = "
                f"{self.per_token:.4f} nats/token, PPL {self.ppl:.3f}"
                + (f" ({self.num_draws} draws)" if self.num_draws else ""))


def _mask_id(model, mask_token_id):
    if mask_token_id is not None:
        return int(mask_token_id)
    if hasattr(model, "mask_token_id"):
        return int(model.mask_token_id)
    raise ValueError("mask_token_id is required for a model without a mask_token_id attribute")


def _vocab_size(model) -> Optional[int]:
    """The model's number of real tokens V if it says (``config.vocab_size``), else None."""
    cfg = getattr(model, "config", None)
    try:
        return int(cfg["vocab_size"] if isinstance(cfg, dict) else cfg.vocab_size)
    except (AttributeError, KeyError, TypeError):
        return None


def _check_real(x: torch.Tensor, mask_id: int, V: Optional[int], name: str = "ids") -> None:
    bad = (x < 0) | (x == mask_id)
    if V is not None:
        bad |= x >= V
    if bad.any():
        span = f"0..{V - 1}" if V is not None else ">= 0"
        raise ValueError(f"{name} must be real tokens ({span}, not the mask id {mask_id}); {int(bad.sum())} "
                         f"position(s) are not: {sorted(set(x[bad].tolist()))[:10]}")


def _ids(ids, mask_id, V: Optional[int] = None) -> torch.LongTensor:
    x = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if x.numel() == 0:
        raise ValueError("the text is empty")
    _check_real(x, mask_id, V)
    return x


def token_nll(model, noisy: torch.LongTensor, clean: torch.LongTensor, mask_id: int) -> torch.Tensor:
    """-log c_θ(clean | noisy) at every position ([B, L], float64), renormalised over real tokens."""
    out = model(noisy)
    N = out.shape[-1]
    if mask_id == N - 1:
        out = out[..., :-1]
    elif mask_id < N:
        out = out.clone()
        out[..., mask_id] = -math.inf
    _check_real(clean, mask_id, out.shape[-1], "clean ids")  # a model without config.vocab_size
    logp = torch.log_softmax(out.to(torch.float64), dim=-1)
    return -logp.gather(-1, clean.to(out.device)[..., None].expand(*noisy.shape, 1)).squeeze(-1)


def _device(model):
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _generator(generator, seed):
    return generator if generator is not None else torch.Generator().manual_seed(int(seed))


@torch.no_grad()
def _mc(model, x, masks: torch.Tensor, weights: torch.Tensor, mask_id, batch_size, estimator) -> NLLResult:
    """Per draw d: weight_d · Σ_{i masked in draw d} -log c_θ(x_i | x with mask d)."""
    dev = _device(model)
    vals = []
    for s in range(0, masks.shape[0], batch_size):
        m = masks[s:s + batch_size]
        noisy = torch.where(m, torch.full_like(m, mask_id, dtype=torch.long), x.expand_as(m)).to(dev)
        ce = token_nll(model, noisy, x.expand_as(m), mask_id).cpu()
        vals.append((ce * m).sum(-1) * weights[s:s + batch_size])
    v = torch.cat(vals)
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return NLLResult(float(v.mean()), x.numel(), estimator, len(v), se, v.tolist())


def lambda_dce_nll(model, ids, num_draws: int = 64, *, generator: Optional[torch.Generator] = None, seed: int = 0,
                   batch_size: int = 16, mask_token_id: Optional[int] = None, stratified: bool = True) -> NLLResult:
    """λ-DCE bound (RADD ``lambda_DCE``): draws λ_d in (0, 1) -- stratified λ_d = (u_d + d)/D by
    default -- masks each token with probability λ_d, weights the masked cross-entropy by 1/λ_d."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    mask_id = _mask_id(model, mask_token_id)
    x = _ids(ids, mask_id, _vocab_size(model))
    g = _generator(generator, seed)
    u = torch.rand(num_draws, generator=g, dtype=torch.float64)
    lam = (u + torch.arange(num_draws, dtype=torch.float64)) / num_draws if stratified else u
    lam = lam.clamp_min(1e-12)
    masks = torch.rand(num_draws, x.numel(), generator=g, dtype=torch.float64) < lam[:, None]
    return _mc(model, x, masks, 1.0 / lam, mask_id, batch_size, "lambda-dce")


def k_dce_nll(model, ids, num_draws: int = 64, *, generator: Optional[torch.Generator] = None, seed: int = 0,
              batch_size: int = 16, mask_token_id: Optional[int] = None) -> NLLResult:
    """k-DCE bound (RADD's AO-ARM loss): k ~ U{1..L}, exactly k random positions masked, weight L/k."""
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    mask_id = _mask_id(model, mask_token_id)
    x = _ids(ids, mask_id, _vocab_size(model))
    L = x.numel()
    g = _generator(generator, seed)
    k = torch.randint(1, L + 1, (num_draws,), generator=g)
    ranks = torch.rand(num_draws, L, generator=g).argsort(-1).argsort(-1)  # a uniform random permutation per draw
    masks = ranks < k[:, None]
    return _mc(model, x, masks, L / k.to(torch.float64), mask_id, batch_size, "k-dce")


@torch.no_grad()
def ar_nll(model, ids, order: Union[str, Sequence[int], torch.Tensor] = "forward", *, batch_size: int = 16,
           mask_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
           seed: int = 0) -> NLLResult:
    """Exact NLL of the autoregressive factorisation in ``order``: Σ_k -log c_θ(x^{π_k} | x^{π_<k}),
    the conditional at step k evaluated with positions π_k..π_{L-1} masked (L network rows)."""
    mask_id = _mask_id(model, mask_token_id)
    x = _ids(ids, mask_id, _vocab_size(model))
    L = x.numel()
    if isinstance(order, str):
        if order not in ("forward", "backward", "random"):
            raise ValueError(f"order must be 'forward', 'backward', 'random' or a permutation, got {order!r}")
        perm = {"forward": torch.arange(L), "backward": torch.arange(L - 1, -1, -1)}.get(order)
        if perm is None:
            perm = torch.randperm(L, generator=_generator(generator, seed))
        name = f"ar-{order}"
    else:
        perm = torch.as_tensor(order, dtype=torch.long).reshape(-1)
        if perm.numel() != L or not (perm.sort().values == torch.arange(L)).all():
            raise ValueError(f"order must be a permutation of 0..{L - 1}")
        name = "ar-order"
    rank = torch.empty(L, dtype=torch.long)
    rank[perm] = torch.arange(L)
    masks = rank[None, :] >= torch.arange(L)[:, None]  # row k: positions π_k.. masked
    dev = _device(model)
    total = 0.0
    for s in range(0, L, batch_size):
        m = masks[s:s + batch_size]
        noisy = torch.where(m, torch.full_like(m, mask_id, dtype=torch.long), x.expand_as(m)).to(dev)
        ce = token_nll(model, noisy, x.expand_as(m), mask_id).cpu()
        total += float(ce.gather(1, perm[s:s + batch_size, None]).sum())
    return NLLResult(total, L, name)


def estimate_nll(model, ids, estimator: str = DEFAULT_ESTIMATOR, num_draws: int = 64, *, seed: int = 0,
                 batch_size: int = 16, mask_token_id: Optional[int] = None) -> NLLResult:
    """One sequence by name: ``"k-dce"`` / ``"lambda-dce"`` (``num_draws`` Monte Carlo draws) or
    ``"ar-forward"`` / ``"ar-backward"`` / ``"ar-random"`` (exact NLL of that order)."""
    kw = dict(seed=seed, batch_size=batch_size, mask_token_id=mask_token_id)
    if estimator == "k-dce":
        return k_dce_nll(model, ids, num_draws, **kw)
    if estimator == "lambda-dce":
        return lambda_dce_nll(model, ids, num_draws, **kw)
    if estimator in ("ar-forward", "ar-backward", "ar-random"):
        return ar_nll(model, ids, estimator[3:], **kw)
    raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of a text scored with ``seed``: ``seed + block``. Every block
    gets its own draws, so the blocks' Monte Carlo errors are independent (one seed for all
    blocks would draw the same λ / k and masks in each, and their errors would add coherently).
    Runs at seeds s and s + 1 share the draws of shifted blocks: space seeds by at least the
    number of blocks to compare independent runs."""
    return int(seed) + int(block)


def split_blocks(ids, length: int, drop_last: bool = False) -> list:
    """Consecutive blocks of ``length`` ids; the last one shorter unless ``drop_last``."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    ids = list(ids.tolist() if isinstance(ids, torch.Tensor) else ids)
    stop = len(ids) - length + 1 if drop_last else len(ids)
    return [ids[i:i + length] for i in range(0, max(stop, 0), length)]


def blocked_nll(model, blocks: Sequence, estimator: str = DEFAULT_ESTIMATOR, num_draws: int = 64, *, seed: int = 0,
                batch_size: int = 16, mask_token_id: Optional[int] = None) -> NLLResult:
    """NLL of a text given as ``blocks`` (e.g. :func:`split_blocks` at the model's length), each
    scored independently by :func:`estimate_nll` with seed :func:`block_seed` (seed, k). ``nll``
    and ``num_tokens`` are the sums, ``stderr`` = sqrt(Σ_k stderr_k²) (independent blocks);
    ``blocks`` holds the per-block results."""
    if not len(blocks):
        raise ValueError("the text is empty (no blocks)")
    res = [estimate_nll(model, b, estimator, num_draws, seed=block_seed(seed, k), batch_size=batch_size,
                        mask_token_id=mask_token_id) for k, b in enumerate(blocks)]
    se = math.sqrt(sum(r.stderr ** 2 for r in res))
    return NLLResult(sum(r.nll for r in res), sum(r.num_tokens for r in res), res[0].estimator, res[0].num_draws,
                     se, blocks=res)
