"""The data path at WebVid-10M scale: manifest memory per shard, bytes per clip, and the stage's memory per worker.

    python benchmarks/data_scale.py manifest [--rows 10000000] [--shards 1000]   # simulated manifest (rows, no media)
    python benchmarks/data_scale.py clips [VIDEO] [--crf 14,17,20]                # paper-profile clips: bytes, PSNR
    python benchmarks/data_scale.py rss VIDEO [VIDEO ...] [--old-src DIR]         # the stage's peak RSS per worker
    python benchmarks/data_scale.py index [--images 136000000] [--world 64]      # the image index per rank

``manifest``: one ``--shard i/n`` process's manifest memory (tracemalloc peak of Python allocations) and bytes read:
the stage's streaming share (data/manifest.iter_manifest_share through clip_units.plan_units) at ``--rows``, against
the old route (read_manifest of the whole split + a job dict per row, then keep every n-th), measured at
``--old-rows`` and extrapolated linearly (it is linear: both sizes are printed). The manifest is written streaming
to ``--dir`` (default /tmp/videolavit_manifest), WebVid-like rows of ~190 bytes.

``clips``: a real-ish H.264 720p30 video (multi-scale texture panning under a moving textured object, libx264 CRF 23:
~2 Mb/s, like WebVid's) unless VIDEO is given, cut into paper-profile clips (video/), each written both in the old
format (raw uint8 frames, float32 motion) and as the stage now writes them (decompose.frame_codec and friends).
Prints shard bytes per clip, the decoded frames' PSNR against the raw frames, float16 motion error, and the
encode/decode seconds per clip.

``rss``: `videolavit decompose --profile paper` on a one-video corpus, one worker; the peak RSS of the worker (the
stage's ``worker_peak_rss_mb`` metric) and of the whole process tree. ``--old-src``: the same with the stage of an
older checkout (``git archive <rev> src | tar -x -C DIR``), whose one worker was the stage process itself.

``index``: the visual tokenizer's image index (data/image_index.py) per rank, from simulated tar headers (4 members
a clip, 512 clips a tar, WebVid-like keys): the old route (an ImageItem per keyframe, every tar on every rank) and the
columnar index of one rank's tars, each measured (tracemalloc peak) at ``--measure`` images and extrapolated linearly
to ``--images`` (every rank / 1/``--world`` of them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

WORDS = "a man woman dog cat walks runs on the beach street in slow motion aerial view of city at sunset".split()


# --- manifest ---------------------------------------------------------------------------------------------------------


def write_manifest(path: Path, rows: int) -> Path:
    """WebVid-like rows, streamed to disk (never held)."""
    if path.is_file() and path.with_suffix(".rows").is_file() and int(path.with_suffix(".rows").read_text()) == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, rows, 100_000):
            lengths = rng.integers(6, 16, min(100_000, rows - start))
            words = rng.integers(0, len(WORDS), int(lengths.sum()))
            k = 0
            for i, n in enumerate(lengths, start=start):
                caption = " ".join(WORDS[w] for w in words[k : k + n])
                k += n
                f.write(f'{{"id": "wv_{i:09d}", "kind": "video", "path": "videos/{i // 10000:05d}/wv_{i:09d}.mp4", '
                        f'"caption": "{caption}", "qa": [], "attributes": {{}}, "clips": []}}\n')
    path.with_suffix(".rows").write_text(str(rows))
    return path


def old_share(corpus: Path, shard_i: int, shard_n: int) -> int:
    """The old stage's route: every row parsed and made a job dict, then every n-th kept."""
    from videolavit.data.manifest import read_manifest

    jobs = []
    for sample in read_manifest(corpus, "train"):
        if sample.kind == "video":
            path = str(corpus / sample.path)
            jobs.append({"id": sample.id, "path": path, "split": "train", "caption": sample.caption})
    return len([job for k, job in enumerate(jobs) if k % shard_n == shard_i])


def new_share(corpus: Path, shard_i: int, shard_n: int) -> int:
    """The stage's route: units streamed from this shard's byte range (the names kept, as the stage does)."""
    from videolavit.data.clip_units import plan_units

    planned, videos = [], 0
    for unit in plan_units(corpus, f"{shard_i}of{shard_n}", shard_i, shard_n, 64):
        planned.append((unit.name, unit.split))
        videos += len(unit.jobs)
    return videos


def measure(fn, *args) -> tuple[int, float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, peak / 2**20, seconds


def bench_manifest(args) -> None:
    base = Path(args.dir)
    big = write_manifest(base / f"rows{args.rows}" / "train.jsonl", args.rows).parent
    size = (big / "train.jsonl").stat().st_size
    print(f"manifest: {args.rows:,} rows, {size / 2**30:.2f} GiB; shard 0/{args.shards}")
    videos, new_mb, new_s = measure(new_share, big, 0, args.shards)
    print(f"  new (byte-range share, streamed): {videos:,} videos, peak {new_mb:.2f} MiB, {new_s:.2f} s, "
          f"reads {size / args.shards / 2**20:.1f} MiB")
    per_row = []
    for rows in args.old_rows:
        small = write_manifest(base / f"rows{rows}" / "train.jsonl", rows).parent
        videos, old_mb, old_s = measure(old_share, small, 0, args.shards)
        per_row.append(old_mb / rows)
        print(f"  old at {rows:,} rows (whole manifest + jobs): {videos:,} videos, peak {old_mb:.1f} MiB, "
              f"{old_s:.1f} s ({old_mb / rows * 2**20:.0f} B/row)")
    old_at_rows = per_row[-1] * args.rows
    print(f"  old extrapolated to {args.rows:,} rows: {old_at_rows / 1024:.2f} GiB, reads {size / 2**30:.2f} GiB")
    print(f"  old / new manifest memory per shard: {old_at_rows / new_mb:,.0f}x; bytes read: {args.shards}x")


# --- bytes per clip ---------------------------------------------------------------------------------------------------


def make_video(path: Path, seconds: float, fps: int = 30, crf: int = 23, preset: str = "veryfast") -> Path:
    """Real-ish 720p H.264: a multi-scale smooth texture panning, a textured square moving over it."""
    import av
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 720, 1280

    def texture(th: int, tw: int) -> np.ndarray:
        acc = np.zeros((th, tw, 3), np.float32)
        for scale, weight in ((4, 1.0), (16, 1.0), (64, 0.8), (256, 0.5)):
            small = (rng.random((max(th // scale, 2), max(tw // scale, 2), 3)) * 255).astype(np.uint8)
            acc += weight * np.asarray(Image.fromarray(small).resize((tw, th), Image.BICUBIC), np.float32)
        return ((acc - acc.min()) / (acc.max() - acc.min()) * 255).astype(np.uint8)

    background, square = texture(h + 200, w * 2), texture(160, 160)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for t in range(int(seconds * fps)):
            x, y = int(t * 90 / fps) % w, int(100 + 80 * np.sin(t / fps / 3))
            frame = background[y : y + h, x : x + w].copy()
            ox = int((w - 160) * (0.5 + 0.5 * np.sin(t / fps)))
            oy = int((h - 160) * (0.5 + 0.5 * np.cos(t / fps * 0.7)))
            frame[oy : oy + 160, ox : ox + 160] = square
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def bench_clips(args) -> None:
    from videolavit.config import load_config
    from videolavit.data import clip_codec
    from videolavit.data.shards import ClipShardWriter, clip_key, iter_shard
    from videolavit.video import iter_clips

    cfg = load_config(profile="paper", params_file=None)
    dec = cfg.decompose
    tmp = Path(tempfile.mkdtemp(prefix="data_scale_"))
    video = Path(args.video) if args.video else make_video(tmp / "real720p.mp4", 20)
    print(f"video: {video} ({video.stat().st_size / 1e6:.1f} MB); paper profile, frames {cfg.video.frames_width}x"
          f"{cfg.video.frames_height}, codec {dec.frame_codec} ({clip_codec.X264_PRESET}, {clip_codec.X264_PIX_FMT}), "
          f"motion {dec.motion_dtype}")
    records = []
    for clip in iter_clips(video, cfg.video, keep_frames=True):
        records.append({"key": clip_key("v", clip.index), "keyframe": clip.keyframe, "motion": clip.motion,
                        "frames": clip.frames, "meta": {"video_id": "v", "clip": clip.index}})
        if len(records) == args.max_clips:
            break
    raw = np.stack([r["frames"] for r in records])
    motion = np.stack([r["motion"] for r in records])
    settings = [("old (raw npy, float32)", "npy", "float32", 0)]
    settings += [(f"new ({dec.frame_codec} crf {crf}, {dec.motion_dtype})", dec.frame_codec, dec.motion_dtype, crf)
                 for crf in (args.crf or [int(dec.frame_crf)])]
    old_bytes = None
    for label, codec, dtype, crf in settings:
        out = tmp / f"{codec}{crf}"
        started = time.perf_counter()
        with ClipShardWriter(out, "train", frame_codec=codec, motion_dtype=dtype, frame_crf=crf) as writer:
            for record in records:
                writer.write(record)
        encode_s = (time.perf_counter() - started) / len(records)
        (tar,) = writer.paths
        per_clip = tar.stat().st_size / len(records)
        started = time.perf_counter()
        decoded = list(iter_shard(tar, ("keyframe", "motion", "frames", "meta")))
        decode_s = (time.perf_counter() - started) / len(records)
        frames = np.stack([r["frames"] for r in decoded])
        scores = [psnr(d, r) for d, r in zip(frames, raw)]
        fidelity = "identical" if np.array_equal(frames, raw) else f"{np.mean(scores):5.2f} dB (min {min(scores):5.2f})"
        err = np.abs(np.stack([r["motion"] for r in decoded]) - motion)
        old_bytes = old_bytes or per_clip
        print(f"  {label:38s} {per_clip / 1e6:6.3f} MB/clip ({old_bytes / per_clip:5.1f}x smaller)  frames PSNR "
              f"{fidelity}  motion max err {err.max():.1e} "
              f"(std {motion.std():.2f})  encode {encode_s:.2f} s, decode {decode_s:.3f} s per clip")
    print(f"  ({len(records)} clips; 1 MB = 1e6 bytes; the paper-profile target is <= 1.5 MB)")


# --- the stage's memory -----------------------------------------------------------------------------------------------


def bench_rss(args) -> None:
    for video in args.videos:
        for label, src in (("new", None), ("old", args.old_src)):
            if label == "old" and not src:
                continue
            root = Path(tempfile.mkdtemp(prefix=f"data_scale_rss_{label}_"))
            (root / "corpus").mkdir()
            row = {"id": "long", "kind": "video", "path": str(Path(video).resolve()), "caption": "", "qa": [],
                   "attributes": {}, "clips": []}
            (root / "corpus" / "train.jsonl").write_text(json.dumps(row) + "\n")
            paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "metrics", "runs")]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if src:
                env["PYTHONPATH"] = str(Path(src) / "src")
            started = time.perf_counter()
            cmd = [sys.executable, "-m", "videolavit.cli", "decompose", "--profile", "paper", *paths,
                   "tracking.enabled=false", "decompose.workers=1"]
            # A fresh parent per run: its RUSAGE_CHILDREN peak is the largest process of this run's tree alone.
            wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
                       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
            done = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=root, env=env, capture_output=True,
                                  text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                print(f"  {label} {video}: failed: {done.stderr[-2000:]}")
                continue
            tree = int(done.stdout.split()[-1]) / 1024
            metrics = json.loads((root / "metrics" / "decompose.json").read_text())
            worker = metrics.get("worker_peak_rss_mb", tree)  # the old stage ran its one worker in-process
            print(f"  {label} {Path(video).name}: {metrics['clips']:.0f} clips in {seconds:.0f} s; peak RSS of the "
                  f"worker {worker:.0f} MB, of the largest process in the tree {tree:.0f} MB", flush=True)


# --- image index per rank -----------------------------------------------------------------------------------------------


def simulated_headers(images: int, share: int = 0, shares: int = 1, per_tar: int = 512):
    """(tar index, member name, offset, size) of the clip tars ``share``, ``share + shares``, … holding ``images``
    keyframes (json, keyframe, motion, frames members per clip)."""
    tars = -(-images // per_tar)
    for tar in range(share, tars, shares):
        offset = 512
        for clip in range(tar * per_tar, min(images, (tar + 1) * per_tar)):
            key = f"{1000000000 + clip // 4}__c{clip % 4:03d}"
            for ext, size in (("json", 180), ("keyframe.npy", 150656), ("motion.npy", 69248), ("frames.mp4", 1200000)):
                yield tar, f"{key}.{ext}", offset, size
                offset += 512 + -(-size // 512) * 512


def old_index(images: int) -> int:
    """The old keyframe_items: one frozen ImageItem (key, str(path), offset, size) per keyframe member."""
    from videolavit.data.image_index import ImageItem

    path = "/data/clips/train-0of1-{:05d}.tar"
    items = [ImageItem(n.partition(".")[0], str(path.format(t)), o, s)
             for t, n, o, s in simulated_headers(images) if n.endswith(".keyframe.npy")]
    return len(items)


def new_index(images: int, rank: int, world: int) -> int:
    from videolavit.data.image_index import ImageIndex, keyframe_columns

    tars = [f"/data/clips/train-0of1-{t:05d}.tar" for t in range(-(-images // 512))]
    index = ImageIndex(tars[rank::world], *keyframe_columns(simulated_headers(images, rank, world)),
                       np.zeros(0, "S1"), np.zeros(0, "S1"))
    return len(index)


def bench_index(args) -> None:
    n = args.measure
    count, old_mb, old_s = measure(old_index, n)
    print(f"image index, measured at {n:,} images (simulated tar headers), extrapolated to {args.images:,}:")
    print(f"  old (ImageItem per keyframe, every tar on every rank): {old_mb * 2**20 / count:.0f} B/image, "
          f"{old_mb:.0f} MiB in {old_s:.1f} s -> {old_mb / count * args.images / 1024:.1f} GiB per rank")
    for world in (1, args.world):
        count, new_mb, new_s = measure(new_index, n, 0, world)
        per_image = new_mb * 2**20 / count
        print(f"  new (columnar, rank 0 of {world}): {count:,} images, {per_image:.0f} B/image peak, {new_mb:.1f} MiB in "
              f"{new_s:.1f} s -> {per_image * args.images / world / 2**30:.2f} GiB per rank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("--rows", type=int, default=10_000_000)
    m.add_argument("--shards", type=int, default=1000)
    m.add_argument("--old-rows", type=lambda s: [int(x) for x in s.split(",")], default=[250_000, 1_000_000])
    m.add_argument("--dir", default="/tmp/videolavit_manifest")
    c = sub.add_parser("clips")
    c.add_argument("video", nargs="?")
    c.add_argument("--crf", type=lambda s: [int(x) for x in s.split(",")], default=None)
    c.add_argument("--max-clips", type=int, default=12)
    r = sub.add_parser("rss")
    r.add_argument("videos", nargs="+")
    r.add_argument("--old-src", default=None)
    x = sub.add_parser("index")
    x.add_argument("--images", type=int, default=136_000_000)
    x.add_argument("--world", type=int, default=64)
    x.add_argument("--measure", type=int, default=1_000_000)
    args = parser.parse_args()
    {"manifest": bench_manifest, "clips": bench_clips, "rss": bench_rss, "index": bench_index}[args.what](args)


if __name__ == "__main__":
    main()
