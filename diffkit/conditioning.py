"""What a UNet is conditioned on, and classifier-free guidance's one batch layout.

Layout used everywhere in diffkit (the one diffusers' SD/SDXL pipelines use): when
guidance is on, the model runs once on ``cat([uncond, cond])`` and the output is
``out_u + w · (out_c - out_u)``. At ``w == 1`` (or without an unconditional branch) the
model runs once on the conditional input only.

Class-conditional convention: ``num_class_embeds = n_classes + 1``; the null
(unconditional) class is the last index, ``num_class_embeds - 1``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch

__all__ = ["Condition", "Guidance", "class_guidance", "prompt_guidance", "null_class_label", "num_classes"]


def _expand(x: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    if x is None or x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise ValueError(f"condition batch size {x.shape[0]} does not match the sample batch size {n}")


@dataclass
class Condition:
    """The conditioning tensors of one branch (keyword names as diffusers UNets take them)."""

    class_labels: Optional[torch.Tensor] = None
    encoder_hidden_states: Optional[torch.Tensor] = None
    added_cond_kwargs: Optional[dict] = None  # SDXL: {"text_embeds": ..., "time_ids": ...}

    def expand(self, n: int) -> "Condition":
        added = (None if self.added_cond_kwargs is None
                 else {k: _expand(v, n) for k, v in self.added_cond_kwargs.items()})
        return Condition(_expand(self.class_labels, n), _expand(self.encoder_hidden_states, n), added)

    def to(self, device=None, dtype=None) -> "Condition":
        def mv(x, float_cast=True):
            if x is None:
                return None
            if x.is_floating_point() and dtype is not None and float_cast:
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        added = None if self.added_cond_kwargs is None else {k: mv(v) for k, v in self.added_cond_kwargs.items()}
        return Condition(mv(self.class_labels), mv(self.encoder_hidden_states), added)

    @staticmethod
    def cat(first: "Condition", second: "Condition") -> "Condition":
        def c(a, b):
            if a is None and b is None:
                return None
            if a is None or b is None:
                raise ValueError("both guidance branches must carry the same condition fields")
            return torch.cat([a, b])

        added = None
        if first.added_cond_kwargs is not None or second.added_cond_kwargs is not None:
            fa, sa = first.added_cond_kwargs or {}, second.added_cond_kwargs or {}
            if set(fa) != set(sa):
                raise ValueError("both guidance branches must carry the same added_cond_kwargs keys")
            added = {k: torch.cat([fa[k], sa[k]]) for k in fa}
        return Condition(c(first.class_labels, second.class_labels),
                         c(first.encoder_hidden_states, second.encoder_hidden_states), added)

    def unet_kwargs(self) -> dict:
        kw = {}
        if self.class_labels is not None:
            kw["class_labels"] = self.class_labels
        if self.encoder_hidden_states is not None:
            kw["encoder_hidden_states"] = self.encoder_hidden_states
        if self.added_cond_kwargs is not None:
            kw["added_cond_kwargs"] = self.added_cond_kwargs
        return kw


@dataclass
class Guidance:
    """A conditional branch, an optional unconditional one and the guidance scale w."""

    cond: Condition = field(default_factory=Condition)
    uncond: Optional[Condition] = None
    scale: float = 1.0

    @property
    def active(self) -> bool:
        """Whether two branches are evaluated (w != 1 and an unconditional branch exists)."""
        return self.uncond is not None and self.scale != 1.0

    def with_scale(self, scale: float) -> "Guidance":
        return replace(self, scale=float(scale))


# ---------------------------------------------------------------------- class labels
def num_classes(unet) -> int:
    """Number of real classes of a class-conditional UNet (diffkit convention: n + 1 embeds)."""
    n = getattr(unet.config, "num_class_embeds", None)
    if not n:
        return 0
    return int(n) - 1


def null_class_label(unet) -> int:
    n = num_classes(unet)
    if n <= 0:
        raise ValueError("this UNet is not class-conditional (config.num_class_embeds is not set)")
    return n


def class_guidance(unet, labels, guidance_scale: float = 1.0, device=None) -> Guidance:
    """Guidance for a class-conditional UNet; labels in [0, n_classes-1]."""
    n = num_classes(unet)
    if n <= 0:
        raise ValueError("class labels were given but the UNet is not class-conditional (num_class_embeds unset)")
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    bad = labels[(labels < 0) | (labels >= n)]
    if bad.numel():
        raise ValueError(f"class label(s) {sorted(set(bad.tolist()))} out of range: accepted labels are 0..{n - 1}")
    uncond = Condition(class_labels=torch.full_like(labels, n)) if guidance_scale != 1.0 else None
    return Guidance(Condition(class_labels=labels), uncond, float(guidance_scale))


# ---------------------------------------------------------------------- prompts
def prompt_guidance(pipe, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                    guidance_scale: float = 1.0, height: int | None = None, width: int | None = None,
                    device=None) -> Guidance:
    """Encode prompts with a StableDiffusion(XL) pipeline's own text encoder(s).

    SDXL additionally gets pooled text embeddings and ``add_time_ids`` (original size
    = target size = (height, width), crop (0, 0)), as its pipeline makes them (SDXL img2img and
    inpainting pipelines: their own layout, with their default aesthetic scores when the
    checkpoint uses them).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"prompt: expected a non-empty string (or list of them), got {prompt!r}")
    device = device or getattr(pipe, "_execution_device", None) or pipe.device
    cfg = guidance_scale != 1.0
    neg = negative_prompt if negative_prompt is not None else ""
    neg = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
    if hasattr(pipe, "text_encoder_2"):  # SDXL
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=neg)
        scale = pipe.vae_scale_factor
        h = height or pipe.unet.config.sample_size * scale
        w = width or pipe.unet.config.sample_size * scale
        proj_dim = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                    else int(pooled.shape[-1]))
        call = inspect.signature(type(pipe).__call__).parameters
        if "aesthetic_score" in call:  # SDXL img2img / inpainting: their call's aesthetic-score defaults
            time_ids, neg_time_ids = pipe._get_add_time_ids(
                (h, w), (0, 0), (h, w), call["aesthetic_score"].default, call["negative_aesthetic_score"].default,
                (h, w), (0, 0), (h, w), dtype=pe.dtype, text_encoder_projection_dim=proj_dim)
        else:
            time_ids = neg_time_ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=pe.dtype,
                                                             text_encoder_projection_dim=proj_dim)
        time_ids, neg_time_ids = time_ids.to(device), neg_time_ids.to(device)
        cond = Condition(encoder_hidden_states=pe,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(pe.shape[0], -1)})
        neg_added = {"text_embeds": npooled, "time_ids": neg_time_ids.expand(npe.shape[0], -1)}
        uncond = Condition(encoder_hidden_states=npe, added_cond_kwargs=neg_added)
    else:
        pe, npe = pipe.encode_prompt(prompts, device, 1, True, neg)
        cond, uncond = Condition(encoder_hidden_states=pe), Condition(encoder_hidden_states=npe)
    return Guidance(cond, uncond if cfg else None, float(guidance_scale))
