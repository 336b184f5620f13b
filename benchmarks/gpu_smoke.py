"""GPU smoke run: each training stage's paper-shaped model (depth cut to 2 blocks) for N optimizer steps on one GPU.

Prints per model: step time, samples/s (tokens/s for the LM), MFU for the LM, peak GPU memory. Shapes are the paper
profile's (widths, resolutions, sequence length, micro batch = ``<stage>.train.batch_size``), bf16 autocast, AdamW,
the models' own gradient checkpointing; the detokenizers train in latent space with an SD/SVD-shaped VAE of random
weights (training/plan.shape_vae). Never run in CI. Without a CUDA device it says so and exits 0.

    python benchmarks/gpu_smoke.py                       # one GPU, paper shapes, 20 steps
    python benchmarks/gpu_smoke.py --device cpu --steps 2  # local check of the script: the tiny profile's widths
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

STAGES = ("motion_tokenizer", "visual_tokenizer", "keyframe_detokenizer", "video_detokenizer", "pretrain")
DEPTH = 2  # blocks kept of each model's stacks


def _cut(kwargs: dict, key: str, depth: int = DEPTH) -> None:
    if isinstance(kwargs.get(key), int):
        kwargs[key] = min(kwargs[key], depth)


def motion_tokenizer(cfg, device, batch, latent):
    from videolavit.config import section_kwargs
    from videolavit.models.motion_tokenizer import MotionTokenizer

    k = section_kwargs(cfg.motion_tokenizer.model)
    n = len(k["downsample_after"])
    depth = max(DEPTH, n - 1)  # every down-sampling layer kept, each after its own block (paper: 4 → depth 3)
    if k["depth"] > depth:
        k.update(depth=depth, downsample_after=list(range(depth - n + 1, depth + 1)))
    model = MotionTokenizer(**k).to(device).train()
    motion = torch.randn(batch, 2, k["frames"], k["height"], k["width"], device=device)

    def step():
        out = model(motion)
        return (out["reconstruction"].float() - motion).pow(2).mean() + out["vq_loss"]
    return model, step, None


def visual_tokenizer(cfg, device, batch, latent):
    from videolavit.config import section_kwargs
    from videolavit.models.visual_tokenizer import VisualTokenizer

    k = {**section_kwargs(cfg.visual_tokenizer.model), "teacher_path": None}
    k["image_size"] = k.get("image_size") or int(cfg.video.keyframe_size)
    for key in ("depth", "merger_depth", "decoder_depth"):
        _cut(k, key)
    model = VisualTokenizer(**k).to(device).train()
    pixels = torch.randn(batch, 3, k["image_size"], k["image_size"], device=device)
    return model, lambda: model(pixels)["loss"], None


def keyframe_detokenizer(cfg, device, batch, latent):
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.stages.detokenizer import keyframe_kwargs
    from videolavit.training.plan import shape_vae

    vt = cfg.visual_tokenizer.model
    cond_dim, tokens = int(vt.width), (int(vt.image_size or cfg.video.keyframe_size) // int(vt.patch_size)) ** 2
    k = {**keyframe_kwargs(cfg, cond_dim), "vae_dir": None}
    unet = dict(k.get("unet") or {})
    if isinstance(unet.get("transformer_layers_per_block"), list):  # SDXL's [1, 2, 10] → [1, 2, 2]
        unet["transformer_layers_per_block"] = [min(int(n), DEPTH) for n in unet["transformer_layers_per_block"]]
        k["unet"] = unet
    model = KeyframeDetokenizer(**k, vae=shape_vae(False) if latent else None).to(device).train()
    H, W = k["image_size"]
    images, cond = torch.randn(batch, 3, H, W, device=device), torch.randn(batch, tokens, cond_dim, device=device)
    return model, lambda: model.training_loss(images, cond), None


def video_detokenizer(cfg, device, batch, latent):
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.stages.detokenizer import video_kwargs
    from videolavit.training.plan import shape_vae

    k = {**video_kwargs(cfg), "vae_dir": None}
    model = VideoDetokenizer(**k, vae=shape_vae(True) if latent else None).to(device).train()
    T, H, W = k["frames"], k["height"], k["width"]
    h, w = int(cfg.video.motion_height), int(cfg.video.motion_width)
    frames, key = torch.randn(batch, T, 3, H, W, device=device), torch.randn(batch, 3, H, W, device=device)
    motion = torch.randn(batch, 2, T, h, w, device=device)
    return model, lambda: model.training_loss(frames, key, motion), None


def pretrain(cfg, device, batch, latent):
    from videolavit.models.lm import build_lm
    from videolavit.training.lm import architecture
    from videolavit.vocab import PAPER_VOCAB

    arch = architecture(cfg)
    arch = {**arch, "num_hidden_layers": min(int(arch.get("num_hidden_layers", 32)), DEPTH)}
    model = build_lm(PAPER_VOCAB, arch).to(device).train()
    model.gradient_checkpointing_enable()  # as the paper profile's FSDP activation checkpointing per block
    seq = int(cfg.lm.seq_len)
    ids = torch.randint(0, PAPER_VOCAB.size, (batch, seq), device=device)
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_params + 12 * c.num_hidden_layers * c.hidden_size * seq  # weights + attention scores
    return model, lambda: model(input_ids=ids, labels=ids, use_cache=False).loss, (seq, flops_per_token)


BATCH_KEY = {"motion_tokenizer": "motion_tokenizer", "visual_tokenizer": "visual_tokenizer",
             "keyframe_detokenizer": "detokenizer", "video_detokenizer": "detokenizer", "pretrain": "pretrain"}


def run(name, cfg, device, steps: int, warmup: int, peak_tflops: float, latent: bool) -> dict:
    batch = int(getattr(cfg, BATCH_KEY[name]).train.batch_size)
    torch.manual_seed(0)
    model, step, lm = globals()[name](cfg, device, batch, latent)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = step()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    seconds = sum(times) / max(1, len(times))
    out = {"stage": name, "micro_batch": batch, "params": sum(p.numel() for p in model.parameters()),
           "step_ms": 1000 * seconds, "samples_per_s": batch / seconds, "loss": float(loss.detach())}
    if lm is not None:
        seq, flops_per_token = lm
        out["tokens_per_s"] = batch * seq / seconds
        out["mfu"] = out["tokens_per_s"] * flops_per_token / (peak_tflops * 1e12) if cuda else None
    out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (paper shapes) or cpu (the tiny profile's widths)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps not timed")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--profile", default=None, help="default: paper on cuda, tiny on cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; nothing measured (use --device cpu --steps 2 for a local check)")
        return 0
    from videolavit.config import load_config

    profile = args.profile or ("paper" if device.type == "cuda" else "tiny")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(f"gpu_smoke: {torch.cuda.get_device_name(device)}, profile {profile}, {args.steps} steps, depth {DEPTH}")
    warmup = min(args.warmup, max(0, args.steps - 1))
    failed = 0
    for name in [s for s in args.stages.split(",") if s]:
        if name not in STAGES:
            print(f"gpu_smoke: unknown stage {name!r} (one of {', '.join(STAGES)})")
            return 2
        cfg = load_config(profile=profile, params_file=None)
        try:
            r = run(name, cfg, device, args.steps, warmup, args.peak_tflops, latent=profile == "paper")
        except torch.OutOfMemoryError as exc:
            failed += 1
            print(f"{name}: out of memory ({str(exc).splitlines()[0]})")
            torch.cuda.empty_cache()
            continue
        line = (f"{name}: {r['params'] / 1e6:.1f} M params, micro batch {r['micro_batch']}, {r['step_ms']:.1f} ms/step, "
                f"{r['samples_per_s']:.2f} samples/s")
        if "tokens_per_s" in r:
            line += f", {r['tokens_per_s']:.0f} tokens/s"
            line += f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        line += f", peak {r['peak_memory_gb']:.1f} GB" if r["peak_memory_gb"] is not None else ""
        print(line + f", loss {r['loss']:.3f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
