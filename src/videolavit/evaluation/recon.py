"""Reconstruction: the motion tokenizer round trip (EPE), the video and keyframe detokenizers re-rendering real clips.

One scoring of detokenizer renderings (``RenderScores``), used by the detokenizer stage's held-out evaluation
(``score_detokenizers``) and by ``evaluate``'s recon protocol (``evaluate_recon``).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from videolavit.data.clip_settings import check_clip_settings
from videolavit.data.pixels import frames_to_unit, to_uint8, to_unit
from videolavit.evaluation.extractors import Extractors, fvd_of, read_clips
from videolavit.evaluation.protocol import Results


class RenderScores:
    """PSNR / SSIM of named renderings against the truth, ``[B, T, 3, H, W]`` uint8; metric ``<kind>_<psnr|ssim><suffix>``.

    Video scores skip frame 0 (the given keyframe: a static baseline would score it as infinite); SSIM only where the
    frames are at least SSIM_KERNEL px and, with ``ssim_sources``, only for those renderings.
    """

    def __init__(self, kind: str, sources: dict[str, str], size, skip_first: bool, ssim_sources=None):
        from videolavit.metrics.reconstruction import SSIM_KERNEL, VideoPSNR, VideoSSIM

        self.ssim = min(size) >= SSIM_KERNEL
        self.start = 1 if skip_first else 0
        self.metrics: dict[str, tuple[str, Any]] = {}  # metric name → (rendering scored, metric)
        for source, suffix in sources.items():
            self.metrics[f"{kind}_psnr{suffix}"] = (source, VideoPSNR())
            if self.ssim and (ssim_sources is None or source in ssim_sources):
                self.metrics[f"{kind}_ssim{suffix}"] = (source, VideoSSIM())

    def update(self, outputs: dict[str, torch.Tensor], real: torch.Tensor) -> None:
        for source, metric in self.metrics.values():
            metric.update(outputs[source][:, self.start :], real[:, self.start :])

    def compute(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{name}": float(m.compute()) for name, (_, m) in self.metrics.items() if int(m.num_frames)}


def _u8(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(to_uint8(x))


@torch.no_grad()
def score_detokenizers(
    keyframe,
    video,
    tokenizers,
    records: list[dict],
    eval_cfg: Any,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Sample-based metrics over ``records`` and the rendered videos (uint8 [N, T, H, W, 3] per row).

    ``tokenizers`` gives ``keyframe_condition(keyframes)`` and ``motion_from_tokens(motion)`` (the frozen tokenizers).
    """
    rows: dict[str, list[torch.Tensor]] = {}
    bs = max(1, int(eval_cfg.batch_size))
    kf_scores = None
    if keyframe is not None:
        kf_scores = RenderScores("keyframe", {"sample": ""}, tuple(keyframe.config["image_size"]), skip_first=False)
    sources = {"tokens": "", "true_motion": "_true_motion", "static_baseline": "_static_baseline"}
    warp = video is not None and video.config.get("motion_warp", False)
    if warp:  # what the U-Net starts from: the keyframe carried along the true motion
        sources["warp_baseline"] = "_warp_baseline"
    video_scores = None
    if video is not None:
        video_scores = RenderScores("video", sources, (video.config["height"], video.config["width"]), skip_first=True)
    for start in range(0, len(records), bs):
        chunk = records[start : start + bs]
        frames_u8 = torch.from_numpy(np.stack([r["frames"] for r in chunk]))  # [B, T, Hf, Wf, 3]
        if keyframe is not None:
            size = tuple(keyframe.config["image_size"])
            target = frames_to_unit(frames_u8[:, :1], size)[:, 0]  # [B, 3, H, W]
            cond = tokenizers.keyframe_condition(torch.from_numpy(np.stack([r["keyframe"] for r in chunk])))
            generator = torch.Generator(device=device).manual_seed(seed + start)
            sample = keyframe.sample(
                cond.to(device), int(eval_cfg.keyframe_steps), float(eval_cfg.keyframe_guidance), generator,
                output_type="float",
            ).cpu()
            real, fake = _u8(target)[:, None], _u8(sample)[:, None]  # [B, 1, 3, H, W]
            kf_scores.update({"sample": fake}, real)
            rows.setdefault("keyframe_true", []).append(real[:, 0])
            rows.setdefault("keyframe_sample", []).append(fake[:, 0])
        if video is not None:
            size = (video.config["height"], video.config["width"])
            frames = frames_to_unit(frames_u8, size)  # [B, T, 3, H, W]
            key = frames[:, 0].to(device)
            motion = torch.from_numpy(np.stack([r["motion"] for r in chunk])).to(device)  # [B, 2, T, h, w]
            real = _u8(frames)
            outputs = {"static_baseline": real[:, :1].expand_as(real).contiguous()}
            if warp:
                outputs["warp_baseline"] = _u8(video.warp(key, motion))
            for name, field in (("tokens", tokenizers.motion_from_tokens(motion)), ("true_motion", motion)):
                # the same initial noise for both, so their difference is the motion's alone
                generator = torch.Generator(device=device).manual_seed(seed + start)
                out = video.sample(
                    key, field, steps=int(eval_cfg.video_steps), max_guidance=float(eval_cfg.video_guidance),
                    generator=generator,
                )
                outputs[name] = _u8(out)
            video_scores.update(outputs, real)
            rows.setdefault("true", []).append(real)
            for name in ("static_baseline", "tokens", "true_motion"):
                rows.setdefault(name, []).append(outputs[name])
    metrics: dict[str, float] = {}
    if kf_scores is not None:
        metrics.update(kf_scores.compute("val"))
    if video_scores is not None:
        metrics.update(video_scores.compute("val"))
        metrics["val/video_psnr_gain"] = metrics["val/video_psnr"] - metrics["val/video_psnr_static_baseline"]
    metrics["val/clips"] = float(len(records))
    return metrics, {k: torch.cat(v).movedim(-3, -1).numpy() for k, v in rows.items()}  # channels last


def evaluate_recon(cfg: DictConfig, protocol: DictConfig, results: Results, pipe, ext: Extractors) -> None:
    """Motion tokenizer round trip (EPE), video and keyframe detokenizers re-rendering real clips (PSNR / SSIM)."""
    from videolavit.metrics.motion import MotionEPE
    from videolavit.metrics.reconstruction import SSIM_KERNEL
    from videolavit.video.motion import denormalize_motion

    check_clip_settings(cfg, ("motion", "frames", "keyframe"))  # EPE/PSNR of clips read at other sizes mean nothing
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
        sources = {"fake": "", "static": "_static_baseline"}
        warp = bool(vd.config.get("motion_warp", False))
        if warp:  # the keyframe carried along the TRUE motion: what the U-Net refines (PSNR only)
            sources["warp"] = "_warp_baseline"
        scores = RenderScores("video", sources, size, skip_first=True, ssim_sources=("fake", "static"))
        if not scores.ssim:
            keys = ["recon/video_ssim", "recon/video_ssim_static_baseline"]
            results.missing(keys, f"SSIM needs frames ≥ {SSIM_KERNEL} px")
        rendered = []
        for clip, motion in with_frames:
            # the truth at the detokenizer's size, resized as the detokenizer stage resizes its targets
            unit = torch.cat([to_unit(frame, size, "cpu") for frame in clip["frames"]])  # [T, 3, h, w]
            real = torch.from_numpy(to_uint8(unit))[None]  # [1, T, 3, h, w] uint8
            key = unit[:1].to(pipe.device)
            out = vd.sample(key, motion[None], int(g.video_steps), float(g.video_guidance), pipe.generator)
            fake = torch.from_numpy(to_uint8(out))  # [1, T, 3, H, W]
            outputs = {"fake": fake, "static": real[:, :1].expand_as(real).contiguous()}
            if warp:
                true_motion = torch.from_numpy(clip["motion"])[None].to(pipe.device)
                outputs["warp"] = torch.from_numpy(to_uint8(vd.warp(key, true_motion)))
            rendered.append(fake[0].permute(0, 2, 3, 1).numpy())
            scores.update(outputs, real)  # frame 0 is the given condition: scored on frames 1…T−1
        results.update(scores.compute("recon"))
        results.set("count/recon_video_clips", float(len(rendered)))
        value, why = fvd_of(ext, rendered)
        results.set("recon/" + ext.fvd_key.split("/", 1)[1], value, why)
    recon_keyframes(results, pipe, clips[: int(recon.keyframes)])


def recon_keyframes(results: Results, pipe, clips: list[dict]) -> None:
    """Keyframes → visual tokens → keyframe detokenizer, against the clip's first frame at the detokenizer's size."""
    from videolavit.metrics.reconstruction import SSIM_KERNEL

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
    scores = RenderScores("keyframe", {"sample": ""}, size, skip_first=False)
    scores.update({"sample": fake_u8}, real_u8)
    values = scores.compute("recon")
    results.set("recon/keyframe_psnr", values["recon/keyframe_psnr"])
    results.set("recon/keyframe_ssim", values.get("recon/keyframe_ssim"), f"SSIM needs keyframes ≥ {SSIM_KERNEL} px")
    results.set("count/recon_keyframes", float(len(clips)))
