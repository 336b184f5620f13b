"""Generation with the trained models: text → video, image → video, long videos, and questions about media.

Text → video (after the official ``generate_video``): the prompt is ``[BOS] text`` (the [text, video] order of
pretraining); the LM samples ``[IMG] … [/IMG]`` (visual ids only, between ``lm.generate.image_tokens`` codes), then
``[MOV] … [/MOV]`` with exactly the motion tokenizer's N codes (greedy with motion CFG by default), each span
constrained to its id range (``inference/constraints.py``). The visual tokenizer decodes the keyframe codes to features,
the keyframe detokenizer renders the keyframe from them, the motion tokenizer decodes the motion codes to a motion
field, and the video detokenizer renders the clip from both. A long video repeats this clip after clip with the whole
token history as the prompt, and each later keyframe starts from the previous clip's last frame (the inter-clip noise
constraint of ``inference/long_video.py``). Image → video tokenizes the image as the first ``[IMG]`` span and uses the
image itself as the first keyframe: only motion is generated. Questions are answered by the instruction-tuned LM with
every non-text id suppressed (``inference/qa.answer_questions``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from videolavit.data.pixels import to_uint8, to_unit
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.inference.loading import Models, load_models
from videolavit.inference.media import IMAGE_SUFFIXES, read_rgb, rgb_image

TASKS = ("text_to_video", "image_to_video", "qa")


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
        return [int(c) for c in vt.encode(vt.preprocess(rgb_image(image)))[0].tolist()]

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
        from videolavit.inference.constraints import generate_span
        from videolavit.vocab import IMAGE, MOTION

        g, vocab = self.cfg.lm.generate, self.m.vocab
        self._need("motion_tokenizer")
        if keyframe_codes is None:
            low, high = (int(x) for x in g.image_tokens)
            if self.m.visual_tokenizer is not None:  # the visual decoder reads at most one code per patch
                high = min(high, self.m.visual_tokenizer.num_patches)
            out = generate_span(self.m.lm, history, IMAGE, vocab, (min(low, high), high), g.temperature, g.top_k,
                                g.top_p, g.guidance_scale, self.generator)
            image = [vocab.img_start, *out]
        else:
            image = vocab.image_span(keyframe_codes)
        motion_n = self.m.motion_tokenizer.tokens_per_clip
        out = generate_span(self.m.lm, history + image, MOTION, vocab, motion_n, g.motion_temperature, g.top_k,
                            g.top_p, g.motion_guidance_scale, self.generator)
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

        from videolavit.inference.long_video import generate_long_video

        self._need("keyframe_detokenizer", "video_detokenizer")
        g, vd = self.cfg.generate, self.m.video_detokenizer
        conds = [self.keyframe_condition(v) for v in visual_codes]
        motions = [self.decode_motion(m) for m in motion_codes] if motion is None else [m[None] for m in motion]
        video = functools.partial(vd.sample, steps=int(g.video_steps), max_guidance=float(g.video_guidance),
                                  generator=self.generator)
        with torch.no_grad():
            out = generate_long_video(
                self.m.keyframe_detokenizer, video, conds, motions,
                video_size=(vd.config["height"], vd.config["width"]), noise_constraint=str(g.noise_constraint),
                inverse_rate=float(g.inverse_rate), keyframe_steps=int(g.keyframe_steps),
                keyframe_guidance=float(g.keyframe_guidance), generator=self.generator, first_keyframe=first_keyframe,
            )
        return out.frames, out.keyframes, torch.cat(motions)

    def finish(self, ids, visual, motion, frames, keyframes, motion_field) -> GeneratedVideo:
        """:meth:`render`'s tensors and the tokens as a :class:`GeneratedVideo` (uint8 frames, numpy motion)."""
        return GeneratedVideo(
            frames=to_uint8(frames[0].permute(0, 2, 3, 1)),
            keyframes=[to_uint8(k[0].permute(1, 2, 0)) for k in keyframes],
            ids=ids, visual_codes=visual, motion_codes=motion,
            motion=motion_field.float().cpu().numpy(), fps=self.fps,
        )

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
        first = to_unit(rgb_image(image), (vd.config["height"], vd.config["width"]), self.device)
        frames, keyframes, motion_field = self.render(visual, motion, first_keyframe=first)
        return self.finish(ids, visual, motion, frames, keyframes, motion_field)

    def answer(self, questions: Sequence[str], media: Sequence[Optional[Sequence[int]]]) -> list[str]:
        """Greedy text answers about media id spans (None: no medium), every non-text id suppressed."""
        from videolavit.inference.qa import answer_questions

        template = self.m.lm_info.get("template") or str(self.cfg.lm.template)
        return answer_questions(self.m.lm, self.m.text_tokenizer, self.m.vocab, list(media), list(questions),
                                max_new_tokens=int(self.cfg.lm.generate.max_answer_tokens), template=template,
                                batch_size=1)
