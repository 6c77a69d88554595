"""Tiny randomly initialised diffusers models and pipelines built in code, with
a real CLIP tokenizer: the same code paths as real checkpoints, no download.
Used by the tests, `vico demo` and the benchmarks."""
from __future__ import annotations

import torch

from .tokenizer import clip_tokenizer


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_unet3d(seed: int = 0, channels=(32, 64), cross_attention_dim: int = 32, layers_per_block: int = 1, **kw):
    """UNet3DConditionModel (ZeroScope / ModelScope layout) with few channels."""
    from diffusers import UNet3DConditionModel

    _seeded(seed)
    n = len(channels)
    down = tuple(["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"])
    up = tuple(["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (n - 1))
    return UNet3DConditionModel(
        block_out_channels=tuple(channels), layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8, down_block_types=down, up_block_types=up, in_channels=4,
        out_channels=4, sample_size=32, **kw,
    ).eval()


def tiny_motion_unet(seed: int = 0, cross_attention_dim: int = 32):
    """UNetMotionModel (AnimateDiff) with few channels."""
    from diffusers import UNetMotionModel

    _seeded(seed)
    return UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=cross_attention_dim,
        num_attention_heads=4, norm_num_groups=32,
    ).eval()


def tiny_cogvideox(seed: int = 0, text_len: int = 16, text_dim: int = 32):
    """CogVideoXTransformer3DModel: 2 joint blocks, patch 2."""
    from diffusers import CogVideoXTransformer3DModel

    _seeded(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=text_dim, num_layers=2, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=text_len,
    ).eval()


def tiny_latte(seed: int = 0, text_dim: int = 32, frames: int = 3):
    """LatteTransformer3DModel: 2 spatial + 2 temporal blocks, patch 2."""
    from diffusers import LatteTransformer3DModel

    _seeded(seed)
    return LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=16,
        patch_size=2, cross_attention_dim=16, caption_channels=text_dim, video_length=frames,
        norm_type="ada_norm_single",
    ).eval()


def tiny_text_encoder(seed: int = 0, hidden: int = 32):
    """A CLIP text encoder with the real vocabulary size and random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407, projection_dim=hidden)
    return CLIPTextModel(cfg).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(block_out_channels=(32,), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=8, sample_size=32).eval()


def tiny_text_to_video_pipeline(seed: int = 0):
    """A TextToVideoSDPipeline (ZeroScope / ModelScope) of tiny random models
    with CLIP's real tokenizer. The VAE has no downsampling: latent = pixels."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline(
        vae=tiny_vae(seed), text_encoder=tiny_text_encoder(seed), tokenizer=clip_tokenizer(),
        unet=tiny_unet3d(seed), scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False),
    )
    return pipe
