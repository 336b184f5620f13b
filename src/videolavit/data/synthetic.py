"""The synthetic corpus: procedural H.264 videos and PNG images with captions and typed QA, no downloads needed.

Each video shows 1–2 textured objects (shape, color, size) over a textured, sometimes panning, background; each
24-frame clip (4 s) has its own direction and speed per object, and the motion changes from clip to clip. Motion is
what an ablation without motion tokens must fail on, so nothing static may reveal it: objects start in a central
region whatever their direction, and the frame is a torus (an object leaving one edge re-enters at the opposite one),
so every direction and speed stays possible from every position and no keyframe tells where an object goes next.
Speeds are at least ~2 px per 6-fps frame at the 192×128 encode size, and objects and backgrounds are textured, so
the MPEG-4 encoder of the decompose stage finds real motion vectors.

Held out: ``heldout_pairs`` (shape, color) pairs never appear in train or val; the main object of every test sample
has one of them (val stays in distribution). Same seed → byte-identical manifests and media.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from videolavit.data.manifest import QA, Conversation, Sample, corpus_counts, write_instruct, write_manifest, write_meta
from videolavit.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 35),
    "purple": (145, 55, 195),
    "orange": (245, 130, 20),
}
SIZES = {"small": 0.16, "large": 0.22}  # radius as a fraction of the frame height
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# px per second at a 256-px-wide frame: slow is 1.5 px per 12-fps frame, i.e. 2.25 (x) / 2.4 (y) px per 6-fps frame
# at the 192×128 encode size, just above what the MPEG-4 motion search reliably finds.
SPEEDS = {"slow": 18.0, "fast": 36.0}
PAN_SPEED = 6.0  # background pan, px per second at 256 px wide
PAN_PROBABILITY = 1 / 3
TWO_OBJECT_PROBABILITY = 0.4
BACKGROUNDS = ("noisy", "striped", "checkered")
REFERENCE_WIDTH = 256
# x264 on one thread is bit-exact from run to run; veryfast keeps the tiny corpus build short.
X264_OPTIONS = {"threads": "1", "preset": "veryfast", "crf": "18"}
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
DIR_PHRASE = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
SPEED_ADVERB = {"slow": "slowly", "fast": "quickly"}
VERBS = ("moves", "glides", "slides")
DESCRIBE = {"video": ("Describe the video.", "What happens in this video?"), "image": ("Describe the image.",)}


@dataclass
class ObjectSpec:
    shape: str
    color: str
    size: str
    start: tuple[float, float]  # centre in px
    directions: list[str] = field(default_factory=list)  # one per clip (videos only)
    speeds: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class MediaSpec:
    """Everything needed to render one sample; rendering is a pure function of this and the frame geometry."""

    id: str
    kind: str
    split: str
    background: str
    pan: str  # "none" or a direction
    objects: list[ObjectSpec]
    num_clips: int
    seed: int


@dataclass
class Geometry:
    width: int
    height: int
    fps: float
    frames_per_clip: int  # source frames in one clip (24 frames at 6 fps = 48 at 12 fps)
    tail_frames: int  # extra source frames so resampling to 6 fps never drops a clip's last frame

    @property
    def scale(self) -> float:
        return self.width / REFERENCE_WIDTH

    def num_frames(self, num_clips: int) -> int:
        return num_clips * self.frames_per_clip + self.tail_frames


# --------------------------------------------------------------------------------------------------------------------
# Planning: attributes, captions, QA. No pixels here, so tests can check the design over thousands of samples.


def choose_heldout(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` (shape, color) pairs with distinct shapes and colors, so every shape and color stays in training."""
    count = min(count, len(SHAPES), len(COLORS))
    shapes = rng.permutation(SHAPES)[:count]
    colors = rng.permutation(list(COLORS))[:count]
    return sorted((str(s), str(c)) for s, c in zip(shapes, colors))


def _pick(rng: np.random.Generator, values) -> str:
    values = list(values)
    return values[int(rng.integers(len(values)))]


def _plan_objects(rng, split, heldout, geo: Geometry, num_clips: int, video: bool, two_objects: float) -> list[ObjectSpec]:
    allowed = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in heldout]
    first = heldout[int(rng.integers(len(heldout)))] if split == "test" and heldout else allowed[int(rng.integers(len(allowed)))]
    pairs = [first]
    if rng.random() < two_objects:
        # distinct shape AND color, so "the red object" and "the circle" each name exactly one object
        others = [(s, c) for s, c in allowed if s != first[0] and c != first[1]]
        pairs.append(others[int(rng.integers(len(others)))])
    objects: list[ObjectSpec] = []
    for shape, color in pairs:
        size = _pick(rng, SIZES)
        radius = SIZES[size] * geo.height
        for _ in range(100):  # central start region, away from the other object when there is room
            x = geo.width * rng.uniform(0.3, 0.7)
            y = geo.height * rng.uniform(0.3, 0.7)
            if all(np.hypot(x - o.start[0], y - o.start[1]) > radius + SIZES[o.size] * geo.height + 2 for o in objects):
                break
        obj = ObjectSpec(shape, color, size, (round(float(x), 2), round(float(y), 2)))
        for k in range(num_clips if video else 0):
            # Each clip's direction is uniform whatever came before, so neither the keyframe (where earlier motion
            # left the object) nor the previous clip tells it; the motion still changes: same direction → speed flips.
            obj.directions.append(_pick(rng, DIRECTIONS))
            same = k > 0 and obj.directions[k] == obj.directions[k - 1]
            obj.speeds.append(_pick(rng, [v for v in SPEEDS if v != obj.speeds[-1]]) if same else _pick(rng, SPEEDS))
        objects.append(obj)
    return objects


def plan_sample(rng, sample_id, kind, split, heldout, geo: Geometry, min_clips=1, max_clips=3,
                two_objects: float = TWO_OBJECT_PROBABILITY) -> MediaSpec:
    num_clips = int(rng.integers(min_clips, max_clips + 1)) if kind == "video" else 0
    background = _pick(rng, BACKGROUNDS)
    pan = _pick(rng, DIRECTIONS) if kind == "video" and rng.random() < PAN_PROBABILITY else "none"
    objects = _plan_objects(rng, split, heldout, geo, num_clips, kind == "video", two_objects)
    return MediaSpec(sample_id, kind, split, background, pan, objects, num_clips, int(rng.integers(2**31)))


def caption(spec: MediaSpec, rng: np.random.Generator) -> str:
    objs = spec.objects
    if spec.kind == "image":
        things = " and ".join(f"a {o.size} {o.color} {o.shape}" for o in objs)
        return f"{things} on a {spec.background} background"
    verb = _pick(rng, VERBS)
    first = " and ".join(
        f"a {o.size} {o.name} {verb} {SPEED_ADVERB[o.speeds[0]]} {DIR_PHRASE[o.directions[0]]}" for o in objs
    )
    text = f"{first} over a {spec.background} background"
    if spec.pan != "none":
        text += f" that scrolls {DIR_PHRASE[spec.pan]}"
    for k in range(1, spec.num_clips):
        phrases = [_change(o, k, verb) for o in objs]
        if len(objs) == 1:
            text += f", then {phrases[0]}"
        else:
            text += ", then " + " and ".join(f"the {o.name} {p}" for o, p in zip(objs, phrases))
    return text


def _change(o: ObjectSpec, k: int, verb: str) -> str:
    if o.directions[k] == o.directions[k - 1]:
        return "speeds up" if o.speeds[k] == "fast" else "slows down"
    return f"{verb} {DIR_PHRASE[o.directions[k]]}"


def questions(spec: MediaSpec) -> list[QA]:
    """Typed QA: appearance (a keyframe answers it), motion (one clip's motion), temporal (needs several clips)."""
    qa = [QA("What pattern is the background?", spec.background, "appearance")]
    for o in spec.objects:
        qa += [
            QA(f"What color is the {o.shape}?", o.color, "appearance"),
            QA(f"What shape is the {o.color} object?", o.shape, "appearance"),
            QA(f"Is the {o.name} small or large?", o.size, "appearance"),
        ]
    if spec.kind != "video":
        return qa
    if spec.pan != "none":
        qa.append(QA("Which direction does the background move?", spec.pan, "motion"))
    n = spec.num_clips
    for o in spec.objects:
        for k in range(n):
            when = "" if n == 1 else f" in the {_ordinal(k)} clip"
            qa.append(QA(f"Which direction does the {o.name} move{when}?", o.directions[k], "motion"))
            qa.append(QA(f"Does the {o.name} move fast or slow{when}?", o.speeds[k], "motion"))
        if n < 2:
            continue
        d = o.directions
        qa.append(QA(f"Where does the {o.name} move first?", d[0], "temporal"))
        qa.append(QA(f"Where does the {o.name} move last?", d[-1], "temporal"))
        for k in range(n - 1):
            if d.count(d[k]) == 1:  # "after it moves left" must name one moment
                qa.append(QA(f"Where does the {o.name} move after it moves {DIR_PHRASE[d[k]]}?", d[k + 1], "temporal"))
        for k in range(1, n):
            if d.count(d[k]) == 1:
                qa.append(QA(f"Where does the {o.name} move before it moves {DIR_PHRASE[d[k]]}?", d[k - 1], "temporal"))
    return qa


def _ordinal(k: int) -> str:
    return ORDINALS[k] if k < len(ORDINALS) else f"number {k + 1}"


def to_sample(spec: MediaSpec, rng: np.random.Generator, geo: Geometry) -> Sample:
    objects = [
        {"shape": o.shape, "color": o.color, "size": o.size, "start": [round(o.start[0] / geo.width, 4), round(o.start[1] / geo.height, 4)]}
        for o in spec.objects
    ]
    attributes = {
        "shape": spec.objects[0].shape,
        "color": spec.objects[0].color,
        "size": spec.objects[0].size,
        "background": spec.background,
        "pan": spec.pan,
        "num_objects": len(spec.objects),
        "num_clips": spec.num_clips,
        "objects": objects,
    }
    clips = [
        {
            "direction": spec.objects[0].directions[k],
            "speed": spec.objects[0].speeds[k],
            "objects": [{"direction": o.directions[k], "speed": o.speeds[k]} for o in spec.objects],
        }
        for k in range(spec.num_clips)
    ]
    return Sample(spec.id, spec.kind, to_path(spec), caption(spec, rng), questions(spec), attributes, clips)


def conversations(sample: Sample, split: str, rng: np.random.Generator) -> list[Conversation]:
    """One description request plus one single-turn dialogue per QA pair (LLaVA format)."""
    tag = f"<{sample.kind}>\n"
    out = [
        Conversation(
            f"{sample.id}_caption", sample.id, sample.kind, split,
            [{"from": "human", "value": tag + _pick(rng, DESCRIBE[sample.kind])}, {"from": "gpt", "value": sample.caption}],
        )
    ]
    for i, q in enumerate(sample.qa):
        turns = [{"from": "human", "value": tag + q.question}, {"from": "gpt", "value": q.answer}]
        out.append(Conversation(f"{sample.id}_q{i:02d}", sample.id, sample.kind, split, turns, q.type))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def periodic_noise(rng: np.random.Generator, height: int, width: int, cutoff: float) -> np.ndarray:
    """Smooth noise in [0, 1] that tiles the frame seamlessly (Gaussian low-pass at ``cutoff`` cycles/px), [H, W]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    spectrum = np.fft.fft2(rng.standard_normal((height, width))) * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))
    field_ = np.real(np.fft.ifft2(spectrum))
    return (field_ - field_.min()) / max(float(np.ptp(field_)), 1e-8)


def render_background(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation texture that tiles the frame, so panning by np.roll has no seam. uint8 [H, W, 3]."""
    y, x = np.mgrid[0:height, 0:width]
    fine = periodic_noise(rng, height, width, cutoff=0.15)
    period = float(rng.choice([16, 24, 32]))
    if kind == "noisy":
        value = 0.65 * periodic_noise(rng, height, width, cutoff=0.02) + 0.35 * fine
    elif kind == "striped":
        # whole numbers of periods across the frame keep the texture periodic
        orientation = _pick(rng, ("vertical", "horizontal", "diagonal"))
        kx = 0 if orientation == "horizontal" else max(1, round(width / period))
        ky = 0 if orientation == "vertical" else max(1, round(height / period))
        value = 0.7 * (np.sin(2 * np.pi * (kx * x / width + ky * y / height)) > 0) + 0.3 * fine
    elif kind == "checkered":
        nx, ny = 2 * max(1, round(width / (2 * period))), 2 * max(1, round(height / (2 * period)))
        value = 0.7 * (np.sin(np.pi * nx * (x + 0.5) / width) * np.sin(np.pi * ny * (y + 0.5) / height) > 0) + 0.3 * fine
    else:
        raise ValueError(f"unknown background '{kind}'; valid: {BACKGROUNDS}")
    dark, light = rng.uniform(45, 80), rng.uniform(150, 190)
    tint = rng.uniform(0.9, 1.1, size=3)
    img = (dark + (light - dark) * value)[..., None] * tint  # [H, W, 3]
    return np.clip(img, 0, 255).astype(np.uint8)


def shape_mask(shape: str, radius: float, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred in a square sprite, [S, S]."""
    size = int(np.ceil(2 * radius)) + 1
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample - size / 2
    yy, xx = np.meshgrid(coords / radius, coords / radius, indexing="ij")
    if shape == "circle":
        inside = xx**2 + yy**2 <= 1
    elif shape == "square":
        inside = (np.abs(xx) <= 0.82) & (np.abs(yy) <= 0.82)
    elif shape == "diamond":
        inside = np.abs(xx) + np.abs(yy) <= 1
    elif shape == "triangle":
        inside = (yy <= 0.75) & (np.abs(xx) <= (yy + 0.95) / 1.7 * 0.98)
    elif shape == "cross":
        inside = ((np.abs(xx) <= 0.34) & (np.abs(yy) <= 0.95)) | ((np.abs(yy) <= 0.34) & (np.abs(xx) <= 0.95))
    else:
        raise ValueError(f"unknown shape '{shape}'; valid: {SHAPES}")
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render_sprite(obj: ObjectSpec, rng: np.random.Generator, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB [S, S, 3] float32, alpha [S, S, 1] float32): the object's color modulated by its own texture, which moves with it."""
    alpha = shape_mask(obj.shape, SIZES[obj.size] * height)
    s = alpha.shape[0]
    texture = periodic_noise(rng, s, s, cutoff=0.12)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (np.arange(s)[None, :] + np.arange(s)[:, None]) / max(s / 3, 4))
    shade = 0.6 + 0.28 * texture + 0.12 * stripes  # keep the hue: only the brightness varies
    rgb = np.asarray(COLORS[obj.color], dtype=np.float32) * shade[..., None].astype(np.float32)
    return rgb, alpha[..., None].astype(np.float32)


def trajectory(obj: ObjectSpec, geo: Geometry, num_frames: int) -> np.ndarray:
    """Object centre per source frame, wrapped onto the frame torus, [T, 2] (x, y)."""
    steps = np.zeros((num_frames, 2))
    for t in range(1, num_frames):
        k = min((t - 1) // geo.frames_per_clip, len(obj.directions) - 1)  # the move into frame t belongs to t-1's clip
        speed = SPEEDS[obj.speeds[k]] * geo.scale / geo.fps
        steps[t] = np.asarray(DIRECTIONS[obj.directions[k]], dtype=np.float64) * speed
    pos = np.asarray(obj.start) + np.cumsum(steps, axis=0)
    return np.mod(pos, [geo.width, geo.height])


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, centre: np.ndarray) -> None:
    """Alpha-blend a sprite into a uint8 frame in place, wrapping around the edges (the frame is a torus)."""
    h, w = frame.shape[:2]
    s = alpha.shape[0]
    x0, y0 = int(np.round(centre[0] - s / 2)), int(np.round(centre[1] - s / 2))
    x0, y0 = x0 % w, y0 % h
    if x0 + s <= w and y0 + s <= h:  # fast path: no wrap, a view instead of fancy indexing
        rows, cols = slice(y0, y0 + s), slice(x0, x0 + s)
    else:
        rows, cols = np.ix_((y0 + np.arange(s)) % h, (x0 + np.arange(s)) % w)
    blended = frame[rows, cols] * (1 - alpha) + rgb * alpha
    frame[rows, cols] = np.clip(np.round(blended), 0, 255).astype(np.uint8)


def render_frames(spec: MediaSpec, geo: Geometry) -> Iterator[np.ndarray]:
    """The sample's frames, uint8 [H, W, 3] each (one frame for an image)."""
    rng = np.random.default_rng(spec.seed)
    background = render_background(spec.background, rng, geo.height, geo.width)  # [H, W, 3] uint8
    sprites = [render_sprite(o, rng, geo.height) for o in spec.objects]
    if spec.kind == "image":
        frame = background.copy()
        for (rgb, alpha), o in zip(sprites, spec.objects):
            _paste(frame, rgb, alpha, np.asarray(o.start))
        yield frame
        return
    n = geo.num_frames(spec.num_clips)
    paths = [trajectory(o, geo, n) for o in spec.objects]
    pan = np.asarray(DIRECTIONS.get(spec.pan, (0, 0)))
    pan_step = PAN_SPEED * geo.scale / geo.fps
    for t in range(n):
        shift = np.round(pan * pan_step * t).astype(int)
        frame = np.roll(background, shift=(int(shift[1]), int(shift[0])), axis=(0, 1))
        for (rgb, alpha), path in zip(sprites, paths):
            _paste(frame, rgb, alpha, path[t])
        yield frame


def render_to_file(spec: MediaSpec, geo: Geometry, path: str) -> str:
    from videolavit.video.io import write_video

    frames = render_frames(spec, geo)
    if spec.kind == "image":
        from PIL import Image

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(next(frames)).save(path, format="PNG")
    else:
        write_video(path, frames, fps=geo.fps, codec="libx264", options=X264_OPTIONS)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The whole corpus


def split_counts(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Share ``total`` between splits in proportion to ``weights`` (largest remainder, deterministic)."""
    whole = sum(weights.values())
    if whole == 0:
        return {k: 0 for k in weights}
    raw = {k: total * w / whole for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def plan_corpus(cfg, geo: Geometry) -> tuple[list[MediaSpec], list[tuple[str, str]]]:
    """Every sample's spec, in manifest order, and the held-out (shape, color) pairs; a pure function of ``cfg``."""
    _check(cfg, geo)
    rng = np.random.default_rng(int(cfg.seed))
    heldout = choose_heldout(rng, int(cfg.heldout_pairs))
    videos = {"train": int(cfg.train_videos), "val": int(cfg.val_videos), "test": int(cfg.test_videos)}
    images = split_counts(int(cfg.images), videos if sum(videos.values()) else {"train": 1, "val": 0, "test": 0})
    specs = []
    v = i = 0
    two = float(cfg.two_object_probability)
    for split in ("train", "val", "test"):
        for _ in range(videos[split]):
            specs.append(plan_sample(rng, f"vid_{v:05d}", "video", split, heldout, geo, int(cfg.min_clips), int(cfg.max_clips), two))
            v += 1
        for _ in range(images[split]):
            specs.append(plan_sample(rng, f"img_{i:05d}", "image", split, heldout, geo, two_objects=two))
            i += 1
    return specs, heldout


def _check(cfg, geo: Geometry) -> None:
    if not 1 <= int(cfg.min_clips) <= int(cfg.max_clips):
        raise ConfigError(f"corpus.min_clips and corpus.max_clips need 1 <= min <= max, got {cfg.min_clips} and {cfg.max_clips}")
    if geo.width % 2 or geo.height % 2 or min(geo.width, geo.height) < 64:
        raise ConfigError(f"corpus.width and corpus.height must be even and at least 64 (H.264 4:2:0), got {geo.width}×{geo.height}")
    for key in ("train_videos", "val_videos", "test_videos", "images", "heldout_pairs"):
        if int(getattr(cfg, key)) < 0:
            raise ConfigError(f"corpus.{key} must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= float(cfg.two_object_probability) <= 1.0:
        raise ConfigError(f"corpus.two_object_probability must be in [0, 1], got {cfg.two_object_probability}")
    if geo.frames_per_clip < 1 or geo.fps <= 0:
        raise ConfigError(f"corpus.fps must be positive, got {geo.fps}")


def build_synthetic(corpus_dir: str | Path, cfg, video_fps: float = 6.0, clip_frames: int = 24, workers: Optional[int] = None) -> dict:
    """Render and write the whole synthetic corpus to ``corpus_dir``; returns meta["counts"] plus render_seconds."""
    corpus_dir = Path(corpus_dir)
    fps = float(cfg.fps)
    ratio = fps / float(video_fps)
    geo = Geometry(int(cfg.width), int(cfg.height), fps, int(round(clip_frames * ratio)), max(1, int(round(ratio))))
    specs, heldout = plan_corpus(cfg, geo)
    text_rng = np.random.default_rng([int(cfg.seed), 1])  # captions and prompts: independent of the media plan
    samples = {s: [] for s in ("train", "val", "test")}
    convs: list[Conversation] = []
    for spec in specs:
        sample = to_sample(spec, text_rng, geo)
        samples[spec.split].append(sample)
        convs.extend(conversations(sample, spec.split, text_rng))

    started = time.perf_counter()
    jobs = [(spec, geo, str(corpus_dir / to_path(spec))) for spec in specs]
    workers = max(1, int(workers if workers is not None else getattr(cfg, "workers", 1) or 1))
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            render_to_file(*job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(render_to_file, *zip(*jobs), chunksize=2))
    render_seconds = time.perf_counter() - started

    for split, items in samples.items():
        write_manifest(corpus_dir, split, items)
    write_instruct(corpus_dir, convs)
    counts = corpus_counts(samples, convs)
    write_meta(
        corpus_dir,
        {
            "source": "synthetic",
            "seed": int(cfg.seed),
            "attributes": {
                "shape": list(SHAPES), "color": list(COLORS), "size": list(SIZES), "direction": list(DIRECTIONS),
                "speed": list(SPEEDS), "background": list(BACKGROUNDS), "pan": ["none", *DIRECTIONS],
            },
            "counts": counts,
            "heldout": [{"shape": s, "color": c} for s, c in heldout],
            "geometry": {"width": geo.width, "height": geo.height, "fps": geo.fps, "frames_per_clip": geo.frames_per_clip},
        },
    )
    return {**counts, "render_seconds": render_seconds}


def to_path(spec: MediaSpec) -> str:
    return f"videos/{spec.id}.mp4" if spec.kind == "video" else f"images/{spec.id}.png"
