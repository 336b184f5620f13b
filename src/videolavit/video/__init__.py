"""Codec level of the pipeline (PyAV + numpy, no torch): decode, resample, MPEG-4 re-encode, motion fields, clips."""

from videolavit.video.clips import Clip, ClipStream, Decomposition, decompose_video, iter_clips
from videolavit.video.motion import denormalize_motion, normalize_motion
from videolavit.video.visualize import draw_motion, show_motion

__all__ = [
    "Clip",
    "ClipStream",
    "Decomposition",
    "decompose_video",
    "denormalize_motion",
    "draw_motion",
    "iter_clips",
    "normalize_motion",
    "show_motion",
]
