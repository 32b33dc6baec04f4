"""The score-function interface of ``diffkit.analysis`` and the diffusers UNet adapter.

A *score function* is any callable ``score_fn(x, t) -> s`` with ``x`` of shape (B, *S),
``t`` a float64 tensor of shape (B,) in its process's time units, and ``s`` of the same
shape as ``x``. It is a vector field on R^D (D = prod(S)); it need not be a gradient.
The tools flatten to (B, D) internally (:func:`flat`) and check every returned shape.

Coordinates: ``s = ∇_x log p_t(x)`` in the process's own coordinates (see
:mod:`diffkit.analysis.processes`). For a diffusers ε-model that is the VP score
``s(z, t) = -ε(z, t) / std_vp(t)``, z the VP latent (:class:`UNetScore`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from diffkit.analysis.processes import DiscreteVPProcess, as_times
from diffkit.conditioning import Condition, Guidance, class_guidance
from diffkit.denoisers import EpsModel

__all__ = ["check_score_output", "flat", "UNetScore", "math_attention", "use_math_attention", "restore_attention"]


def check_score_output(s, x: torch.Tensor, name: str = "score_fn") -> torch.Tensor:
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(s).__name__}")
    if s.shape != x.shape:
        raise ValueError(f"{name} returned shape {tuple(s.shape)} for an input of shape {tuple(x.shape)}; "
                         "a score function must return a tensor of the input's shape")
    return s


def flat(score_fn: Callable, sample_shape) -> Callable:
    """``score_fn`` on flattened inputs: (N, D) float, (N,) times -> (N, D), shape-checked."""
    sample_shape = tuple(sample_shape)

    def f(xf: torch.Tensor, t) -> torch.Tensor:
        x = xf.reshape(xf.shape[0], *sample_shape)
        s = check_score_output(score_fn(x, as_times(t, xf.shape[0])), x)
        return s.reshape(xf.shape[0], -1)

    return f


# ----------------------------------------------------------------------- attention
def use_math_attention(unet) -> dict:
    """Switch every diffusers ``Attention`` block to ``AttnProcessor()`` (plain matmul/softmax).

    PyTorch's fused CPU attention kernel has no forward-mode AD (pytorch#128971) and its
    double backward is limited; the math processor supports both. Returns the previous
    processors for :func:`restore_attention`.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor

    saved = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, Attention):
            saved[name] = mod.processor
            mod.set_processor(AttnProcessor())
    return saved


def restore_attention(unet, saved: dict) -> None:
    mods = dict(unet.named_modules())
    for name, proc in saved.items():
        mods[name].set_processor(proc)


@contextlib.contextmanager
def math_attention(unet):
    """Context manager: math attention inside, the original processors restored after."""
    saved = use_math_attention(unet)
    try:
        yield unet
    finally:
        restore_attention(unet, saved)


# ----------------------------------------------------------------------- UNet adapter
class UNetScore:
    """VP score of a diffusers UNet: ``s(z, t) = -ε(z, t) / std_vp(t)``.

    ``z`` is the VP latent (coordinates of the model's own schedule), ``t`` the continuous
    training timestep in [0, T-1] (between grid points the UNet gets a float timestep and
    σ is interpolated in log σ, as :class:`diffkit.denoisers.EpsModel`). ε, v and x̂0
    models all go through ``EpsModel``. ``class_label`` (an int, broadcast to the batch;
    the null class is ``num_class_embeds - 1``) and ``guidance_scale`` select the field of a
    class-conditional model. ``process`` is the matching :class:`DiscreteVPProcess`.

    With ``math_attention=True`` (default) the UNet's attention blocks are switched to
    ``AttnProcessor()`` until :meth:`close` (or the end of a ``with`` block), so forward-
    and reverse-mode derivatives both work on CPU.
    """

    def __init__(self, unet, scheduler_config, class_label: Optional[int] = None, guidance_scale: float = 1.0,
                 math_attention: bool = True):
        self.model = EpsModel(unet, scheduler_config)
        self.process = DiscreteVPProcess(self.model.schedule)
        self.unet = unet
        if class_label is None:
            if getattr(unet.config, "num_class_embeds", None):
                raise ValueError("class_label is required for a class-conditional UNet "
                                 f"(0..{unet.config.num_class_embeds - 2}, or the null class "
                                 f"{unet.config.num_class_embeds - 1} for the unconditional field)")
            self.guidance = Guidance()
        else:
            n = int(getattr(unet.config, "num_class_embeds", 0) or 0)
            if not 0 <= int(class_label) < n:
                raise ValueError(f"class_label must be in 0..{n - 1} (null class {n - 1}), got {class_label}")
            if int(class_label) == n - 1:
                self.guidance = Guidance(Condition(class_labels=torch.tensor([n - 1])))
            else:
                self.guidance = class_guidance(unet, [int(class_label)], guidance_scale)
        self.class_label = class_label
        self._saved = use_math_attention(unet) if math_attention else None

    def close(self) -> None:
        """Restore the UNet's original attention processors."""
        if self._saved is not None:
            restore_attention(self.unet, self._saved)
            self._saved = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, z: torch.Tensor, t) -> torch.Tensor:
        t = self.process.check_t(as_times(t, z.shape[0]))
        near = (t - t.round()).abs() < 1e-9
        t = torch.where(near, t.round(), t)
        t_in = t.long() if bool(near.all()) else t.to(torch.float32)
        alpha, std = self.model.levels(t_in, z)
        eps, _ = self.model.predict(z, t_in.to(z.device), self.guidance, alpha=alpha, std=std)
        return -eps / std.reshape(-1, *([1] * (z.ndim - 1)))
