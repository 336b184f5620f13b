"""Decomposition speed and memory: this pipeline vs the official route (ffmpeg CLI re-encode + motion-vector decode).

    python benchmarks/decompose.py                 # synthetic clip + 10 s of H.264 720p30, every route
    python benchmarks/decompose.py --long          # also 10 minutes of 720p (libx264 ultrafast): our peak RSS

Routes:
- ``ours``: this pipeline (exact source decode, the default); ``ours-fast``: ``video.fast_decode=true`` (no deblocking
  in the source decoder; the keyframes' PSNR against the exact route's is printed).
- ``official``: ``models/transform.py`` of github.com/jy0205/LaVIT as published: ``ffmpeg -threads N -y -i IN
  -filter:v fps=6 -b:v 8000k -c:v mpeg4 -f rawvideo TMP.mp4`` at the SOURCE resolution, then every frame of TMP decoded
  to a BGR image with its vectors (``mvextractor``'s ``VideoCap.read()``; here PyAV ``export_mvs``, the same FFmpeg
  decode and swscale conversion), a per-pixel float64 map per frame, and per clip a 16×16 max-pool, frame 12
  interpolated, a bicubic resize to 20×36 and a 224×224 keyframe.
- ``official-lean``: the same re-encode, then only what is needed (vectors binned per macroblock as ours are, RGB for
  I-frames only): the floor of the official route's design, with the official code's per-pixel work taken out.

Every route makes the same clips from the same input. Each runs in its own subprocess; CPU time (user + sys, children
included) gives input frames/s per core, the peak RSS is the larger of the process and its ffmpeg child. Best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The synthetic inputs are the test fixtures' (tests/fixtures/synthetic_video.py): the package does not ship them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FPS = 6
BITRATE_K = 8000
ROUTES = ("ours", "ours-fast", "official", "official-lean")


def panning_scene(width: int, height: int, num_frames: int, seed: int = 0):
    """Frames of a textured background panning 2 px/frame with a textured square crossing it (uint8 [H, W, 3])."""
    from fixtures.synthetic_video import texture

    rng = np.random.default_rng(seed)
    margin = 2 * num_frames + 8
    wide = texture(rng, height, width + min(margin, 4 * width), blur=2.0)
    size = height // 4
    square = texture(rng, size, size, blur=2.0)
    span = wide.shape[1] - width
    for i in range(num_frames):
        pan = (2 * i) % (2 * span) if span else 0
        pan = pan if pan <= span else 2 * span - pan  # bounce, so any length stays in the texture
        frame = np.ascontiguousarray(wide[:, pan : pan + width])
        x = (5 * i) % (width - size)
        y = (height - size) // 2 + int(0.25 * height * np.sin(i / 20))
        frame[y : y + size, x : x + size] = square
        yield frame


def make_inputs(cache: Path, long: bool) -> dict[str, Path]:
    from videolavit.video.io import write_video
    from fixtures.synthetic_video import moving_square

    cache.mkdir(parents=True, exist_ok=True)
    inputs = {
        "synthetic 256x160@12 10s": (
            cache / "synthetic_256x160_12fps.mp4",
            lambda: moving_square(256, 160, 120, (3, -1)),
            12,
            {},
        ),
        "h264 1280x720@30 10s": (cache / "h264_720p_30fps_10s.mp4", lambda: panning_scene(1280, 720, 300), 30, {}),
    }
    if long:
        inputs["h264 1280x720@30 10min"] = (
            cache / "h264_720p_30fps_10min.mp4",
            lambda: panning_scene(1280, 720, 30 * 600),
            30,
            {"preset": "ultrafast"},
        )
    paths = {}
    for name, (path, frames, fps, options) in inputs.items():
        if not path.exists():
            print(f"building {name} -> {path} ...", flush=True)
            tmp = path.with_suffix(".part.mp4")
            write_video(tmp, frames(), fps, options=options or None)
            tmp.rename(path)
        paths[name] = path
    return paths


# ------------------------------------------------------------------------------------------------------------------
# Workers: each runs in a fresh subprocess and prints one JSON line.


def paper_config(threads: int, fast_decode: bool = False):
    from videolavit.config import load_config

    overrides = [f"video.threads={threads}", f"video.fast_decode={str(fast_decode).lower()}"]
    return load_config(profile="paper", overrides=overrides, params_file=None)


def run_ours(path: Path, cfg) -> dict:
    from videolavit.video import iter_clips

    stream = iter_clips(path, cfg)
    keyframes, motions = [], []  # small samples; the clips themselves are dropped as they come, as in the stage
    for clip in stream:
        keyframes.append(clip.keyframe[::8, ::8].copy())  # a 28×28 sample of each, to compare the routes
        if len(motions) < 4:  # [2, 24, 20, 36] normalized, the first 4 clips (a long video stays a small sample)
            motions.append(clip.motion)
    return {"clips": len(keyframes), "frames_6fps": stream.num_frames, "keyframes": keyframes, "motions": motions}


def _reencode(path: Path, out: Path, threads: int) -> float:
    """The official first step: ffmpeg CLI to 6 fps MPEG-4 at the source size; returns ffmpeg's own peak RSS (MB)."""
    cmd = ["ffmpeg", "-loglevel", "error", "-threads", str(threads), "-y", "-i", str(path),
           "-filter:v", f"fps={FPS}", "-b:v", f"{BITRATE_K}k", "-c:v", "mpeg4", "-f", "rawvideo", str(out)]
    ffmpeg = subprocess.Popen(cmd)
    peak = 0.0
    while ffmpeg.poll() is None:  # its own high-water mark, read while it runs (gone once it exits)
        peak = max(peak, _peak_rss_mb(ffmpeg.pid))
        time.sleep(0.02)
    if ffmpeg.returncode:
        raise RuntimeError(f"ffmpeg failed with exit code {ffmpeg.returncode}")
    return peak


@contextlib.contextmanager
def _reencoded_frames(path: Path, threads: int):
    """The re-encode (:func:`_reencode`) opened for decoding with its motion vectors exported: yields the decoded
    frames (an iterator) and ffmpeg's peak RSS."""
    import av

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reencoded.mp4"
        ffmpeg_peak = _reencode(path, out, threads)
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            stream.thread_count = threads
            yield container.decode(stream), ffmpeg_peak


def _clip_starts(iframes: list[int], num_frames: int, video) -> list[int]:
    """Starts of non-overlapping clips at an I-frame followed by the next one ``gop`` frames later (as ours, policy all)."""
    starts, last = [], -video.clip_frames
    for a, b in itertools.pairwise(iframes):
        if b == a + video.gop and a + video.clip_frames <= num_frames and a >= last + video.clip_frames:
            starts.append(a)
            last = a
    return starts


def run_official(path: Path, cfg) -> dict:
    """LaVIT's ``models/transform.py`` as published: every frame of the re-encode is decoded to a BGR image with its
    vectors (what ``mvextractor``'s ``VideoCap.read()`` returns; here PyAV, the same FFmpeg decode and swscale), each
    frame's vectors go into a per-pixel float64 map (-10000 where no block ends), and each clip is 16×16 max-pooled,
    its frame 12 interpolated and resized bicubically to 20×36; the keyframe is resized to 224×224."""
    import av
    import torch
    import torch.nn.functional as F
    from PIL import Image

    video = cfg.video
    threads = int(video.threads)
    scale = np.array([video.motion_rescale / s for s in video.motion_std])  # ÷ (std / 10), the "rescale" path
    frames, maps, types = [], [], []
    with _reencoded_frames(path, threads) as (decoded, ffmpeg_peak):
        for frame in decoded:
            image = frame.to_ndarray(format="bgr24")  # [h, w, 3]
            h, w = image.shape[:2]
            dense = np.ones((h, w, 2)) * -10000  # [h, w, 2] float64
            side = frame.side_data.get("MOTION_VECTORS")
            if side is not None:
                mv = side.to_ndarray()
                x = np.clip(mv["dst_x"], 0, w - 1)
                y = np.clip(mv["dst_y"], 0, h - 1)
                step = mv["source"] / mv["motion_scale"]
                dense[y, x, 0] = step * mv["motion_x"] / w * scale[0]
                dense[y, x, 1] = step * mv["motion_y"] / h * scale[1]
            maps.append(dense)
            types.append(frame.pict_type == av.video.frame.PictureType.I)
            frames.append(image[:, :, ::-1])  # RGB view
    iframes = [i for i, is_i in enumerate(types) if is_i]
    starts = _clip_starts(iframes, len(maps), video)
    for a in starts:
        keyframe = Image.fromarray(frames[a]).convert("RGB").resize((224, 224), Image.BICUBIC)
        pixels = torch.from_numpy(np.array(keyframe)).permute(2, 0, 1).float() / 255  # [3, 224, 224]
        motion = torch.stack([torch.from_numpy(m.transpose(2, 0, 1)) for m in maps[a : a + video.clip_frames]]).float()
        motion = F.interpolate(
            _official_pool(motion), size=(video.motion_height, video.motion_width), mode="bicubic", antialias=True
        ).permute(1, 0, 2, 3)  # [2, 24, 20, 36]
        assert pixels.shape == (3, 224, 224) and motion.shape == (2, 24, 20, 36)
    return {"clips": len(starts), "frames_6fps": len(maps), "ffmpeg_peak_rss_mb": ffmpeg_peak}


def _official_pool(motion):
    """The official clip pooling: per-pixel maps [24, 2, H, W] (-10000: no vector) → one value per 16×16 block (its
    maximum; 0 where no vector ends) [24, 2, H/16, W/16], with the I-frame at 12 interpolated from its neighbours."""
    import torch.nn.functional as F

    h, w = motion.shape[-2:]
    motion = F.max_pool2d(F.pad(motion, (0, -w % 16, 0, -h % 16), value=-10000), kernel_size=16, stride=16)
    motion[motion < -1000] = 0.0
    motion[12] = 0.5 * (motion[11] + motion[13])  # the I-frame at 12 has no vectors
    return motion


def run_official_lean(path: Path, cfg) -> dict:
    """The same ffmpeg re-encode, then only what is needed: vectors binned per macroblock as this pipeline does and
    RGB for I-frames only (no per-frame images, no per-pixel maps). The floor of the official route's design."""
    import av
    from PIL import Image

    from videolavit.video.motion import macroblock_motion, resize_grid

    video = cfg.video
    threads = int(video.threads)
    fields, iframes, rgb = [], [], {}
    with _reencoded_frames(path, threads) as (decoded, ffmpeg_peak):
        for index, frame in enumerate(decoded):
            rows, cols = -(-frame.height // 16), -(-frame.width // 16)
            is_i = frame.pict_type == av.video.frame.PictureType.I
            side = None if is_i else frame.side_data.get("MOTION_VECTORS")
            field = np.zeros((2, rows, cols), np.float32)  # [2, rows, cols]
            if side is not None:
                field = macroblock_motion(side.to_ndarray(), rows, cols)
            field[0] /= frame.width  # the official code normalizes by the (source) width and height
            field[1] /= frame.height
            fields.append(field)
            if is_i:
                iframes.append(index)
                rgb[index] = Image.fromarray(frame.to_ndarray(format="rgb24")).resize((224, 224), Image.BICUBIC)
    scale = np.array([video.motion_rescale / s for s in video.motion_std], dtype=np.float32).reshape(2, 1, 1, 1)
    starts = _clip_starts(iframes, len(fields), video)
    for a in starts:
        motion = np.stack(fields[a : a + video.clip_frames], axis=1)  # [2, 24, rows, cols]
        motion[:, 12] = 0.5 * (motion[:, 11] + motion[:, 13])
        motion = resize_grid(motion, video.motion_height, video.motion_width) * scale
        assert rgb[a].size == (224, 224) and motion.shape == (2, 24, 20, 36)
    return {"clips": len(starts), "frames_6fps": len(fields), "ffmpeg_peak_rss_mb": ffmpeg_peak}


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a process: unlike ru_maxrss it restarts at exec, so a parent's size does not leak into it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid == os.getpid():  # no /proc (macOS): ru_maxrss, which also counts the parent at fork time
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 / (1024 if sys.platform == "darwin" else 1)
    return 0.0


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def worker(route: str, path: Path, threads: int) -> None:
    import av  # noqa: F401  imports and the config are paid before the clock starts, alike for every route
    import PIL.Image  # noqa: F401

    import videolavit.video  # noqa: F401

    if route == "official":
        import torch  # its pooling and resizing (transform.py uses torch and torchvision)

        torch.set_num_threads(1)

    cfg = paper_config(threads, fast_decode=route == "ours-fast")  # once per process in the stage too
    cpu, start = _cpu_seconds(), time.perf_counter()
    run = {"official": run_official, "official-lean": run_official_lean}.get(route, run_ours)
    result = run(path, cfg)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if "keyframes" in result:  # made JSON-ready off the clock: the official route has no such step
        from videolavit.video.motion import denormalize_motion

        result["keyframes"] = [k.tolist() for k in result["keyframes"]]
        result["motions"] = [denormalize_motion(m, cfg).tolist() for m in result["motions"]]  # px/frame at encode size
    # The larger of this process and ffmpeg: the two run one after the other, never together.
    peak = max(_peak_rss_mb(os.getpid()), result.pop("ffmpeg_peak_rss_mb", 0.0))
    result.update(wall_s=wall, cpu_s=cpu, peak_rss_mb=peak)
    print(json.dumps(result))


def measure(route: str, path: Path, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", route, "--input", str(path), "--threads", str(threads)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{route} route failed on {path}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compare(best: dict, key: str) -> str:
    """ours-fast's samples against ours' (``keyframes``: PSNR; ``motions``: EPE), or why they cannot be compared."""
    a, b = (np.asarray(best[route][key], np.float64) for route in ("ours", "ours-fast"))
    if a.shape != b.shape:
        return f"different clips ({a.shape[0]} vs {b.shape[0]})"
    if key == "motions":  # [clips, 2, T, h, w] px/frame
        epe = float(np.sqrt(((a - b) ** 2).sum(axis=1)).mean())
        size = float(np.sqrt((a**2).sum(axis=1)).mean())
        return f"mean EPE {epe:.3f} px/frame at the encode size (mean motion {size:.2f} px/frame)"
    mse = float(((a - b) ** 2).mean())
    return "identical" if mse == 0 else f"PSNR {10 * np.log10(255**2 / mse):.1f} dB (every 8th pixel)"


def source_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "videolavit-bench"
    parser.add_argument("--cache-dir", type=Path, default=cache, help=f"inputs are built here once (default {cache})")
    parser.add_argument("--threads", type=int, default=1, help="decoder threads for every route (ffmpeg -threads)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per route and input; the best CPU time counts")
    parser.add_argument("--long", action="store_true", help="also 10 minutes of 720p: peak RSS of our pipeline")
    parser.add_argument("--worker", choices=ROUTES, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.input, args.threads)
        return

    has_ffmpeg = shutil.which("ffmpeg") is not None
    if not has_ffmpeg:
        print("ffmpeg not found on PATH: the official route is skipped (install it, e.g. `apt-get install -y ffmpeg`).")
    inputs = make_inputs(args.cache_dir, args.long)
    print(f"\nthreads={args.threads}, best of {args.repeat} (CPU time, children included), {os.cpu_count()} cores\n")
    header = (f"{'input':<26} {'route':<13} {'in frames':>9} {'clips':>5} {'cpu s':>7} {'wall s':>7} "
              f"{'frames/s/core':>13} {'peak RSS MB':>11}")
    print(header)
    print("-" * len(header))
    for name, path in inputs.items():
        frames = source_frames(path)
        long_input = "10min" in name
        routes = ["ours"] + (["ours-fast", "official", "official-lean"] if has_ffmpeg and not long_input else [])
        best: dict[str, dict] = {}
        for _ in range(1 if long_input else args.repeat):
            for route in routes:  # alternate the routes so that load from other processes hits both alike
                result = measure(route, path, args.threads)
                if route not in best or result["cpu_s"] < best[route]["cpu_s"]:
                    peak = max(result["peak_rss_mb"], best.get(route, {}).get("peak_rss_mb", 0))
                    best[route] = {**result, "peak_rss_mb": peak}
        for route in routes:
            r = best[route]
            print(f"{name:<26} {route:<13} {frames:>9} {r['clips']:>5} {r['cpu_s']:>7.2f} {r['wall_s']:>7.2f} "
                  f"{frames / r['cpu_s']:>13.1f} {r['peak_rss_mb']:>11.0f}")
        if "official" in best:
            for baseline in ("official", "official-lean"):
                for route in ("ours", "ours-fast"):
                    ratio = best[baseline]["cpu_s"] / best[route]["cpu_s"]
                    print(f"{'':<26} ratio {route}/{baseline}: {ratio:.2f}x input frames/s per core")
            print(f"{'':<26} ours-fast keyframes vs ours: {_compare(best, 'keyframes')}")
            print(f"{'':<26} ours-fast motion vs ours: {_compare(best, 'motions')}")
        if long_input:
            verdict = "under" if best["ours"]["peak_rss_mb"] < 1024 else "OVER"
            print(f"{'':<26} peak RSS {best['ours']['peak_rss_mb']:.0f} MB: {verdict} the 1 GB target")
    print("\nCPU time excludes interpreter start-up and imports (paid alike by every route); RSS includes them.")


if __name__ == "__main__":
    main()
