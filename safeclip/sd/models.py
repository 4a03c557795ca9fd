"""The world's tiny Stable Diffusion pieces, built from params: an AutoencoderKL, a UNet2DConditionModel that
cross-attends to a CLIP text tower, and the noise schedules they are trained and sampled with.

Everything is a stock diffusers class, so the trained model is an ordinary `StableDiffusionPipeline` folder
and the paper's SD v1.4 goes through the very same loading and text-encoder swap.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from safeclip.params import WorldSd, WorldUnet, WorldVae


def build_vae(cfg: WorldVae, image_size: int) -> AutoencoderKL:
    """No mid-block attention: at 16x16 it was the VAE's main cost and bought nothing measurable."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size, mid_block_add_attention=False)


def latent_size(vae_cfg: WorldVae, image_size: int) -> int:
    return image_size // 2 ** (len(vae_cfg.block_out_channels) - 1)


def build_unet(cfg: WorldUnet, sample_size: int, latent_channels: int,
               cross_attention_dim: int) -> UNet2DConditionModel:
    """Cross-attention on the `cross_attention_levels` lowest resolutions (and the mid block): on the world's 8x8
    latents both levels (8x8, 4x4), where the glyph/word binding happens; on 16x16 latents attention at full
    resolution tripled the step time for no gain.

    Attention runs through diffusers' classic processor (baddbmm, softmax, bmm) rather than torch's fused SDPA:
    the world's heads are 8 wide, and on the CPU SDPA's flash kernel took ~36% of a training step at batch 64
    (torch.profiler); the classic processor makes a step ~12% faster (the same function: outputs agree to float
    rounding). The processor is not part of the saved config, so a loaded pipeline samples with diffusers'
    default."""
    n, k = len(cfg.block_out_channels), min(cfg.cross_attention_levels, len(cfg.block_out_channels))
    down = ("DownBlock2D",) * (n - k) + ("CrossAttnDownBlock2D",) * k
    up = ("CrossAttnUpBlock2D",) * k + ("UpBlock2D",) * (n - k)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
        **(dict(addition_embed_type="text", encoder_hid_dim=cross_attention_dim,
                addition_embed_type_num_heads=max(1, cross_attention_dim // cfg.attention_head_dim))
           if cfg.global_text else {}))
    unet.set_attn_processor(AttnProcessor())
    return unet


def train_scheduler(cfg: WorldSd) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type, rescale_betas_zero_snr=cfg.zero_terminal_snr,
        timestep_spacing="trailing" if cfg.zero_terminal_snr else "leading", clip_sample=False)


def sample_scheduler(train: DDPMScheduler) -> DDIMScheduler:
    """DDIM from the training config: the same betas, prediction type and (trailing) spacing."""
    return DDIMScheduler.from_config(train.config, set_alpha_to_one=False)
