"""Tiny offline models for tests, examples and the GPU-less demo (no hub access).

Everything is built from configs under a fixed seed: a UNet2DModel (unconditional or
class-conditional), a StableDiffusionPipeline and a StableDiffusionXLPipeline whose CLIP
tokenizer is written locally (toy vocabulary, ``model_max_length=77``). The tokenizer is
loaded with ``from_pretrained`` from files, which works on transformers 4.x and 5.x.
"""

from __future__ import annotations

import json
import os
import string
import tempfile

import torch

__all__ = ["tiny_unet2d", "tiny_ddim_scheduler", "toy_clip_tokenizer", "tiny_sd_pipeline", "tiny_sdxl_pipeline"]


def tiny_ddim_scheduler(**overrides):
    from diffusers import DDIMScheduler

    cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)
    cfg.update(overrides)
    return DDIMScheduler(**cfg)


def tiny_unet2d(num_classes: int | None = None, sample_size: int = 8, channels: int = 1, seed: int = 0,
                prediction_type: str | None = None):
    """A ~30k-parameter UNet2DModel; class-conditional with ``num_class_embeds = n + 1`` (null last)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=None if num_classes is None else num_classes + 1,
        attention_head_dim=8,
    ).eval()


def toy_clip_tokenizer(directory: str | None = None):
    """A CLIPTokenizer over characters and a few merges, saved to and loaded from ``directory``."""
    from transformers import CLIPTokenizer

    directory = directory or tempfile.mkdtemp(prefix="diffkit-tok-")
    chars = list(string.ascii_lowercase + string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["#version: 0.2"]
    for pair in [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>")]:
        merges.append(" ".join(pair))
        vocab["".join(pair)] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=77)


def _text_encoder(hidden: int, projection: int | None, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden,
                         intermediate_size=2 * hidden, layer_norm_eps=1e-5, num_attention_heads=2,
                         num_hidden_layers=2, vocab_size=100, hidden_act="gelu", projection_dim=projection or hidden,
                         max_position_embeddings=77)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                         up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
                         norm_num_groups=4, sample_size=32).eval()


def tiny_sd_pipeline(scheduler=None, seed: int = 0):
    """A StableDiffusionPipeline with a 32×32 image / 16×16×4 latent, all random weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=4).eval()
    return StableDiffusionPipeline(unet=unet, scheduler=scheduler or tiny_ddim_scheduler(), vae=_vae(seed),
                                   text_encoder=_text_encoder(16, None, seed), tokenizer=toy_clip_tokenizer(),
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)


def tiny_sdxl_pipeline(scheduler=None, seed: int = 0):
    """A StableDiffusionXLPipeline (two text encoders, text_time embedding), random weights."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                                cross_attention_dim=64, norm_num_groups=4).eval()
    return StableDiffusionXLPipeline(unet=unet, scheduler=scheduler or tiny_ddim_scheduler(), vae=_vae(seed),
                                     text_encoder=_text_encoder(32, None, seed),
                                     text_encoder_2=_text_encoder(32, 32, seed + 1),
                                     tokenizer=toy_clip_tokenizer(), tokenizer_2=toy_clip_tokenizer(),
                                     image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=False)
