"""Typed config sections of the encoding, LM and evaluation stages (the detokenizer's: ``detokenizer.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from videolavit.config import register_section
from videolavit.constraints import at_least, bounds, checked, fraction, positive


@dataclass
class OptimConfig:
    """AdamW + cosine schedule with linear warm-up (paper Table 8 style)."""

    lr: float = positive(1e-4)
    betas: list = field(default_factory=lambda: [0.9, 0.99], metadata=bounds(ge=0, lt=1))
    eps: float = positive(1e-6)
    weight_decay: float = at_least(0, 0.001)
    warmup_steps: int = at_least(0, 5000)
    grad_clip: float = at_least(0, 1.0)


@dataclass
class TrainLoopConfig:
    """Steps, batches and checkpointing of one training stage."""

    # optimizer steps; 0 = no training (e.g. measure an imported model on one's clips). There is no "until stopped":
    # Lightning's -1 is rejected, a run always has an end that the LR schedule and the checkpoints are laid out for
    max_steps: int = at_least(0, 100_000, why="0: no training; Lightning's -1, 'until stopped', is no run length")
    batch_size: int = at_least(1, 8)
    val_every_n_steps: int = at_least(1, 1000)
    val_batches: Optional[int] = at_least(0, None)  # limit validation batches (None: all)
    log_every_n_steps: int = at_least(1, 10)
    checkpoint_every_n_steps: int = at_least(1, 1000)
    resume: str = "never"  # never | auto (continue from runs/<stage>/last.ckpt when it exists) | a path
    strategy: Optional[str] = None  # None: compute.strategy
    precision: Optional[str] = None  # None: compute.precision
    # Samples per optimizer step over all processes (the paper's); the launcher gives the process count and
    # accumulation = global_batch / (batch_size × world size) (training/topology.py). None: accumulate_grad_batches
    global_batch: Optional[int] = at_least(1, None)
    # batches per optimizer step; None: derived from global_batch, or 1
    accumulate_grad_batches: Optional[int] = at_least(1, None)


@dataclass
class MotionTokenizerModelConfig:
    """Spatiotemporal transformer VQ-VAE over motion fields [B, 2, T, H, W] (paper §3.1, A.1)."""

    in_channels: int = at_least(1, 2)
    frames: int = at_least(1, 24)
    height: int = at_least(1, 20)
    width: int = at_least(1, 36)
    dim: int = at_least(1, 512)
    depth: int = at_least(1, 12)
    heads: int = at_least(1, 8)
    mlp_ratio: float = positive(4.0)
    downsample_after: list = field(default_factory=lambda: [3, 6, 9, 12], metadata=bounds(ge=0))
    downsample_strides: list = field(
        default_factory=lambda: [[1, 2, 2], [2, 1, 1], [2, 1, 1], [2, 2, 2]], metadata=bounds(ge=1)
    )
    code_dim: int = at_least(1, 32)
    codebook_size: int = at_least(1, 1024)
    ema_decay: float = fraction(0.995)
    kmeans_init: bool = True
    # EMA uses per step below which a code restarts; keep ≪ batch·tokens/codebook. Not in the paper: 8 clips × 135
    # tokens per device step over 1024 codes is ~1 use per code, so 2.0 would restart nearly every code every step.
    dead_code_threshold: float = at_least(0, 0.1)
    commitment_weight: float = at_least(0, 0.25)
    attention: str = "factorized"  # factorized (paper: spatial then temporal) | joint (one attention over T·H·W)


@dataclass
class MotionTokenizerStageConfig:
    model: MotionTokenizerModelConfig = field(default_factory=MotionTokenizerModelConfig)
    # Reconstruction loss: mse (the paper's, on normalized motion) | mse_epe (MSE + end-point error in px/frame: the
    # EPE term pulls the many still macroblocks to exactly zero, which MSE alone blurs) | epe (EPE alone)
    loss: str = "mse"
    # a saved MotionTokenizer to fine-tune from (e.g. `videolavit import-official`'s <out>/motion_tokenizer); its
    # architecture must equal motion_tokenizer.model's. None: a fresh initialisation
    init_from: Optional[str] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    # the paper's global 512 (64 GPUs × 8 per GPU)
    train: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(global_batch=512, precision="bf16-mixed"))


register_section("motion_tokenizer", MotionTokenizerStageConfig)


@dataclass
class EvaluatorClassifierConfig:
    """The corpus video classifier: one head per attribute; its penultimate features are the corpus FVD extractor."""

    # [H, W]; None: the clip frames' size
    input_size: Optional[list] = field(default_factory=lambda: [160, 288], metadata=bounds(ge=1))
    patch: int = at_least(1, 8)  # stem patch (px): 3 frames × patch × patch per stem position
    channels: list = field(default_factory=lambda: [64, 128, 256, 512], metadata=bounds(ge=1))
    feature_dim: int = at_least(1, 256)  # FVD feature size
    dropout: float = fraction(0.1)


@dataclass
class EvaluatorCLIPConfig:
    """The corpus CLIP: word-level text transformer + frame encoder, contrastive (CLIPSIM proxy)."""

    # None: [video.frames_height, frames_width]
    image_size: Optional[list] = field(default_factory=lambda: [160, 288], metadata=bounds(ge=1))
    patch: int = at_least(1, 8)
    image_channels: list = field(default_factory=lambda: [64, 128, 256, 512], metadata=bounds(ge=1))
    embed_dim: int = at_least(1, 256)
    text_dim: int = at_least(1, 256)
    text_layers: int = at_least(1, 4)
    text_heads: int = at_least(1, 8)
    max_words: int = at_least(1, 77)
    min_word_count: int = at_least(0, 5)  # words rarer than this in the train captions become <unk>
    eval_frames: int = at_least(1, 4)  # frames per clip averaged into the clip embedding for validation retrieval


@dataclass
class EvaluatorsStageConfig:
    """The evaluators stage: corpus-trained FVD/attribute classifier and CLIP (used when no I3D/CLIP path is set)."""

    attributes: Optional[list] = None  # None: every attribute listed in the corpus meta.json
    classifier: EvaluatorClassifierConfig = field(default_factory=EvaluatorClassifierConfig)
    clip: EvaluatorCLIPConfig = field(default_factory=EvaluatorCLIPConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.01, warmup_steps=500))
    train: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(max_steps=20_000, batch_size=64))


register_section("evaluators", EvaluatorsStageConfig)


@dataclass
class ReportStageConfig:
    """The report stage: paper-style tables and figures from the MLflow runs."""

    experiment: Optional[str] = None  # None: tracking.experiment
    curve_stages: list = field(
        default_factory=lambda: ["motion_tokenizer", "visual_tokenizer", "detokenizer", "pretrain", "instruct", "evaluators"]
    )
    max_curve_panels: int = at_least(1, 6)  # metrics drawn per stage figure (train/loss first, then val/*)


register_section("report", ReportStageConfig)


@dataclass
class LMArchitectureConfig:
    """transformers config keys of an LM built from scratch (ignored when ``lm.model.pretrained_path`` is set).

    Llama-2-7B's shapes: used when building without a checkpoint (e.g. on meta for ``videolavit plan``)."""

    model_type: str = "llama"
    hidden_size: int = at_least(1, 4096)
    num_hidden_layers: int = at_least(1, 32)
    num_attention_heads: int = at_least(1, 32)
    num_key_value_heads: Optional[int] = at_least(1, 32)  # None: = num_attention_heads
    intermediate_size: int = at_least(1, 11008)
    max_position_embeddings: int = at_least(1, 4096)
    rms_norm_eps: float = positive(1e-5)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attn_implementation: Optional[str] = None  # sdpa | eager | flash_attention_2; None: transformers' default


@dataclass
class LMModelConfig:
    """Where the LM comes from: a local checkpoint (Llama-2-7B, LaVIT-7B) or ``config``; rows for new ids per lm.py."""

    pretrained_path: Optional[str] = None
    from_scratch: bool = False  # true: no pretrained_path is fine (a random LM from config); false: it is an error
    config: LMArchitectureConfig = field(default_factory=LMArchitectureConfig)
    # float32 | bfloat16 | float16; None: the checkpoint's / float32. Paper: fp32 master weights sharded by FSDP,
    # compute in bf16 (precision bf16-mixed)
    dtype: Optional[str] = "float32"
    # new rows at the mean of Llama's rows (+ small noise): text predictions barely move
    noise_scale: float = at_least(0, 0.01)


@dataclass
class LMGenerateConfig:
    """Decoding settings of generation (text→video, image→video) and QA answers."""

    # [min, max] visual codes of a generated keyframe
    image_tokens: list = field(default_factory=lambda: [1, 64], metadata=bounds(ge=1))
    temperature: float = at_least(0, 1.0)
    top_k: Optional[int] = at_least(0, 50)
    top_p: Optional[float] = checked(None, gt=0, le=1)
    guidance_scale: Optional[float] = at_least(0, 4.0)
    motion_temperature: float = at_least(0, 0.0)  # the official motion decoding is greedy
    motion_guidance_scale: Optional[float] = at_least(0, 7.0)
    max_answer_tokens: int = at_least(1, 16)


@dataclass
class FSDPConfig:
    """Lightning FSDPStrategy built from config when a stage's strategy is ``fsdp``."""

    wrap_modules: Optional[list] = None  # class names of the wrap unit; None: the model's _no_split_modules
    sharding_strategy: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
    activation_checkpointing: bool = True  # recompute each wrap unit's activations in the backward pass
    state_dict_type: str = "sharded"  # sharded (one file per rank, fast) | full (one file, gathered on rank 0)
    cpu_offload: bool = False


@dataclass
class LMConfig:
    """The unified language model shared by pretrain, instruct, evaluate and generate."""

    model: LMModelConfig = field(default_factory=LMModelConfig)
    seq_len: int = at_least(1, 2048)
    template: str = "vicuna_v1"  # vicuna_v1 | video_lavit_released (the released SFT weights' literal "\n")
    video_input: str = "media"  # media: keyframe + motion per clip | frames_media: frames only (no-motion ablation)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    generate: LMGenerateConfig = field(default_factory=LMGenerateConfig)


register_section("lm", LMConfig)


@dataclass
class LMOptimConfig(OptimConfig):
    """AdamW + cosine; ``lr_other`` is the LR of the embedding and output head, which hold the new multimodal rows."""

    lr_other: Optional[float] = positive(None)  # None: lr
    min_lr_ratio: float = fraction(0.0)  # the cosine ends at min_lr_ratio × peak


@dataclass
class LMTrainLoopConfig(TrainLoopConfig):
    """Training loop of an LM stage (processes and nodes come from the launcher: training/topology.py)."""


@dataclass
class PretrainMixConfig:
    """Relative sampling weights of the pretraining sources (normalized; a source without data is skipped)."""

    video_text: float = at_least(0, 0.6)
    image_text: float = at_least(0, 0.25)
    text: float = at_least(0, 0.15)  # text-only: pretrain.text_files when given, else the corpus captions alone
    qa: float = at_least(0, 0.0)  # media + one question/answer turn in the conversation template


@dataclass
class PretrainStageConfig:
    """Generative pretraining (paper §3.3, Table 8): next-token loss over packed [media, text] / [text, media]."""

    mix: PretrainMixConfig = field(default_factory=PretrainMixConfig)
    both_orders: bool = True  # each pair as [media, caption] and as [caption, media]
    text_files: list = field(default_factory=list)  # local .txt (blank-line separated) or .jsonl {"text"} files
    pack_lookahead: int = at_least(1, 64)  # pending samples the packer searches for one that fills a window's rest
    # [P T8] "Language Model" column; mixture ratios are not published
    optim: LMOptimConfig = field(
        default_factory=lambda: LMOptimConfig(lr=2e-5, lr_other=5e-5, betas=[0.9, 0.95], weight_decay=0.1, warmup_steps=2000)
    )
    # 2048 sequences per step [P T8] (16 nodes × 8 GPUs × 4 × 4 accumulated in the paper)
    train: LMTrainLoopConfig = field(
        default_factory=lambda: LMTrainLoopConfig(
            max_steps=30_000, batch_size=4, global_batch=2048, strategy="fsdp",
            precision="bf16-mixed", checkpoint_every_n_steps=500,
        )
    )


register_section("pretrain", PretrainStageConfig)


@dataclass
class InstructEvalConfig:
    """Held-out QA after instruction tuning: greedy answers, exact match by question type."""

    split: str = "test"
    max_questions: Optional[int] = at_least(1, None)  # None: all; else a seeded sample stratified by type
    batch_size: int = at_least(1, 32)
    max_new_tokens: int = at_least(1, 8)


@dataclass
class InstructStageConfig:
    """Instruction tuning (paper §3.3, LLaVA-v1.5 recipe): Vicuna-v1 conversations, loss on answers only."""

    init_from: Optional[str] = None  # None: <paths.models>/lm_pretrain
    # >1: a medium's single-turn QA are merged into multi-turn dialogues (LLaVA)
    turns_per_conversation: int = at_least(1, 1)
    pack: bool = False  # concatenate conversations into rows of lm.seq_len (no padding; rows attend across them)
    # "the same instruction tuning setting as LLaVA v1.5" [P A.3]: 1 epoch of 765K conversations, batch 128, warm-up
    # ratio 0.03 of 5977 steps
    optim: LMOptimConfig = field(
        default_factory=lambda: LMOptimConfig(
            lr=2e-5, lr_other=2e-5, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, warmup_steps=180
        )
    )
    # global batch 128 (LLaVA v1.5; 8 GPUs × 4 × 4 accumulated)
    train: LMTrainLoopConfig = field(
        default_factory=lambda: LMTrainLoopConfig(
            max_steps=5977, batch_size=4, global_batch=128, strategy="fsdp",
            precision="bf16-mixed", checkpoint_every_n_steps=500,
        )
    )
    eval: InstructEvalConfig = field(default_factory=InstructEvalConfig)


register_section("instruct", InstructStageConfig)


@dataclass
class VisualTokenizerModelConfig:
    """LaVIT dynamic visual tokenizer (paper §3.1, LaVIT): ViT (or a frozen local teacher), selector, merger, VQ."""

    # None: video.keyframe_size (the keyframes are stored at the tokenizer input)
    image_size: Optional[int] = at_least(1, 224)
    patch_size: int = at_least(1, 14)
    width: int = at_least(1, 1408)
    depth: int = at_least(1, 40)
    heads: int = at_least(1, 16)
    mlp_ratio: float = positive(4.3637)
    merger_depth: int = at_least(0, 12)
    merger_causal: bool = True
    decoder_width: Optional[int] = at_least(1, None)  # None: width
    decoder_depth: int = at_least(1, 12)
    decoder_heads: Optional[int] = at_least(1, None)  # None: heads
    code_dim: int = at_least(1, 32)
    codebook_size: int = at_least(1, 16384)
    ema_decay: float = fraction(0.995)
    kmeans_init: bool = True
    # Scaled to the codebook (issue 18): null makes a code dead when its EMA uses per step fall below
    # dead_code_fraction × the mean uses of a code per step (the EMA cluster sizes summed over the codebook, i.e. the
    # tokens of a step over all ranks, / codebook_size): at paper scale 64 × 32 images × ~85 tokens / 16,384 codes ≈
    # 10.6 uses, threshold ≈ 1.1; the old absolute 2.0 against one rank's ~0.17 uses restarted most codes every step.
    # A number: that many uses per step (absolute, the motion tokenizer's rule; tiny.yaml keeps 2.0)
    dead_code_threshold: Optional[float] = at_least(0, None)
    dead_code_fraction: float = positive(0.1)
    # k-means initialises from this many vectors per code, pooled over the first steps and every rank (4 × 16,384 =
    # 65,536: one step at world 64; the first batch of one rank held ~2.7 K for 16,384 codes); 0: the first batch alone
    kmeans_vectors_per_code: int = at_least(0, 4)
    commitment_weight: float = at_least(0, 0.25)
    # ρ: mean fraction of patches kept (LaVIT: 1/3 → ~85 of 256)
    keep_ratio: float = checked(0.3333333333333333, gt=0, le=1)
    keep_weight: float = at_least(0, 2.0)
    gumbel_tau: float = positive(1.0)
    # gumbel (LaVIT's released code: the keep mask sampled at inference too) | expected | threshold | topk (deterministic)
    selection: str = "gumbel"
    train_selection: str = "gumbel"  # gumbel (LaVIT: sampled mask) | deterministic (inference choice, straight-through)
    rec_loss: str = "auto"  # auto (cosine to a teacher, MSE to pixels) | cosine | mse
    teacher_path: Optional[str] = None  # a local transformers vision model (EVA-CLIP / CLIP); None: pixel target
    saliency_prior: float = 0.0  # + this × z-scored distance of a patch's mean colour from the image's, on its keep logit
    # each kept token's code rebuilds its own patch (token_head); 0: LaVIT's loss alone
    token_loss_weight: float = at_least(0, 0.0)
    # pixel target: each patch average-pooled to s×s (1: its mean colour); None: full
    pixel_target_size: Optional[int] = at_least(1, None)
    # The released LaVIT's architecture (what import-official's weights need; models/visual_tokenizer.py):
    vit_cls_token: bool = True  # EVA-CLIP's CLS token at position 0 (its output dropped); false: patches only
    vit_norm_eps: float = positive(1e-6)  # EVA-CLIP's LayerNorm eps in the ViT
    merger: str = "official"  # official (residual stream from the raw ViT features) | ours (from ln_vision of them)
    decoder_head: str = "mlp"  # mlp (the release's Linear–Tanh–Linear) | linear


@dataclass
class VisualTokenizerStageConfig:
    """The visual_tokenizer stage: trains on the clips' keyframes and the corpus images."""

    keyframes: bool = True  # train on the train clips' keyframes
    images: bool = True  # train on the corpus train images
    sample_images: int = at_least(0, 6)  # images drawn in each validation figure (kept patches, reconstruction)
    from_scratch: bool = False  # true: no model.teacher_path is fine (pixel targets); false: it is an error
    model: VisualTokenizerModelConfig = field(default_factory=VisualTokenizerModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=2000))
    # LaVIT: 50K steps, global batch 2048 (8 GPUs × 32 × 8 accumulated) on ~100M LAION images [K117]
    train: TrainLoopConfig = field(
        default_factory=lambda: TrainLoopConfig(
            max_steps=50_000, batch_size=32, global_batch=2048, precision="bf16-mixed"
        )
    )


register_section("visual_tokenizer", VisualTokenizerStageConfig)


@dataclass
class TokenizeStageConfig:
    """The tokenize stage: every corpus sample → unified-vocabulary ids in token shards (data/tokens.py)."""

    text_tokenizer_path: Optional[str] = None  # a local pretrained tokenizer (Llama-2's); None: BPE on the corpus
    text_vocab_size: int = at_least(1, 32000)  # BPE only
    text_min_frequency: int = at_least(0, 2)  # BPE only
    # vocab text_size = len(text tokenizer) rounded up to this (Llama-2: 32000 stays)
    text_size_multiple: int = at_least(1, 64)
    visual_tokenizer_path: Optional[str] = None  # None: <paths.models>/visual_tokenizer
    motion_tokenizer_path: Optional[str] = None  # None: <paths.models>/motion_tokenizer
    # frames per video in frames_media ("w/o motion" [P T6]); None: 2 per clip
    ablation_frames: Optional[int] = at_least(1, 16)
    baseline_split: str = "val"  # clips the per-frame token baseline is measured on
    baseline_clips: Optional[int] = at_least(0, 1000)  # at most this many of them (None: all)
    batch_size: int = at_least(1, 64)  # clips (or images) per tokenizer forward
    records_per_shard: int = at_least(1, 10_000)
    shard: Optional[str] = None  # 'i/n': this process tokenizes units i, i+n, … (data/token_parts.py); None: all
    merge: bool = False  # only merge the parts of a sharded run into the token shards


register_section("tokenize", TokenizeStageConfig)


@dataclass
class GenerateConfig:
    """``videolavit generate`` and the evaluate stage's samples: the task, the models, the detokenizers' sampling."""

    task: str = "text_to_video"  # text_to_video | image_to_video | qa
    image: Optional[str] = None  # image_to_video: the first frame (an image file)
    media: Optional[str] = None  # qa: the image or video file the question is about
    clips: int = at_least(1, 1)  # > 1: a long video, clip after clip with the token history as the prompt
    lm_path: Optional[str] = None  # None: <paths.models>/lm_pretrain (generation) or lm_instruct (qa)
    detokenizer_path: Optional[str] = None  # None: <paths.models>/detokenizer (keyframe/ and video/)
    keyframe_steps: int = at_least(1, 50)  # DDIM steps of the keyframe detokenizer
    keyframe_guidance: float = at_least(0, 7.0)  # its CFG against a zero condition (official notebooks: 7.0)
    video_steps: int = at_least(1, 25)  # Euler steps of the video detokenizer
    video_guidance: float = at_least(0, 4.0)  # the last frame's CFG (rising linearly from 1.0 over the clip)
    noise_constraint: str = "ddim_inversion"  # ddim_inversion (paper Eq. 4) | add_noise (official code) | none
    inverse_rate: float = fraction(0.85)  # later keyframes resume at timestep index int(rate × keyframe_steps)
    fps: Optional[float] = positive(None)  # of the written video; None: video.fps
    gif: bool = True  # write a GIF beside the MP4
    seed: Optional[int] = None  # None: the top-level seed


register_section("generate", GenerateConfig)


@dataclass
class EvaluateStageConfig:
    """The evaluate stage: a versioned protocol (``conf/eval/<name>.yaml``) run on every trained model."""

    protocol: str = "paper_v1"  # a file name in conf/eval/ (without .yaml) or a path to a protocol YAML
    protocol_overrides: list = field(default_factory=list)  # key=value edits of the protocol (the run is tagged so)
    qa_lm_path: Optional[str] = None  # None: <paths.models>/lm_instruct
    generation_lm_path: Optional[str] = None  # None: generate.lm_path, else <paths.models>/lm_pretrain
    no_motion_lm_path: Optional[str] = None  # an LM tuned with lm.video_input=frames_media; None: the QA LM itself
    evaluators_path: Optional[str] = None  # None: <paths.models>/evaluators
    i3d_path: Optional[str] = None  # local StyleGAN-V i3d_torchscript.pt → t2v/fvd_i3d (else the corpus classifier)
    clip_path: Optional[str] = None  # local CLIP (transformers) directory → t2v/clipsim_clip (else the corpus CLIP)
    reference_motion_tokens: Optional[int] = None  # N of the main runs; None: the profile's motion tokenizer grid
    # An import-official DIR/understanding_lm (the released SFT LM + visual_input/): the QA protocol also answered by it
    # through continuous image features (qa_imported/*, ablation_no_motion/qa_imported/*); None: not run
    understanding_lm: Optional[str] = None
    understanding_motion_tokenizer: Optional[str] = None  # its motion tokenizer; None: DIR/motion_tokenizer beside it
    # which parts run, of qa (the instruct LM), qa_imported (evaluate.understanding_lm), t2v, recon; None: qa, t2v,
    # recon, and qa_imported when evaluate.understanding_lm is set. A part left out has null metrics, saying so
    parts: Optional[list] = None


register_section("evaluate", EvaluateStageConfig)
