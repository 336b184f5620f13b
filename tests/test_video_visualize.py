"""show_motion and ``videolavit show-motion``: arrows over the keyframe (PNG) or the clip (GIF)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from videolavit.cli import main
from videolavit.config import load_config
from videolavit.errors import ConfigError, VideoError
from videolavit.video.io import write_video
from fixtures.synthetic_video import moving_square
from videolavit.video.visualize import show_motion


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("viz") / "square.mp4"
    return write_video(path, moving_square(192, 128, 48, (3, -2)), fps=6)


@pytest.fixture(scope="module")
def tiny():
    return load_config(profile="tiny", params_file=None)


def test_png_draws_arrows_over_the_keyframe(tmp_path, square_video, tiny):
    moving = np.asarray(Image.open(show_motion(square_video, tmp_path / "m.png", tiny, frame=5)).convert("RGB"))
    still = np.asarray(Image.open(show_motion(square_video, tmp_path / "s.png", tiny, frame=0)).convert("RGB"))
    assert moving.shape == (320, 480, 3)  # the 192×128 encode size, enlarged to stay readable
    arrow = np.array([255, 230, 0])
    assert (moving == arrow).all(axis=-1).sum() > 50  # frame 5 moves: arrows are drawn
    assert (still == arrow).all(axis=-1).sum() == 0  # frame 0 is the keyframe: no motion, no arrows


def test_gif_animates_the_clip(tmp_path, square_video, tiny):
    out = show_motion(square_video, tmp_path / "m.gif", tiny, clip=1)
    with Image.open(out) as gif:
        assert gif.n_frames == 24 and gif.size == (480, 320)


def test_unknown_extension_and_out_of_range_arguments(tmp_path, square_video, tiny):
    with pytest.raises(ConfigError, match="unknown extension '.jpg'"):
        show_motion(square_video, tmp_path / "m.jpg", tiny)
    with pytest.raises(ConfigError, match="frame 24 is outside"):
        show_motion(square_video, tmp_path / "m.png", tiny, frame=24)
    with pytest.raises(VideoError, match="clip 5 does not exist: the video has 2 clips"):
        show_motion(square_video, tmp_path / "m.png", tiny, clip=5)


def test_cli_show_motion(tmp_path, square_video, capsys):
    out = tmp_path / "cli.png"
    assert main(["show-motion", str(square_video), "--out", str(out), "--frame", "3"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["show-motion", str(tmp_path / "nope.mp4"), "--out", str(out)]) == 2
    assert "nope.mp4: no such file" in capsys.readouterr().err


def test_draw_motion_puts_arrows_where_the_field_moves(tiny):
    from videolavit.video import normalize_motion
    from videolavit.video.visualize import draw_motion

    image = np.full((64, 64, 3), 40, np.uint8)
    px = np.zeros((2, 1, 8, 12), np.float32)
    px[0, 0, 2:4, 6:9] = 4.0  # 4 px/frame to the right in a block of the right half
    field = normalize_motion(px, tiny)[:, 0]
    drawn = np.asarray(draw_motion(image, field, tiny, title="decoded"))
    arrow = (drawn == np.array([255, 230, 0])).all(axis=-1)
    assert drawn.shape == (320, 480, 3)
    assert arrow[:, 240:].sum() > 20 and arrow[20:, :200].sum() == 0  # arrows only over the moving block
    still = np.asarray(draw_motion(image, np.zeros((2, 8, 12), np.float32), tiny))
    assert (still == np.array([255, 230, 0])).all(axis=-1).sum() == 0
    with pytest.raises(ConfigError, match=r"one motion frame \[2, h, w\]"):
        draw_motion(image, np.zeros((2, 3, 8, 12)), tiny)
