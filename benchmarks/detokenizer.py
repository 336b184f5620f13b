"""Sampling cost of the detokenizers: seconds per keyframe and per clip, against the cheaper alternatives a user would
pick (no classifier-free guidance; a long-video keyframe continued from the previous clip instead of a full schedule).

    python benchmarks/detokenizer.py                      # tiny profile sizes on the CPU (random weights)
    python benchmarks/detokenizer.py --size paper         # SDXL-shaped keyframe + SVD-shaped video U-Net, needs a GPU
    python benchmarks/detokenizer.py --train              # one training step: the detokenizer stage's tiny recipe
                                                          # against the models' default tiny U-Nets at the clip size

Weights are random: sampling cost does not depend on them. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import torch

from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.inference.long_video import next_keyframe
from videolavit.models.video_detokenizer import PAPER_MOTION_ENCODER, PAPER_UNET, VideoDetokenizer

SDXL_UNET = {
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}


def build(size: str, device: torch.device, args):
    """(keyframe detokenizer, video detokenizer, keyframe cond, motion) at the tiny or the paper size."""
    if size == "tiny":  # the tiny profile: 32×48 RGB pixels, 24 frames, 8×12 motion, 64-d visual features
        keyframe = KeyframeDetokenizer(cond_dim=64, image_size=(32, 48))
        video = VideoDetokenizer(frames=24, height=32, width=48)
        cond, motion = torch.randn(1, 32, 64), 0.1 * torch.randn(1, 2, 24, 8, 12)
    else:
        from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

        four = ("DownEncoderBlock2D",) * 4
        image_vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=four, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4, scaling_factor=0.13025,
        )
        video_vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512), down_block_types=four, layers_per_block=2
        )
        keyframe = KeyframeDetokenizer(
            cond_dim=2048, image_size=(args.keyframe_size, args.keyframe_size), unet=SDXL_UNET, vae=image_vae
        )
        video = VideoDetokenizer(
            frames=24, height=args.video_size, width=args.video_size,
            unet=PAPER_UNET, motion_encoder=PAPER_MOTION_ENCODER, sigma_data=1.0, sigma_max=700.0, vae=video_vae,
        )
        cond, motion = torch.randn(1, 256, 2048), 0.1 * torch.randn(1, 2, 24, 20, 36)
    # fp32 weights; on a GPU the sampling runs under bf16 autocast, as training's bf16-mixed precision
    return keyframe.to(device).eval(), video.to(device).eval(), cond.to(device), motion.to(device)


def timed(fn, device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def train_step_table(args) -> None:
    """Seconds of one training step (forward + backward) of the stage's tiny recipe against the models' defaults."""
    from videolavit.config import load_config
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs

    cfg = load_config(profile="tiny", params_file=None)
    clip_size = (int(cfg.video.frames_height), int(cfg.video.frames_width))
    recipe_video = video_kwargs(cfg)
    default_video = dict(recipe_video, unet={}, height=clip_size[0], width=clip_size[1])
    default_video.pop("keyframe_skip", None)  # the models' default: no keyframe skip
    cond_dim = 192  # the tiny visual tokenizer's decoded features (8×8×3 pixel patches)
    recipe_key = keyframe_kwargs(cfg, cond_dim)
    default_key = dict(recipe_key, unet={}, image_size=list(clip_size))
    B = args.batch
    rows = []
    for part, name, kwargs in (
        ("video", f"stage recipe {recipe_video['height']}×{recipe_video['width']}", recipe_video),
        ("video", f"TINY_UNET at the clip size {clip_size[0]}×{clip_size[1]}", default_video),
        ("keyframe", f"stage recipe {recipe_key['image_size'][0]}×{recipe_key['image_size'][1]}", recipe_key),
        ("keyframe", f"TINY_UNET at the clip size {clip_size[0]}×{clip_size[1]}", default_key),
    ):
        torch.manual_seed(0)
        if part == "video":
            model = VideoDetokenizer(**kwargs)
            H, W, T = kwargs["height"], kwargs["width"], kwargs["frames"]
            frames, motion = torch.rand(B, T, 3, H, W) * 2 - 1, 0.1 * torch.randn(B, 2, T, 8, 12)
            fn = lambda m=model, f=frames, mo=motion: m.training_loss(f, f[:, 0], mo).backward()  # noqa: E731
        else:
            model = KeyframeDetokenizer(**kwargs)
            H, W = kwargs["image_size"]
            images, cond = torch.rand(B, 3, H, W) * 2 - 1, torch.randn(B, 64, cond_dim)
            fn = lambda m=model, x=images, c=cond: m.training_loss(x, c).backward()  # noqa: E731
        fn()  # warm-up: first-call allocations
        rows.append((part, name, timed(fn, torch.device("cpu"), args.repeats)))
    print(f"training step, batch {B}, threads {torch.get_num_threads()}")
    print(f"{'part':<9} {'setting':<44} {'seconds':>9} {'× the first of its part':>24}")
    reference = {}
    for part, name, seconds in rows:
        reference.setdefault(part, seconds)
        print(f"{part:<9} {name:<44} {seconds:>9.2f} {seconds / reference[part]:>24.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--keyframe-steps", type=int, default=50)
    parser.add_argument("--keyframe-guidance", type=float, default=3.0)
    parser.add_argument("--video-steps", type=int, default=25)
    parser.add_argument("--max-guidance", type=float, default=3.0)
    parser.add_argument("--inverse-rate", type=float, default=0.85)
    parser.add_argument("--keyframe-size", type=int, default=1024, help="paper size only")
    parser.add_argument("--video-size", type=int, default=384, help="paper size only (A.1's first training resolution)")
    parser.add_argument("--repeats", type=int, default=1, help="best of N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--train", action="store_true", help="time one training step of the stage's tiny recipe")
    parser.add_argument("--batch", type=int, default=2, help="clips per training step (--train)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        train_step_table(args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.size == "paper" and device.type != "cuda":
        raise SystemExit("--size paper needs a CUDA GPU (a 1.5 B video U-Net and a 2.6 B keyframe U-Net)")
    torch.manual_seed(0)
    keyframe, video, cond, motion = build(args.size, device, args)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:  # the previous clip's last frame and this clip's keyframe: any image will do
        first = keyframe.sample(cond, steps=2, guidance=1.0, output_type="float").float()
        last_frame = torch.nn.functional.interpolate(
            first, size=(video.config["height"], video.config["width"]), mode="bilinear"
        )
        key_for_video = last_frame
    kf_steps, v_steps = args.keyframe_steps, args.video_steps
    resumed = kf_steps - int(args.inverse_rate * kf_steps)
    rows = [
        (
            "keyframe",
            f"{kf_steps} DDIM steps, CFG {args.keyframe_guidance}",
            lambda: keyframe.sample(cond, kf_steps, args.keyframe_guidance),
        ),
        ("keyframe", f"{kf_steps} DDIM steps, no CFG", lambda: keyframe.sample(cond, kf_steps, 1.0)),
        (
            "keyframe",
            f"next clip: add_noise + {resumed} steps",
            lambda: next_keyframe(
                keyframe, last_frame, cond, "add_noise", args.inverse_rate, kf_steps, args.keyframe_guidance
            ),
        ),
        (
            "keyframe",
            f"next clip: DDIM inversion {resumed} + {resumed} steps",
            lambda: next_keyframe(
                keyframe, last_frame, cond, "ddim_inversion", args.inverse_rate, kf_steps, args.keyframe_guidance
            ),
        ),
        (
            "video",
            f"{v_steps} Euler steps, per-frame CFG 1→{args.max_guidance}",
            lambda: video.sample(key_for_video, motion, v_steps, args.max_guidance),
        ),
        ("video", f"{v_steps} Euler steps, no CFG", lambda: video.sample(key_for_video, motion, v_steps, 1.0)),
    ]
    clip = f"{video.config['frames']}×{video.config['height']}×{video.config['width']}"
    print(f"device: {device}, size: {args.size}, threads: {torch.get_num_threads()}, ", end="")
    print(f"keyframe {tuple(keyframe.config['image_size'])}, clip {clip}")
    print(f"{'part':<9} {'setting':<44} {'seconds':>9} {'× the first of its part':>24}")
    reference = {}
    with torch.no_grad(), autocast:
        for part, setting, fn in rows:
            seconds = timed(fn, device, args.repeats)
            reference.setdefault(part, seconds)
            print(f"{part:<9} {setting:<44} {seconds:>9.2f} {seconds / reference[part]:>24.2f}")
    print(
        f"{'clip':<9} {'first keyframe row + first video row':<44} {reference['keyframe'] + reference['video']:>9.2f}"
    )


if __name__ == "__main__":
    main()
