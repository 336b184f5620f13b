"""The synthetic corpus: design properties (held-out split, no motion leak), real codec motion, determinism."""

from collections import Counter
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from videolavit.config import load_config
from videolavit.data import synthetic as S
from videolavit.data.manifest import read_instruct, read_manifest, read_meta
from videolavit.errors import ConfigError

SMALL = ["corpus.train_videos=3", "corpus.val_videos=1", "corpus.test_videos=2", "corpus.images=4", "corpus.max_clips=2"]


def _cfg(*overrides):
    return load_config(overrides=["tracking.enabled=false", *overrides], params_file=None).corpus


GEO = S.Geometry(width=256, height=160, fps=12.0, frames_per_clip=48, tail_frames=2)


@pytest.fixture(scope="module")
def plan():
    """A large plan (no pixels): enough samples to check the design statistically."""
    return S.plan_corpus(_cfg("corpus.train_videos=3000", "corpus.val_videos=200", "corpus.test_videos=400", "corpus.images=600"), GEO)


def test_heldout_pairs_only_in_test(plan):
    specs, heldout = plan
    assert len(heldout) == 4 and len({s for s, _ in heldout}) == 4 and len({c for _, c in heldout}) == 4
    for spec in specs:
        pairs = {(o.shape, o.color) for o in spec.objects}
        if spec.split == "test":
            assert (spec.objects[0].shape, spec.objects[0].color) in heldout
        else:
            assert not pairs & set(heldout), f"{spec.id} ({spec.split}) uses a held-out pair"
    train = [o for s in specs if s.split == "train" for o in s.objects]
    assert {o.shape for o in train} == set(S.SHAPES) and {o.color for o in train} == set(S.COLORS)


def test_start_position_does_not_reveal_direction(plan):
    specs, _ = plan
    starts = {d: [] for d in S.DIRECTIONS}
    for spec in specs:
        for o in spec.objects:
            if spec.kind == "video":
                starts[o.directions[0]].append(o.start)
    for d, xy in starts.items():
        xy = np.asarray(xy) / [GEO.width, GEO.height]
        assert xy.min() >= 0.3 and xy.max() <= 0.7, "objects start in the central region"
        assert np.allclose(xy.mean(axis=0), 0.5, atol=0.02), f"start positions of '{d}' objects are biased: {xy.mean(0)}"


def test_clip_motion_is_independent_of_the_previous_clip_and_always_changes(plan):
    specs, _ = plan
    same = total = 0
    for o in (o for s in specs if s.kind == "video" for o in s.objects):
        for k in range(1, len(o.directions)):
            total += 1
            same += o.directions[k] == o.directions[k - 1]
            assert (o.directions[k], o.speeds[k]) != (o.directions[k - 1], o.speeds[k - 1])
    assert total > 1000 and abs(same / total - 0.25) < 0.03


def test_speeds_are_detectable_at_the_tiny_encode_size():
    # px per 6-fps frame after scaling 256×160 to the 192×128 encode size
    for speed in S.SPEEDS.values():
        per_6fps = speed * GEO.scale / 6.0
        assert per_6fps * 192 / GEO.width >= 2.0 and per_6fps * 128 / GEO.height >= 2.0


def test_qa_matches_the_clips():
    rng = np.random.default_rng(0)
    spec = S.MediaSpec("vid_00001", "video", "train", "striped", "left",
                       [S.ObjectSpec("circle", "red", "large", (128, 80), ["left", "up", "up"], ["slow", "slow", "fast"])], 3, 1)
    sample = S.to_sample(spec, rng, GEO)
    qa = {q.question: (q.answer, q.type) for q in sample.qa}
    assert qa["What color is the circle?"] == ("red", "appearance")
    assert qa["Which direction does the red circle move in the second clip?"] == ("up", "motion")
    assert qa["Does the red circle move fast or slow in the third clip?"] == ("fast", "motion")
    assert qa["Which direction does the background move?"] == ("left", "motion")
    assert qa["Where does the red circle move first?"] == ("left", "temporal")
    assert qa["Where does the red circle move after it moves to the left?"] == ("up", "temporal")
    assert not any("before it moves up" in q for q in qa), "ambiguous: 'up' happens twice"
    assert sample.caption.startswith("a large red circle") and "then speeds up" in sample.caption
    assert [c["direction"] for c in sample.clips] == ["left", "up", "up"]


def test_rendered_video_frames_and_image(tmp_path):
    spec = S.MediaSpec("v", "video", "train", "checkered", "none",
                       [S.ObjectSpec("square", "blue", "small", (128, 80), ["right"], ["fast"])], 1, 7)
    path = S.render_to_file(spec, GEO, str(tmp_path / "v.mp4"))
    with av.open(path) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == Fraction(12)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(frames) == 48 + 2 and frames[0].shape == (160, 256, 3)
    image = S.MediaSpec("i", "image", "train", "noisy", "none", [S.ObjectSpec("triangle", "yellow", "large", (128, 80))], 0, 3)
    png = np.asarray(Image.open(S.render_to_file(image, GEO, str(tmp_path / "i.png"))))
    assert png.shape == (160, 256, 3)
    centre = png[70:90, 118:138].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[1] > 120 and centre[2] < 60, f"the yellow triangle is at the centre: {centre}"


def _mpeg4_motion(path, width=192, height=128):
    """Like the decompose stage: 6 fps, scaled, MPEG-4 GOP 12 without B-frames; forward motion [T, H/16, W/16, 2]."""
    with av.open(str(path)) as c:
        frames = [f.reformat(width=width, height=height, format="yuv420p") for i, f in enumerate(c.decode(video=0)) if i % 2 == 0]
    enc = av.CodecContext.create("mpeg4", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate, enc.gop_size, enc.max_b_frames, enc.bit_rate = Fraction(1, 6), Fraction(6), 12, 0, 8_000_000
    packets = []
    for i, f in enumerate(frames):
        f.pts, f.time_base, f.pict_type = i, Fraction(1, 6), av.video.frame.PictureType.NONE
        packets += enc.encode(f)
    packets += enc.encode(None)
    dec = av.CodecContext.create("mpeg4", "r")
    dec.options = {"flags2": "+export_mvs"}
    out = []
    for p in [*packets, None]:
        for f in dec.decode(p):
            motion = np.zeros((height // 16, width // 16, 2))
            vectors = f.side_data.get("MOTION_VECTORS")
            if vectors is not None:
                a = vectors.to_ndarray()
                a = a[a["source"] < 0]
                bx, by = np.clip(a["dst_x"] // 16, 0, width // 16 - 1), np.clip(a["dst_y"] // 16, 0, height // 16 - 1)
                motion[by, bx, 0] = -a["motion_x"] / a["motion_scale"]
                motion[by, bx, 1] = -a["motion_y"] / a["motion_scale"]
            out.append(motion)
    return np.stack(out)


def _covered_blocks(obj, t, width=192, height=128):
    """Which 16×16 encode blocks the object covers by at least 70% at source frame t, [H/16, W/16] bool."""
    mask = np.zeros((GEO.height, GEO.width))
    alpha = S.shape_mask(obj.shape, S.SIZES[obj.size] * GEO.height)
    S._paste(mask[..., None], np.ones_like(alpha)[..., None], alpha[..., None], S.trajectory(obj, GEO, t + 1)[t])
    small = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.BILINEAR))
    return small.reshape(height // 16, 16, width // 16, 16).mean(axis=(1, 3)) > 0.7


def test_motion_vectors_follow_the_labelled_direction_and_speed(tmp_path):
    obj = S.ObjectSpec("circle", "green", "small", (128, 80), ["left", "up", "right", "down"], ["slow", "fast", "slow", "fast"])
    spec = S.MediaSpec("m", "video", "train", "striped", "right", [obj], 4, 11)  # a panning background too
    motion = _mpeg4_motion(S.render_to_file(spec, GEO, str(tmp_path / "m.mp4")))
    assert motion.shape[0] >= 4 * 24
    for k in range(4):
        vectors = [motion[24 * k + j][_covered_blocks(obj, 2 * (24 * k + j))] for j in range(1, 24)]
        median = np.median(np.concatenate(vectors), axis=0)
        unit = np.asarray(S.DIRECTIONS[obj.directions[k]])
        along, across = median @ unit, abs(median[0] * unit[1] - median[1] * unit[0])
        assert along >= (1.0 if obj.speeds[k] == "slow" else 3.0), f"clip {k} {obj.directions[k]}: median motion {median}"
        assert across <= 1.0, f"clip {k}: motion {median} is not along {obj.directions[k]}"


def test_same_seed_same_corpus(tmp_path):
    for name in ("a", "b"):
        S.build_synthetic(tmp_path / name, _cfg(*SMALL))
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "instruct.jsonl", "meta.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    samples = read_manifest(tmp_path / "a", "train") + read_manifest(tmp_path / "a", "test")
    for s in (s for s in samples if s.kind == "video"):
        with av.open(str(s.media_path(tmp_path / "a"))) as ca, av.open(str(s.media_path(tmp_path / "b"))) as cb:
            fa = [f.to_ndarray(format="rgb24") for f in ca.decode(video=0)]
            fb = [f.to_ndarray(format="rgb24") for f in cb.decode(video=0)]
        assert len(fa) == len(fb) == 48 * s.attributes["num_clips"] + 2
        assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    other = S.plan_corpus(_cfg(*SMALL, "corpus.seed=1"), GEO)[0]
    assert [o.start for s in other for o in s.objects] != [o.start for s in S.plan_corpus(_cfg(*SMALL), GEO)[0] for o in s.objects]


def test_built_corpus_manifest(tmp_path):
    counts = S.build_synthetic(tmp_path, _cfg(*SMALL), workers=2)
    meta = read_meta(tmp_path)
    assert meta["source"] == "synthetic" and meta["counts"]["train_videos"] == 3 and meta["counts"]["test_videos"] == 2
    assert counts["train_images"] + counts["val_images"] + counts["test_images"] == 4
    heldout = {(h["shape"], h["color"]) for h in meta["heldout"]}
    ids = set()
    for split in ("train", "val", "test"):
        for s in read_manifest(tmp_path, split):
            ids.add(s.id)
            assert s.media_path(tmp_path).is_file()
            assert len(s.clips) == s.attributes["num_clips"] and 1 <= len(s.clips) <= 2 or s.kind == "image"
            assert ((s.attributes["shape"], s.attributes["color"]) in heldout) == (split == "test")
    convs = read_instruct(tmp_path)
    assert {c.media_id for c in convs} == ids
    assert {c.split for c in convs} == {"train", "val", "test"}
    assert Counter(c.type for c in convs)["motion"] == counts["qa_motion"]
    assert all(c.conversations[0]["value"].startswith(f"<{c.media_kind}>\n") for c in convs)


@pytest.mark.parametrize(
    "override, message",
    [("corpus.width=255", "must be even"), ("corpus.min_clips=3", "1 <= min <= max"), ("corpus.images=-1", "corpus.images")],
)
def test_bad_corpus_settings_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        S.build_synthetic(tmp_path, _cfg(*SMALL, override))
    assert not (tmp_path / "videos").exists()
