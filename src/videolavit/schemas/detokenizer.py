"""Typed config section of the detokenizer stage: the keyframe (SDXL-shaped) and video (SVD-shaped) detokenizers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from videolavit.config import register_section
from videolavit.constraints import at_least, bounds, fraction, positive
from videolavit.schemas.sections import OptimConfig, TrainLoopConfig


@dataclass
class KeyframeUNetConfig:
    """diffusers ``UNet2DConditionModel`` shape of the keyframe detokenizer: LaVIT's SDXL-shaped decoder
    [R image_decoding]; null keeps the model's TINY_UNET value."""

    block_out_channels: Optional[list] = field(default_factory=lambda: [320, 640, 1280])
    layers_per_block: Optional[int] = 2
    down_block_types: Optional[list] = field(
        default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    )
    up_block_types: Optional[list] = field(default_factory=lambda: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    cross_attention_dim: Optional[int] = 2048
    attention_head_dim: Optional[Any] = field(default_factory=lambda: [5, 10, 20])  # an int or one per block
    transformer_layers_per_block: Optional[Any] = field(default_factory=lambda: [1, 2, 10])
    use_linear_projection: Optional[bool] = True
    norm_num_groups: Optional[int] = 32
    addition_embed_type: Optional[str] = "text_time"  # SDXL micro-conditioning (H, W, crop, H, W) + pooled condition
    addition_time_embed_dim: Optional[int] = 256
    projection_class_embeddings_input_dim: Optional[int] = 2816


@dataclass
class KeyframeDetokenizerConfig:
    """g_I (models/keyframe_detokenizer.py): DDPM U-Net conditioned on the visual tokenizer's decoded features."""

    # [H, W]; None: the video detokenizer's size
    image_size: Optional[list] = field(default=None, metadata=bounds(ge=1))
    unet: KeyframeUNetConfig = field(default_factory=KeyframeUNetConfig)
    unet_dir: Optional[str] = None  # a local SD/SDXL U-Net (diffusers folder) to start from
    vae_dir: Optional[str] = None  # a local diffusers AutoencoderKL: latent diffusion; None: pixel space
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    beta_schedule: str = "scaled_linear"  # SD/SDXL's schedule, so SDXL weights start where they were trained
    num_train_timesteps: int = at_least(1, 1000)
    cond_dropout: float = fraction(0.1)  # classifier-free guidance: the condition is zeroed with this probability
    gradient_checkpointing: bool = True  # recompute U-Net block activations in backward (paper scale needs it)
    # SDXL-shaped U-Nets' pooled condition: attention (the official AttentionPool2d over the decoded tokens, its
    # pool_heads) | mean (token mean -> Linear)
    pool: str = "attention"
    pool_heads: int = at_least(1, 16)


@dataclass
class VideoUNetConfig:
    """diffusers ``UNetSpatioTemporalConditionModel`` shape: SVD img2vid-xt with 2 motion input channels
    [R modeling_3d_unet.py]; null keeps the model's TINY_UNET value (channels: multiples of 32, for its GroupNorms)."""

    block_out_channels: Optional[list] = field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: Optional[int] = 2
    down_block_types: Optional[list] = field(
        default_factory=lambda: ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"]
    )
    up_block_types: Optional[list] = field(
        default_factory=lambda: ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3
    )
    num_attention_heads: Optional[list] = field(default_factory=lambda: [5, 10, 10, 20])
    transformer_layers_per_block: Optional[Any] = None
    cross_attention_dim: Optional[int] = 1024
    addition_time_embed_dim: Optional[int] = 256
    projection_class_embeddings_input_dim: Optional[int] = 768  # 3 added time ids × addition_time_embed_dim


@dataclass
class MotionEncoderConfig:
    """The EMC motion feature encoder (models/motion_condition.py); defaults are the official 16×16 / 512 / 12 / 8."""

    grid: list = field(default_factory=lambda: [16, 16], metadata=bounds(ge=1))
    dim: int = at_least(1, 512)
    depth: int = at_least(1, 12)
    heads: int = at_least(1, 8)
    mlp_ratio: float = positive(4.0)
    temporal_embedding: bool = True


@dataclass
class VideoDetokenizerConfig:
    """g_V (models/video_detokenizer.py): SVD-shaped spatio-temporal U-Net with EMC, EDM training."""

    height: Optional[int] = at_least(1, None)  # None: video.frames_height (the clips' frames)
    width: Optional[int] = at_least(1, None)  # None: video.frames_width
    unet: VideoUNetConfig = field(default_factory=VideoUNetConfig)
    motion_encoder: MotionEncoderConfig = field(default_factory=MotionEncoderConfig)
    svd_dir: Optional[str] = None  # a local SVD img2vid(-xt) diffusers folder to initialise the U-Net from (paper A.1)
    vae_dir: Optional[str] = None  # a local diffusers VAE (SVD's AutoencoderKLTemporalDecoder); None: pixel space
    sigma_data: float = positive(1.0)
    sigma_min: float = positive(0.002)
    sigma_max: float = positive(700.0)
    p_mean: float = 1.0  # ln σ ~ N(p_mean, p_std²) in training (paper A.1)
    p_std: float = positive(1.2)
    noise_aug: float = at_least(0, 0.02)
    fps: int = at_least(1, 6)
    motion_bucket_id: int = at_least(0, 127)
    cond_dropout: float = fraction(0.1)
    decode_chunk_size: int = at_least(1, 8)
    keyframe_skip: bool = False  # diffuse the clip minus its keyframe
    motion_warp: bool = False  # with keyframe_skip: minus the keyframe carried along the motion field instead
    # per_pixel (official): each pixel's temporal cross-attention reads the T motion features at its position;
    # broadcast: every pixel reads frame 0's grid tokens + T per-frame summaries (15 GiB a clip at paper scale)
    temporal_context: str = "per_pixel"
    # official: motion bicubic-resized to the latent grid and ÷ video.motion_rescale, as the released detokenizer
    # reads it (channels and motion encoder); ours: nearest-resized channels, the encoder reads the motion grid
    motion_input: str = "official"
    gradient_checkpointing: bool = True  # recompute U-Net block activations in backward (paper scale needs it)


@dataclass
class DetokenizerEvalConfig:
    """Sample-based metrics on held-out clips after training (val/keyframe_psnr, val/video_psnr, ...)."""

    split: str = "val"
    clips: int = at_least(0, 32)  # the first N clips of the split (each sampled twice: motion tokens and true motion)
    batch_size: int = at_least(1, 4)
    keyframe_steps: int = at_least(1, 50)
    keyframe_guidance: float = at_least(0, 3.0)
    video_steps: int = at_least(1, 25)
    video_guidance: float = at_least(0, 3.0)  # the last frame's CFG (rising linearly from 1.0 over the clip)
    sample_clips: int = at_least(0, 4)  # clips drawn in the GIF / MP4 artifact


@dataclass
class DetokenizerStageConfig:
    """The detokenizer stage: trains the keyframe and the video detokenizer (one LightningModule, one optimizer)."""

    models: list = field(default_factory=lambda: ["keyframe", "video"])  # which detokenizers this run trains
    # separate: one training run per model in turn, each with its own checkpoints (runs/detokenizer/<model>/), as the
    # paper trained them; joint: one module and optimizer step for both (their memory adds up: at paper scale
    # `videolavit plan detokenizer` measures 119 GB per GPU joint vs 66 (keyframe) and 55 (video) separately)
    runs: str = "separate"
    condition_motion: str = "true"  # motion the video detokenizer trains on: true (the field) | tokens (its tokenizer round trip)
    visual_tokenizer_path: Optional[str] = None  # None: <paths.models>/visual_tokenizer
    motion_tokenizer_path: Optional[str] = None  # None: <paths.models>/motion_tokenizer
    keyframe_lr: Optional[float] = positive(None)  # None: optim.lr
    # the video model trains on every n-th step only, on the batch's first video_batch_size clips (None: all): the
    # keyframe model gets more steps and images for the video model's cost (one process; DDP would see unused weights)
    video_every_n_steps: int = at_least(1, 1)
    video_batch_size: Optional[int] = at_least(1, None)
    # true: no vae_dir / svd_dir is fine (pixel-space, random U-Nets); false: each missing one is an error
    from_scratch: bool = False
    # a folder with keyframe/ and/or video/ (this stage's output, or import-official's DIR/detokenizer): the models
    # start from its weights, and from its VAEs where vae_dir is unset (no svd_dir / vae_dir needed then)
    init_from: Optional[str] = None
    keyframe: KeyframeDetokenizerConfig = field(default_factory=KeyframeDetokenizerConfig)
    video: VideoDetokenizerConfig = field(default_factory=VideoDetokenizerConfig)
    eval: DetokenizerEvalConfig = field(default_factory=DetokenizerEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=3000))
    # [P A.1]: 50K steps at 384² + 10K at high resolution; global batch 128 (64 A100 × 2 per GPU)
    train: TrainLoopConfig = field(
        default_factory=lambda: TrainLoopConfig(
            max_steps=60_000, batch_size=2, global_batch=128, val_batches=8, precision="bf16-mixed"
        )
    )


register_section("detokenizer", DetokenizerStageConfig)
