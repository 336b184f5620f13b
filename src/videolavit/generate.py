"""Generation with the trained models: text → video, image → video, long videos, and questions about media.

Text → video (after the official ``generate_video``): the prompt is ``[BOS] text`` (the [text, video] order of
pretraining); the LM samples ``[IMG] … [/IMG]`` (visual ids only, between ``lm.generate.image_tokens`` codes), then
``[MOV] … [/MOV]`` with exactly the motion tokenizer's N codes (greedy with motion CFG by default), each span
constrained to its id range (``models/constraints.py``). The visual tokenizer decodes the keyframe codes to features,
the keyframe detokenizer renders the keyframe from them, the motion tokenizer decodes the motion codes to a motion
field, and the video detokenizer renders the clip from both. A long video repeats this clip after clip with the whole
token history as the prompt, and each later keyframe starts from the previous clip's last frame (the inter-clip noise
constraint of ``models/long_video.py``). Image → video tokenizes the image as the first ``[IMG]`` span and uses the
image itself as the first keyframe: only motion is generated. Questions are answered by the instruction-tuned LM with
every non-text id suppressed (``models/lm_inference.answer_questions``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from videolavit.errors import ConfigError, MissingArtifactError

TASKS = ("text_to_video", "image_to_video", "qa")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


@dataclass
class GeneratedVideo:
    """A generated (possibly multi-clip) video and the tokens it came from."""

    frames: np.ndarray  # uint8 [T, H, W, 3]; N clips of T_c frames give N·T_c − (N − 1) frames (seams not repeated)
    keyframes: list[np.ndarray]  # uint8 [H_k, W_k, 3] per clip, as the keyframe detokenizer rendered them
    ids: list[int]  # the whole sequence: prompt, then [IMG] … [/IMG] [MOV] … [/MOV] per clip
    visual_codes: list[list[int]]  # per clip, offsets removed
    motion_codes: list[list[int]]  # per clip, exactly N each
    motion: np.ndarray  # float32 [clips, 2, T_c, h, w]: the decoded motion (normalized tokenizer units)
    fps: float

    @property
    def clips(self) -> int:
        return len(self.motion_codes)


@dataclass
class Models:
    """What a pipeline holds; a part a task does not need may be None."""

    lm: Any = None
    text_tokenizer: Any = None
    vocab: Any = None
    lm_info: dict = field(default_factory=dict)
    visual_tokenizer: Any = None
    motion_tokenizer: Any = None
    keyframe_detokenizer: Any = None
    video_detokenizer: Any = None


# ---- loading --------------------------------------------------------------------------------------------------------


def device_of(cfg) -> str:
    import torch

    wants_gpu = str(cfg.compute.accelerator) in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def _required(path, what: str, command: str, key: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MissingArtifactError(f"{what} not found at '{p}'. Run `videolavit {command}` first (or set {key}).")
    return p


def lm_dir(cfg, instruct: bool) -> Path:
    """``generate.lm_path``, else ``<models>/lm_instruct`` (questions) or ``<models>/lm_pretrain`` (generation)."""
    stage = "instruct" if instruct else "pretrain"
    path = cfg.generate.lm_path or Path(cfg.paths.models) / f"lm_{stage}"
    return _required(path, f"the {stage} LM", stage, "generate.lm_path")


def load_models(cfg, lm_path: Optional[str | Path] = None, instruct: bool = False, tokenizers: bool = True,
                detokenizers: bool = True, device: Optional[str] = None) -> Models:  # fmt: skip
    """The LM (``lm_path``, else per :func:`lm_dir`) plus the tokenizers and detokenizers asked for, checked to agree."""
    from videolavit.models.lm_inference import load_lm_checkpoint, read_lm_vocab

    device = device or device_of(cfg)
    path = Path(lm_path) if lm_path is not None else lm_dir(cfg, instruct)
    _required(path, "the LM", "instruct" if instruct else "pretrain", "generate.lm_path")
    model, tokenizer, vocab = load_lm_checkpoint(path, dtype=cfg.lm.model.dtype, device=device)
    models = Models(model, tokenizer, vocab, read_lm_vocab(path)[1])
    if tokenizers:
        _load_tokenizers(cfg, models, device)
    if detokenizers:
        _load_detokenizers(cfg, models, device)
    return models


def _load_tokenizers(cfg, models: Models, device: str) -> None:
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.models.visual_tokenizer import VisualTokenizer

    root = Path(cfg.paths.models)
    visual = _required(cfg.tokenize.visual_tokenizer_path or root / "visual_tokenizer", "the visual tokenizer",
                       "visual_tokenizer", "tokenize.visual_tokenizer_path")  # fmt: skip
    motion = _required(cfg.tokenize.motion_tokenizer_path or root / "motion_tokenizer", "the motion tokenizer",
                       "motion_tokenizer", "tokenize.motion_tokenizer_path")  # fmt: skip
    models.visual_tokenizer = VisualTokenizer.from_pretrained(visual).to(device).eval()
    models.motion_tokenizer = MotionTokenizer.from_pretrained(motion, map_location=device).eval()
    vocab, vt, mt = models.vocab, models.visual_tokenizer, models.motion_tokenizer
    if (vocab.visual_codes, vocab.motion_codes) != (vt.codebook_size, mt.codebook_size):
        raise ConfigError(
            f"the LM's vocabulary has {vocab.visual_codes} visual and {vocab.motion_codes} motion codes, but the "
            f"tokenizers have {vt.codebook_size} and {mt.codebook_size}: re-run tokenize and pretrain with these tokenizers"
        )
    expected = models.lm_info.get("motion_tokens_per_clip")
    if expected is not None and int(expected) != mt.tokens_per_clip:
        raise ConfigError(
            f"the LM was trained on {expected} motion tokens per clip, the motion tokenizer makes {mt.tokens_per_clip}"
        )


def _load_detokenizers(cfg, models: Models, device: str) -> None:
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.models.video_detokenizer import VideoDetokenizer

    root = _required(cfg.generate.detokenizer_path or Path(cfg.paths.models) / "detokenizer", "the detokenizers",
                     "detokenizer", "generate.detokenizer_path")  # fmt: skip
    for part in ("keyframe", "video"):
        _required(root / part, f"the {part} detokenizer", "detokenizer", "generate.detokenizer_path")
    models.keyframe_detokenizer = KeyframeDetokenizer.from_pretrained(root / "keyframe").to(device).eval()
    models.video_detokenizer = VideoDetokenizer.from_pretrained(root / "video").to(device).eval()
    vt, kf = models.visual_tokenizer, models.keyframe_detokenizer
    if vt is not None and kf.config["cond_dim"] != vt.target_dim:
        raise ConfigError(
            f"the keyframe detokenizer takes {kf.config['cond_dim']}-d features but the visual tokenizer decodes "
            f"{vt.target_dim}-d ones: re-run `videolavit detokenizer` with this visual tokenizer"
        )
    mt, vd = models.motion_tokenizer, models.video_detokenizer
    if mt is not None and mt.frames > vd.config["frames"]:
        raise ConfigError(
            f"the motion tokenizer's clips have {mt.frames} frames, the video detokenizer renders {vd.config['frames']}"
        )


# ---- the pipeline ---------------------------------------------------------------------------------------------------


class VideoLaVITPipeline:
    """The trained models behind text → video, image → video, long video and media QA (settings: ``cfg.generate``,
    ``cfg.lm.generate``)."""

    def __init__(self, models: Models, cfg, seed: Optional[int] = None):
        import torch

        self.m, self.cfg = models, cfg
        self.device = next(models.lm.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(int(cfg.seed if seed is None else seed))
        self.fps = float(cfg.generate.fps or cfg.video.fps)

    @classmethod
    def from_config(cls, cfg, instruct: bool = False, **kwargs) -> "VideoLaVITPipeline":
        seed = cfg.generate.seed
        return cls(load_models(cfg, instruct=instruct, **kwargs), cfg, seed=seed)

    # -- tokens -------------------------------------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        """Text ids without BOS/EOS, checked to lie below the vocabulary's text range."""
        ids = list(self.m.text_tokenizer(str(text), add_special_tokens=False)["input_ids"])
        if any(t >= self.m.vocab.text_size for t in ids):
            raise ConfigError(f"the text tokenizer gave ids ≥ text_size {self.m.vocab.text_size}")
        return ids

    def text_prompt(self, text: str) -> list[int]:
        """``[BOS] text``: the [text, video] order the LM was pretrained on."""
        bos = self.m.text_tokenizer.bos_token_id
        bos = self.m.text_tokenizer.eos_token_id if bos is None else bos
        return [int(bos), *self.encode_text(text)]

    def _need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self.m, n) is None]
        if missing:
            raise MissingArtifactError(f"this pipeline was loaded without {', '.join(missing)}")

    def tokenize_image(self, image: np.ndarray) -> list[int]:
        """uint8 RGB [H, W, 3] (any size) → visual codes (offsets not added)."""
        self._need("visual_tokenizer")
        vt = self.m.visual_tokenizer
        return [int(c) for c in vt.encode(vt.preprocess(_rgb(image)))[0].tolist()]

    def tokenize_motion(self, motion: np.ndarray) -> list[list[int]]:
        """Normalized motion float [N, 2, T, h, w] → N lists of motion codes."""
        import torch

        self._need("motion_tokenizer")
        codes = self.m.motion_tokenizer.encode(torch.as_tensor(np.asarray(motion, dtype=np.float32), device=self.device))
        return [[int(c) for c in row] for row in codes.tolist()]

    def media_ids(self, path: str | Path) -> list[int]:
        """An image file → ``[IMG] … [/IMG]``; a video file → its clips' spans (as many whole clips as fit)."""
        path = Path(path)
        if not path.is_file():
            raise MissingArtifactError(f"media file '{path}' does not exist")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return self.m.vocab.image_span(self.tokenize_image(read_rgb(path)))
        from videolavit.video.clips import decompose_video

        clips = decompose_video(path, self.cfg).clips
        if not clips:
            raise ConfigError(f"'{path}' gave no clip of {self.cfg.video.clip_frames} frames to ask about")
        motion = self.tokenize_motion(np.stack([c.motion for c in clips]))
        spans = [self.m.vocab.clip_span(self.tokenize_image(c.keyframe), m) for c, m in zip(clips, motion)]
        budget = int(self.cfg.lm.seq_len) - 128  # room for the template, the question and the answer
        kept = [s for i, s in enumerate(spans) if sum(len(x) for x in spans[: i + 1]) <= budget] or spans[:1]
        return [t for span in kept for t in span]

    def sample_clip(self, history: list[int], keyframe_codes: Optional[Sequence[int]] = None) -> tuple[list[int], list[int]]:
        """One clip's ``[IMG] … [/IMG] [MOV] … [/MOV]`` after ``history`` (only motion when ``keyframe_codes`` is given)."""
        from videolavit.models.constraints import generate_span
        from videolavit.vocab import IMAGE, MOTION

        g, vocab = self.cfg.lm.generate, self.m.vocab
        self._need("motion_tokenizer")
        if keyframe_codes is None:
            low, high = (int(x) for x in g.image_tokens)
            if self.m.visual_tokenizer is not None:  # the visual decoder reads at most one code per patch
                high = min(high, self.m.visual_tokenizer.num_patches)
            out = generate_span(self.m.lm, history, IMAGE, vocab, (min(low, high), high), g.temperature, g.top_k,
                                g.top_p, g.guidance_scale, self.generator)  # fmt: skip
            image = [vocab.img_start, *out]
        else:
            image = vocab.image_span(keyframe_codes)
        motion_n = self.m.motion_tokenizer.tokens_per_clip
        out = generate_span(self.m.lm, history + image, MOTION, vocab, motion_n, g.motion_temperature, g.top_k,
                            g.top_p, g.motion_guidance_scale, self.generator)  # fmt: skip
        return image, [vocab.mov_start, *out]

    # -- pixels -------------------------------------------------------------------------------------------------------

    def keyframe_condition(self, visual_codes: Sequence[int]):
        """Visual codes → the keyframe detokenizer's condition [1, N_patches, D] (the visual tokenizer's decoder)."""
        import torch

        self._need("visual_tokenizer")
        with torch.no_grad():
            return self.m.visual_tokenizer.decode_features([torch.as_tensor(list(visual_codes), dtype=torch.long)])

    def decode_motion(self, motion_codes: Sequence[int]):
        """Motion codes → normalized motion [1, 2, T, h, w]."""
        import torch

        self._need("motion_tokenizer")
        codes = torch.as_tensor([list(motion_codes)], dtype=torch.long, device=self.device)
        return self.m.motion_tokenizer.decode(codes)

    def render(self, visual_codes: list[list[int]], motion_codes: list[list[int]], first_keyframe=None, motion=None):
        """Per-clip codes → (frames [1, T, 3, H, W] in [-1, 1], keyframes, motion [clips, 2, T, h, w]).

        ``motion`` (float [clips, 2, T, h, w]) replaces the decoded motion, e.g. zeros for the no-motion ablation.
        """
        import torch

        from videolavit.models.long_video import generate_long_video

        self._need("keyframe_detokenizer", "video_detokenizer")
        g, vd = self.cfg.generate, self.m.video_detokenizer
        conds = [self.keyframe_condition(v) for v in visual_codes]
        motions = [self.decode_motion(m) for m in motion_codes] if motion is None else [m[None] for m in motion]
        video = functools.partial(vd.sample, steps=int(g.video_steps), max_guidance=float(g.video_guidance),
                                  generator=self.generator)  # fmt: skip
        with torch.no_grad():
            out = generate_long_video(
                self.m.keyframe_detokenizer, video, conds, motions,
                video_size=(vd.config["height"], vd.config["width"]), noise_constraint=str(g.noise_constraint),
                inverse_rate=float(g.inverse_rate), keyframe_steps=int(g.keyframe_steps),
                keyframe_guidance=float(g.keyframe_guidance), generator=self.generator, first_keyframe=first_keyframe,
            )  # fmt: skip
        return out.frames, out.keyframes, torch.cat(motions)

    def finish(self, ids, visual, motion, frames, keyframes, motion_field) -> GeneratedVideo:
        """:meth:`render`'s tensors and the tokens as a :class:`GeneratedVideo` (uint8 frames, numpy motion)."""
        return GeneratedVideo(
            frames=to_uint8(frames[0].permute(0, 2, 3, 1)),
            keyframes=[to_uint8(k[0].permute(1, 2, 0)) for k in keyframes],
            ids=ids, visual_codes=visual, motion_codes=motion,
            motion=motion_field.float().cpu().numpy(), fps=self.fps,
        )  # fmt: skip

    # -- tasks --------------------------------------------------------------------------------------------------------

    def sample_tokens(self, prompt: list[int], clips: int = 1, first_keyframe_codes=None):
        """``clips`` clips of tokens after ``prompt``; returns (ids, visual codes per clip, motion codes per clip)."""
        if clips < 1:
            raise ConfigError(f"generate.clips must be ≥ 1, got {clips}")
        vocab, ids = self.m.vocab, list(prompt)
        visual, motion = [], []
        for i in range(clips):
            given = first_keyframe_codes if i == 0 else None
            try:
                image, mov = self.sample_clip(ids, given)
            except ValueError as exc:  # the history outgrew the LM's context
                raise ConfigError(f"clip {i + 1} of {clips}: {exc}; ask for fewer clips") from None
            ids += image + mov
            visual.append([t - vocab.visual_offset for t in image[1:-1]])
            motion.append([t - vocab.motion_offset for t in mov[1:-1]])
        return ids, visual, motion

    def text_to_video(self, prompt: str, clips: int = 1) -> GeneratedVideo:
        """A video of ``clips`` clips from a text prompt."""
        ids, visual, motion = self.sample_tokens(self.text_prompt(prompt), clips)
        frames, keyframes, motion_field = self.render(visual, motion)
        return self.finish(ids, visual, motion, frames, keyframes, motion_field)

    def image_to_video(self, image: np.ndarray, prompt: str = "", clips: int = 1) -> GeneratedVideo:
        """A video that starts at ``image`` (uint8 [H, W, 3]): its tokens open the sequence, only motion is sampled for
        the first clip, and the image itself is the first keyframe."""
        codes = self.tokenize_image(image)
        ids, visual, motion = self.sample_tokens(self.text_prompt(prompt), clips, first_keyframe_codes=codes)
        vd = self.m.video_detokenizer
        first = to_unit(_rgb(image), (vd.config["height"], vd.config["width"]), self.device)
        frames, keyframes, motion_field = self.render(visual, motion, first_keyframe=first)
        return self.finish(ids, visual, motion, frames, keyframes, motion_field)

    def answer(self, questions: Sequence[str], media: Sequence[Optional[Sequence[int]]]) -> list[str]:
        """Greedy text answers about media id spans (None: no medium), every non-text id suppressed."""
        from videolavit.models.lm_inference import answer_questions

        template = self.m.lm_info.get("template") or str(self.cfg.lm.template)
        return answer_questions(self.m.lm, self.m.text_tokenizer, self.m.vocab, list(media), list(questions),
                                max_new_tokens=int(self.cfg.lm.generate.max_answer_tokens), template=template,
                                batch_size=1)  # fmt: skip


# ---- pixels in and out ----------------------------------------------------------------------------------------------


def _rgb(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image must be uint8 RGB [H, W, 3], got {array.dtype} {array.shape}")
    return array if array.flags.writeable else array.copy()  # torch warns on read-only arrays


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file → uint8 RGB [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image '{path}': {exc}") from None


def to_unit(image: np.ndarray, size: tuple[int, int], device) -> Any:
    """uint8 [H, W, 3] → float [1, 3, *size] in [-1, 1] (bicubic with antialias, as the tokenizers resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(127.5).sub(1)  # [1, 3, H, W]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(-1, 1).to(device)


def to_uint8(x) -> np.ndarray:
    """A float tensor in [-1, 1] → uint8 numpy array of the same layout."""
    import torch

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """uint8 [T, H, W, 3] → an animated GIF that loops."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def save_video(video: GeneratedVideo, out: str | Path, gif: bool = True) -> list[Path]:
    """``out`` (H.264 in .mp4/.mov/.mkv; no suffix: .mp4) and, with ``gif``, the same name .gif beside it; a ``.gif``
    ``out`` writes the GIF only."""
    from videolavit.video.io import write_video

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".gif":
        return [write_gif(out, video.frames, video.fps)]
    if suffix not in ("", *VIDEO_SUFFIXES):
        raise ConfigError(f"cannot write a video to '{out}': use a {', '.join(VIDEO_SUFFIXES)} or .gif name")
    mp4 = out if suffix else out.with_suffix(".mp4")
    frames = video.frames
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sides
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    written = [write_video(mp4, frames, video.fps)]
    if gif:
        written.append(write_gif(mp4.with_suffix(".gif"), video.frames, video.fps))
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "video"


# ---- the CLI --------------------------------------------------------------------------------------------------------


def generate_cli(cfg, prompt: str, out: Optional[str] = None) -> str:
    """``videolavit generate PROMPT [--out clip.mp4] [generate.task=...]``: writes the video (MP4 + GIF) or answers.

    ``generate.task``: ``text_to_video`` (default; ``generate.clips`` > 1 makes a long video), ``image_to_video``
    (``generate.image`` is the first frame, PROMPT may be empty) or ``qa`` (PROMPT is a question about
    ``generate.media``, an image or a video file). Returns what to print.
    """
    import torch

    task = str(cfg.generate.task)
    if task not in TASKS:
        raise ConfigError(f"generate.task must be one of {', '.join(TASKS)}, got {task!r}")
    if cfg.compute.threads:
        torch.set_num_threads(int(cfg.compute.threads))
    if task == "qa":
        if not cfg.generate.media:
            raise ConfigError("generate.task=qa needs generate.media=<image or video file> to ask about")
        pipe = VideoLaVITPipeline.from_config(cfg, instruct=True, detokenizers=False)
        return pipe.answer([prompt], [pipe.media_ids(cfg.generate.media)])[0]
    pipe = VideoLaVITPipeline.from_config(cfg)
    clips = int(cfg.generate.clips)
    if task == "image_to_video":
        if not cfg.generate.image:
            raise ConfigError("generate.task=image_to_video needs generate.image=<image file> (the first frame)")
        video = pipe.image_to_video(read_rgb(cfg.generate.image), prompt, clips)
    else:
        if not prompt.strip():
            raise ConfigError("text_to_video needs a non-empty prompt")
        video = pipe.text_to_video(prompt, clips)
    out = Path(out) if out else Path(cfg.paths.runs) / "generate" / f"{_slug(prompt)}.mp4"
    written = save_video(video, out, gif=bool(cfg.generate.gif))
    visual = sum(len(v) for v in video.visual_codes)
    motion = sum(len(m) for m in video.motion_codes)
    return (f"{', '.join(str(p) for p in written)}: {video.clips} clip(s), {len(video.frames)} frames at "
            f"{video.fps:g} fps from {visual} visual + {motion} motion tokens")  # fmt: skip
