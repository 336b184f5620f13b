"""The unified token-id layout: the one source of truth for every id range.

Layout (after the official code): text ids, then ``[IMG]`` ``[/IMG]``, then the visual codes, then ``[MOV]`` ``[/MOV]``,
then the motion codes. With 32000 text ids, 16384 visual and 1024 motion codes this gives the official ids:
``[IMG]``=32000, ``[/IMG]``=32001, visual 32002–48385, ``[MOV]``=48386, ``[/MOV]``=48387, motion 48388–49411 (49412 ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

TEXT, IMAGE, MOTION = "text", "image", "motion"


@dataclass(frozen=True)
class Segment:
    """A run of one modality in a parsed sequence: text ids, or visual / motion *codes* (offsets removed)."""

    kind: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Vocab:
    text_size: int
    visual_codes: int
    motion_codes: int

    def __post_init__(self) -> None:
        for name in ("text_size", "visual_codes", "motion_codes"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"Vocab.{name} must be positive, got {getattr(self, name)}")

    # ---- ids of the special tokens and the ranges ------------------------------------------------------------------
    @property
    def img_start(self) -> int:
        return self.text_size

    @property
    def img_end(self) -> int:
        return self.text_size + 1

    @property
    def visual_offset(self) -> int:
        return self.text_size + 2

    @property
    def mov_start(self) -> int:
        return self.visual_offset + self.visual_codes

    @property
    def mov_end(self) -> int:
        return self.mov_start + 1

    @property
    def motion_offset(self) -> int:
        return self.mov_start + 2

    @property
    def size(self) -> int:
        return self.motion_offset + self.motion_codes

    def text_range(self) -> range:
        return range(0, self.text_size)

    def visual_range(self) -> range:
        return range(self.visual_offset, self.visual_offset + self.visual_codes)

    def motion_range(self) -> range:
        return range(self.motion_offset, self.motion_offset + self.motion_codes)

    @property
    def special_ids(self) -> dict[str, int]:
        return {"[IMG]": self.img_start, "[/IMG]": self.img_end, "[MOV]": self.mov_start, "[/MOV]": self.mov_end}

    def modality(self, token_id: int) -> str:
        """``text``, ``image`` (visual codes and [IMG]/[/IMG]) or ``motion`` (motion codes and [MOV]/[/MOV])."""
        if token_id < 0:  # e.g. IGNORE_INDEX (-100) or the <image> placeholder (-200): not a vocabulary id
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self.size} ids")
        if token_id < self.text_size:
            return TEXT
        if token_id < self.mov_start:
            return IMAGE
        if token_id < self.size:
            return MOTION
        raise ValueError(f"token id {token_id} is outside the vocabulary of {self.size} ids")

    # ---- building -------------------------------------------------------------------------------------------------
    def visual_ids(self, codes: Iterable[int]) -> list[int]:
        out = []
        for c in codes:
            c = int(c)
            if not 0 <= c < self.visual_codes:
                raise ValueError(f"visual code {c} is outside [0, {self.visual_codes})")
            out.append(c + self.visual_offset)
        return out

    def motion_ids(self, codes: Iterable[int]) -> list[int]:
        out = []
        for c in codes:
            c = int(c)
            if not 0 <= c < self.motion_codes:
                raise ValueError(f"motion code {c} is outside [0, {self.motion_codes})")
            out.append(c + self.motion_offset)
        return out

    def image_span(self, visual_codes: Iterable[int]) -> list[int]:
        """``[IMG] visual… [/IMG]``."""
        return [self.img_start, *self.visual_ids(visual_codes), self.img_end]

    def motion_span(self, motion_codes: Iterable[int]) -> list[int]:
        """``[MOV] motion… [/MOV]``."""
        return [self.mov_start, *self.motion_ids(motion_codes), self.mov_end]

    def clip_span(self, visual_codes: Iterable[int], motion_codes: Iterable[int]) -> list[int]:
        """One clip: ``[IMG] keyframe [/IMG] [MOV] motion [/MOV]``."""
        return self.image_span(visual_codes) + self.motion_span(motion_codes)

    def video_span(self, clips: Iterable[tuple[Iterable[int], Iterable[int]]]) -> list[int]:
        """Clips in time order, each ``(visual_codes, motion_codes)``."""
        out: list[int] = []
        for visual, motion in clips:
            out.extend(self.clip_span(visual, motion))
        return out

    # ---- parsing --------------------------------------------------------------------------------------------------
    def parse(self, ids: Sequence[int]) -> list[Segment]:
        """Split a sequence into text runs and visual / motion spans (codes with offsets removed).

        An unterminated span at the end (a generation cut short) is returned as far as it goes.
        """
        segments: list[Segment] = []
        text: list[int] = []
        i, n = 0, len(ids)
        while i < n:
            t = int(ids[i])
            if t in (self.img_start, self.mov_start):
                if text:
                    segments.append(Segment(TEXT, tuple(text)))
                    text = []
                kind, end, rng = (
                    (IMAGE, self.img_end, self.visual_range())
                    if t == self.img_start
                    else (MOTION, self.mov_end, self.motion_range())
                )
                j = i + 1
                codes = []
                while j < n and int(ids[j]) != end:
                    v = int(ids[j])
                    if v not in rng:
                        raise ValueError(f"id {v} at position {j} is not a {kind} code inside a {kind} span")
                    codes.append(v - rng.start)
                    j += 1
                segments.append(Segment(kind, tuple(codes)))
                i = j + 1
            elif t in (self.img_end, self.mov_end):
                raise ValueError(f"closing token {t} at position {i} has no opening token")
            else:
                if not 0 <= t < self.size:
                    raise ValueError(f"token id {t} at position {i} is outside the vocabulary of {self.size} ids")
                if t >= self.text_size:
                    raise ValueError(f"code id {t} at position {i} appears outside any [IMG]/[MOV] span")
                text.append(t)
                i += 1
        if text:
            segments.append(Segment(TEXT, tuple(text)))
        return segments


PAPER_VOCAB = Vocab(text_size=32000, visual_codes=16384, motion_codes=1024)
