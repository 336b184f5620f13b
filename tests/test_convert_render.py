"""The imported parts together: generate's loader accepts DIR/detokenizer beside the imported tokenizers, and they
render a two-clip video from visual and motion codes as generate does (keyframe, motion, the noise-constrained next
keyframe). Small seeded stand-ins of every part (tests/fixtures/released_weights.py); no golden: the per-part parity
is in the other test_convert_*.py."""

from __future__ import annotations

import functools
import json

import torch

from fixtures.released_weights import (
    KEYFRAME_UNET_SMALL, MOTION_SMALL, SVD_SCHEDULER, UNET_SMALL, VIDEO_ENCODER_SMALL, VISUAL_SMALL,
    keyframe_unet_state_small, motion_input_small, motion_state_small, video_detokenizer_state_small,
    visual_input_small, visual_states_small,
)
from videolavit.convert.release import import_release


def _release(root):
    release = root / "release"
    (release / "visual_tokenizer").mkdir(parents=True)
    for name, state in visual_states_small().items():
        torch.save(state, release / "visual_tokenizer" / name)
    torch.save(motion_state_small(), release / "motion_tokenizer.bin")
    unet = release / "image_detokenizer" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **KEYFRAME_UNET_SMALL}))
    torch.save(keyframe_unet_state_small(), unet / "diffusion_pytorch_model.bin")
    video = release / "video_detokenizer"
    (video / "unet").mkdir(parents=True)
    (video / "scheduler").mkdir()
    (video / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel",
                                                            **UNET_SMALL}))
    (video / "scheduler" / "scheduler_config.json").write_text(json.dumps(SVD_SCHEDULER))
    torch.save(video_detokenizer_state_small(), video / "unet" / "diffusion_pytorch_model.bin")
    return release


def test_imported_parts_load_together_and_render_a_video_from_codes(tmp_path):
    from videolavit.config import load_config
    from videolavit.inference.loading import Models, _load_detokenizers
    from videolavit.inference.long_video import generate_long_video
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.models.visual_tokenizer import VisualTokenizer

    out = tmp_path / "out"
    heads = VISUAL_SMALL["heads"]
    results = import_release(
        _release(tmp_path), out, parts=["motion_tokenizer", "visual_tokenizer", "video_detokenizer", "image_detokenizer"],
        motion_heads=MOTION_SMALL["heads"], motion_grid=(MOTION_SMALL["height"], MOTION_SMALL["width"]),
        eva_heads=heads, visual_heads=heads, visual_decoder_heads=heads, encoder_heads=VIDEO_ENCODER_SMALL["heads"],
        encoder_grid=VIDEO_ENCODER_SMALL["grid"], video_frames=MOTION_SMALL["frames"], video_size=(8, 12))
    assert {r.part: r.status for r in results if r.status != "skipped"} == {
        "motion_tokenizer": "converted", "visual_tokenizer": "converted", "video_detokenizer": "converted",
        "image_detokenizer": "converted"}
    models = Models(visual_tokenizer=VisualTokenizer.from_pretrained(out / "visual_tokenizer").eval(),
                    motion_tokenizer=MotionTokenizer.from_pretrained(out / "motion_tokenizer").eval())
    cfg = load_config(profile="tiny", params_file=None, overrides=[f"generate.detokenizer_path={out / 'detokenizer'}"])
    _load_detokenizers(cfg, models, "cpu")  # generate's loader and its agreement checks
    vt, mt, vd = models.visual_tokenizer, models.motion_tokenizer, models.video_detokenizer
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        torch.manual_seed(0)  # the imported visual tokenizer samples its token selection (Gumbel), as the official
        codes = vt.encode(visual_input_small()[:2])
        conds = [vt.decode_features([c]) for c in codes]  # one keyframe condition per clip
        motion = mt.decode(mt.encode(motion_input_small()[:2]))  # [2, 2, 16, 8, 16]: the tokenizer's grid
        video = functools.partial(vd.sample, steps=2, max_guidance=2.0, generator=g)
        rendered = generate_long_video(models.keyframe_detokenizer, video, conds, [motion[:1], motion[1:]],
                                       video_size=(8, 12), keyframe_steps=2, keyframe_guidance=2.0, generator=g)
    frames = rendered.frames
    assert frames.shape == (1, 2 * MOTION_SMALL["frames"] - 1, 3, 8, 12)
    assert torch.isfinite(frames).all() and frames.abs().max() <= 1 and frames.std() > 0
    assert [tuple(k.shape) for k in rendered.keyframes] == [(1, 3, 16, 16)] * 2  # the keyframe detokenizer's size
