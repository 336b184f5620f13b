"""detokenizer.init_from: the detokenizer stage starts from an imported (or earlier) DIR/detokenizer."""

from __future__ import annotations

import pytest
import torch

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.models.video_detokenizer import VideoDetokenizer
from videolavit.stages.detokenizer import load_start_weights, start_folder

VIDEO = {"frames": 4, "height": 8, "width": 8, "motion_encoder": {"grid": [4, 4], "depth": 1}}


def test_models_start_from_the_saved_weights(tmp_path):
    torch.manual_seed(0)
    saved = VideoDetokenizer(**VIDEO, temporal_context="per_pixel", motion_input="official", motion_rescale=10.0)
    saved.save_pretrained(tmp_path / "detokenizer" / "video")
    KeyframeDetokenizer(cond_dim=16, image_size=(8, 8)).save_pretrained(tmp_path / "detokenizer" / "keyframe")
    kwargs = {"vae_dir": None}
    folder = start_folder(str(tmp_path / "detokenizer"), "video", kwargs)
    assert kwargs["vae_dir"] is None  # the saved model has no VAE: pixel space stays
    fresh = VideoDetokenizer(**VIDEO, temporal_context="per_pixel", motion_input="official", motion_rescale=10.0)
    assert not torch.equal(fresh.unet.conv_in.weight, saved.unet.conv_in.weight)
    assert load_start_weights(fresh, folder) == len(saved.state_dict())
    for name, tensor in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    other = KeyframeDetokenizer(cond_dim=24, image_size=(8, 8))  # another condition width than saved
    with pytest.raises(ConfigError, match=r"detokenizer.init_from: .* cond_proj.weight is \[64, 16\] there"):
        load_start_weights(other, start_folder(str(tmp_path / "detokenizer"), "keyframe", {}))


def test_a_missing_part_and_the_vae_of_the_start_folder(tmp_path):
    with pytest.raises(MissingArtifactError, match="detokenizer.init_from: no video detokenizer"):
        start_folder(str(tmp_path), "video", {})
    (tmp_path / "video" / "vae").mkdir(parents=True)
    (tmp_path / "video" / "config.json").write_text("{}")
    (tmp_path / "video" / "vae" / "config.json").write_text("{}")
    kwargs = {"vae_dir": None}
    start_folder(str(tmp_path), "video", kwargs)
    assert kwargs["vae_dir"] == str(tmp_path / "video" / "vae")  # built in the VAE its weights were trained in
    kwargs = {"vae_dir": "/elsewhere"}
    start_folder(str(tmp_path), "video", kwargs)
    assert kwargs["vae_dir"] == "/elsewhere"  # a configured one wins
    assert start_folder(None, "video", kwargs) is None


def test_init_from_replaces_the_svd_and_vae_requirements_of_the_paper_profile():
    from videolavit.config import load_config
    from videolavit.training.required import missing_before_training

    cfg = load_config(profile="paper", params_file=None)
    assert any(m.startswith("detokenizer.video.svd_dir") for m in missing_before_training(cfg, "detokenizer"))
    cfg = load_config(profile="paper", params_file=None, overrides=["detokenizer.init_from=released/detokenizer"])
    assert not [m for m in missing_before_training(cfg, "detokenizer") if m.startswith("detokenizer.")]
