"""Reconstruction: the motion tokenizer round trip (EPE), the video and keyframe detokenizers re-rendering real clips."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from omegaconf import DictConfig

from videolavit.evaluation.extractors import Extractors, fvd_of, read_clips
from videolavit.evaluation.protocol import Results


def evaluate_recon(cfg: DictConfig, protocol: DictConfig, results: Results, pipe, ext: Extractors) -> None:
    """Motion tokenizer round trip (EPE), video and keyframe detokenizers re-rendering real clips (PSNR / SSIM)."""
    from videolavit.generate import to_uint8, to_unit
    from videolavit.metrics.motion import MotionEPE
    from videolavit.metrics.reconstruction import SSIM_KERNEL, VideoPSNR, VideoSSIM
    from videolavit.video.motion import denormalize_motion

    recon, m = protocol.recon, pipe.m
    epe, zero, count = MotionEPE(), MotionEPE(), 0
    records = read_clips(cfg.paths.clips, recon.split, recon.motion_clips, ("motion",), stream=True)
    motions = (r["motion"] for r in records)
    with torch.no_grad():
        while chunk := list(itertools.islice(motions, 32)):
            true = torch.from_numpy(np.stack(chunk)).to(pipe.device)  # [B, 2, T, h, w]
            rec = m.motion_tokenizer.decode(m.motion_tokenizer.encode(true))
            px_true, px_rec = denormalize_motion(true, cfg, axis=1).cpu(), denormalize_motion(rec, cfg, axis=1).cpu()
            epe.update(px_rec, px_true)
            zero.update(torch.zeros_like(px_true), px_true)
            count += len(chunk)
    if not count:
        keys = ["recon/motion_epe", "recon/video_psnr", "recon/video_psnr_static_baseline"]
        results.missing(keys, f"no '{recon.split}' clip shards")
        return
    results.set("recon/motion_epe", float(epe.compute()))
    results.set("recon/motion_epe_zero_baseline", float(zero.compute()))
    results.set("count/recon_motion_clips", float(count))
    clips = read_clips(cfg.paths.clips, recon.split, max(int(recon.video_clips), int(recon.keyframes), 1))
    with torch.no_grad():
        motion = torch.from_numpy(np.stack([c["motion"] for c in clips])).to(pipe.device)
        decoded = m.motion_tokenizer.decode(m.motion_tokenizer.encode(motion))  # what generation gives g_V

    vd, g = m.video_detokenizer, cfg.generate
    size = (vd.config["height"], vd.config["width"])
    with_frames = [(c, d) for c, d in zip(clips, decoded) if "frames" in c][: int(recon.video_clips)]
    if not with_frames:
        reason = f"no '{recon.split}' clips with frames (video.frames_height/width were 0 at decompose)"
        results.missing(["recon/video_psnr", "recon/video_psnr_static_baseline"], reason)
    else:
        names = ["recon/video_psnr", "recon/video_psnr_static_baseline"]
        warp = bool(vd.config.get("motion_warp", False))
        if warp:  # the keyframe carried along the TRUE motion: what the U-Net refines
            names.append("recon/video_psnr_warp_baseline")
        if min(size) >= SSIM_KERNEL:
            names += ["recon/video_ssim", "recon/video_ssim_static_baseline"]
        else:
            keys = ["recon/video_ssim", "recon/video_ssim_static_baseline"]
            results.missing(keys, f"SSIM needs frames ≥ {SSIM_KERNEL} px")
        metrics = {k: (VideoPSNR() if "psnr" in k else VideoSSIM()) for k in names}
        rendered = []
        for clip, motion in with_frames:
            # the truth at the detokenizer's size, resized as the detokenizer stage resizes its targets
            unit = torch.cat([to_unit(frame, size, "cpu") for frame in clip["frames"]])  # [T, 3, h, w]
            real = torch.from_numpy(to_uint8(unit))[None]  # [1, T, 3, h, w] uint8
            key = unit[:1].to(pipe.device)
            out = vd.sample(key, motion[None], int(g.video_steps), float(g.video_guidance), pipe.generator)
            fake = torch.from_numpy(to_uint8(out))  # [1, T, 3, H, W]
            baselines = {"static": real[:, :1].expand_as(real).contiguous()}
            if warp:
                true_motion = torch.from_numpy(clip["motion"])[None].to(pipe.device)
                baselines["warp"] = torch.from_numpy(to_uint8(vd.warp(key, true_motion)))
            rendered.append(fake[0].permute(0, 2, 3, 1).numpy())
            for name, metric in metrics.items():  # frame 0 is the given condition: scored on frames 1…T−1
                source = next((v for k, v in baselines.items() if f"_{k}_baseline" in name), fake)
                metric.update(source[:, 1:], real[:, 1:])
        results.update({name: float(metric.compute()) for name, metric in metrics.items()})
        results.set("count/recon_video_clips", float(len(rendered)))
        value, why = fvd_of(ext, rendered)
        results.set("recon/" + ext.fvd_key.split("/", 1)[1], value, why)
    recon_keyframes(results, pipe, clips[: int(recon.keyframes)])


def recon_keyframes(results: Results, pipe, clips: list[dict]) -> None:
    """Keyframes → visual tokens → keyframe detokenizer, against the clip's first frame at the detokenizer's size."""
    from videolavit.generate import to_uint8, to_unit
    from videolavit.metrics.reconstruction import SSIM_KERNEL, video_psnr, video_ssim

    if not clips:
        return
    m, g = pipe.m, pipe.cfg.generate
    kf = m.keyframe_detokenizer
    size = tuple(kf.config["image_size"])
    keyframes = np.stack([c["keyframe"] for c in clips])  # [B, S, S, 3]: the visual tokenizer's input
    with torch.no_grad():
        codes = m.visual_tokenizer.encode(m.visual_tokenizer.preprocess(keyframes))
        cond = m.visual_tokenizer.decode_features(codes)
        fake = kf.sample(cond, int(g.keyframe_steps), float(g.keyframe_guidance), pipe.generator, output_type="float")
    # the target the detokenizer stage trains on: the clip's first frame at the detokenizer's size
    real = torch.cat([to_unit(c["frames"][0] if "frames" in c else c["keyframe"], size, "cpu") for c in clips])
    real_u8, fake_u8 = (torch.from_numpy(to_uint8(x))[:, None] for x in (real, fake.cpu()))  # [B, 1, 3, H, W]
    results.set("recon/keyframe_psnr", float(video_psnr(fake_u8, real_u8)))
    ssim = float(video_ssim(fake_u8, real_u8)) if min(size) >= SSIM_KERNEL else None
    results.set("recon/keyframe_ssim", ssim, f"SSIM needs keyframes ≥ {SSIM_KERNEL} px")
    results.set("count/recon_keyframes", float(len(clips)))
