"""Motion EPE, video PSNR / SSIM, and metric names that say which extractor produced a number."""

from __future__ import annotations

import math

import pytest
import torch

from videolavit.metrics import MotionEPE, VideoPSNR, VideoSSIM, is_published_extractor, metric_name, video_psnr, video_ssim


def test_motion_epe_is_mean_vector_length_of_the_error():
    target = torch.zeros(2, 2, 3, 4, 4)  # [B, 2, T, H, W]
    pred = target.clone()
    pred[0, 0] = 3.0
    pred[0, 1] = 4.0  # every vector of clip 0 is off by (3, 4): EPE 5; clip 1 is exact
    metric = MotionEPE()
    metric.update(pred, target)
    assert float(metric.compute()) == pytest.approx(2.5)
    mask = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    mask[0] = True
    masked = MotionEPE()
    masked.update(pred, target, mask=mask)
    assert float(masked.compute()) == pytest.approx(5.0)


def test_motion_epe_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"\[B, 2, \.\.\.\]"):
        MotionEPE().update(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="mask"):
        MotionEPE().update(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), mask=torch.ones(2, 2, 4, dtype=torch.bool))


def test_video_psnr_averages_per_frame_values():
    target = torch.full((1, 2, 3, 16, 16), 0.5)  # [B, T, C, H, W]
    pred = target.clone()
    pred[:, 0] += 0.1  # MSE 1e-2 → 20 dB
    pred[:, 1] += 0.01  # MSE 1e-4 → 40 dB
    assert float(video_psnr(pred, target)) == pytest.approx(30.0, abs=1e-3)  # a pooled MSE would give ≈ 22.97
    metric = VideoPSNR()
    metric.update(pred, target)
    metric.update(pred[:, :1], target[:, :1])
    assert float(metric.compute()) == pytest.approx((20 + 40 + 20) / 3, abs=1e-3)


def test_uint8_and_unit_float_agree():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 3, 16, 16), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 3, 16, 16), generator=gen, dtype=torch.uint8)
    assert float(video_psnr(a, b)) == pytest.approx(float(video_psnr(a / 255, b / 255)), rel=1e-5)
    assert float(video_ssim(a, b)) == pytest.approx(float(video_ssim(a / 255, b / 255)), rel=1e-5)
    assert float(video_ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(float(video_psnr(a, a)))
    metric = VideoSSIM()
    metric.update(a, b)
    assert float(metric.compute()) == pytest.approx(float(video_ssim(a, b)), rel=1e-6)


def test_reconstruction_inputs_fail_clearly():
    video = torch.rand(1, 2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        video_psnr(video * 2 - 1, video)
    with pytest.raises(ValueError, match="uint8"):
        video_psnr((video * 255).to(torch.uint8), video)
    with pytest.raises(ValueError, match="at least 11x11"):
        video_ssim(torch.rand(1, 2, 3, 8, 8), torch.rand(1, 2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        video_psnr(torch.rand(1, 2, 16, 16, 3), torch.rand(1, 2, 16, 16, 3))


def test_metric_names_carry_the_extractor():
    assert metric_name("t2v/fvd", "i3d:/models/i3d_torchscript.pt") == "t2v/fvd_i3d"
    assert metric_name("t2v/fvd", "corpus") == "t2v/fvd_corpus"
    assert metric_name("t2v/clipsim", "clip") == "t2v/clipsim_clip"
    assert is_published_extractor("t2v/fvd_i3d") and not is_published_extractor("t2v/clipsim_corpus")
    with pytest.raises(ValueError, match="extractor"):
        metric_name("t2v/fvd", object())
    with pytest.raises(ValueError, match="lowercase"):
        metric_name("t2v/fvd", "I3D v2")
