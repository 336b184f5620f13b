"""Stage ``evaluate``: every trained model under one versioned protocol (``conf/eval/<evaluate.protocol>.yaml``).

``videolavit evaluate`` writes ``metrics/evaluate.json`` and one MLflow run (generated clips as MP4 + GIF artifacts):
- ``qa/*``: zero-shot QA of the instruction-tuned LM on the protocol split, greedy, EXACT MATCH after normalization
  (``qa/metric`` says so; NOT comparable with the GPT-3.5-judged accuracy of the paper's Table 2), per question type,
  beside ``qa/chance_<type>`` (a uniform guess within the answer's family) and ``qa/prior_<type>`` (the most frequent
  training answer: the best a media-blind model can do). ``ablation_no_motion/qa/*``: the same video questions with
  ``frames_media`` (uniformly sampled frames as images, no motion tokens), as the paper's Table 6 "w/o motion".
- ``t2v/*``: clips generated from the split's captions, scored by FVD and CLIPSIM whose key names the feature extractor
  (``_i3d`` / ``_clip`` with local weights, else ``_corpus``: the evaluators stage's proxies), and by the corpus
  classifier's reading of their shape, color and direction (``t2v/attribute_acc*``, next to chance and real clips).
- ``recon/*``: motion tokenizer round trip (EPE in px/frame at the encode size, beside predicting zero motion);
  video detokenizer re-rendering clips from their first frame + tokenized motion (PSNR/SSIM over frames 2…T, beside
  repeating the first frame); keyframe detokenizer re-rendering keyframes from their visual tokens.
- ``tokens/*``: motion tokens per clip (N, paper Table 7) and the token saving measured by the tokenize stage.
- ``qa_imported/*`` (with ``evaluate.understanding_lm``): the same QA answered by the released understanding LM
  imported by ``videolavit import-official``, images and keyframes as continuous features (evaluation/qa_imported.py).
  ``evaluate.parts`` picks the parts that run (``[qa_imported]``: the released model alone, no trained models needed).
A value that cannot be computed is null, and ``notes`` in the JSON says why. A run whose motion tokenizer grid differs
from the profile's is tagged ``videolavit.ablation=tokens_<N>`` (the report's Table 7 groups runs by N).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from videolavit import tracking
from videolavit.artifacts import artifact
from videolavit.errors import ConfigError, require_path
from videolavit.evaluation.extractors import Extractors, build_extractors, feed_real_clips
from videolavit.evaluation.protocol import NO_MOTION, QA_TYPES, Results, load_protocol, with_sampling
from videolavit.evaluation.qa import evaluate_qa
from videolavit.evaluation.qa_imported import evaluate_qa_imported
from videolavit.evaluation.recon import evaluate_recon
from videolavit.evaluation.t2v import evaluate_t2v
from videolavit.runner import stage_entry

STAGE = "evaluate"
REQUIRED = (
    "qa/video_acc", *(f"qa/video_acc_{t}" for t in QA_TYPES), "qa/image_acc", *(f"qa/chance_{t}" for t in QA_TYPES),
    f"{NO_MOTION}qa/video_acc", *(f"{NO_MOTION}qa/video_acc_{t}" for t in QA_TYPES),
    "t2v/attribute_acc", "t2v/attribute_acc_direction", "recon/motion_epe", "recon/video_psnr",
    "recon/video_psnr_static_baseline", "tokens/saving", "tokens/motion_per_clip",
)  # plus t2v/fvd_<extractor> and t2v/clipsim_<extractor>
PARTS = ("qa", "qa_imported", "t2v", "recon")
MAIN_PARTS = ("qa", "t2v", "recon")  # a run with all three can be a main row of the report
PART_KEYS = {"qa": ("qa/", f"{NO_MOTION}qa/"), "t2v": ("t2v/",), "recon": ("recon/",)}


def evaluate_parts(cfg: DictConfig) -> list[str]:
    """``evaluate.parts`` checked; None: qa, t2v, recon, and qa_imported when ``evaluate.understanding_lm`` is set."""
    ev = cfg.evaluate
    if ev.parts is None:
        return ["qa", *(["qa_imported"] if ev.understanding_lm else []), "t2v", "recon"]
    parts = [str(p) for p in ev.parts]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ConfigError(f"evaluate.parts: unknown {unknown}; the parts are {list(PARTS)}")
    if "qa_imported" in parts and not ev.understanding_lm:
        raise ConfigError("evaluate.parts has qa_imported but evaluate.understanding_lm is not set (an import-official "
                          "DIR/understanding_lm)")
    return parts


# ---- tokens, tags, the stage ----------------------------------------------------------------------------------------


def token_metrics(cfg: DictConfig, results: Results, motion_tokens: int | None) -> None:
    results.set("tokens/motion_per_clip", None if motion_tokens is None else float(motion_tokens),
                "no motion tokenizer was loaded (evaluate.parts)")
    path = Path(cfg.paths.metrics) / "tokenize.json"
    if not path.is_file():
        results.set("tokens/saving", None, f"{path} not found: run `videolavit tokenize`")
        return
    measured = json.loads(path.read_text())
    for key, name in (("token_saving", "saving"), ("token_saving_paper_counts", "saving_paper_counts"),
                      ("tokens_per_clip", "per_clip"), ("visual_tokens_per_keyframe", "visual_per_keyframe")):
        results.set(f"tokens/{name}", measured.get(key), f"{path} has no {key}")


def reference_motion_tokens(cfg: DictConfig) -> int:
    """N of the main runs: ``evaluate.reference_motion_tokens``, else the profile's shipped motion tokenizer grid."""
    from videolavit.config import load_config
    from videolavit.models.motion_tokenizer import _token_grid

    if cfg.evaluate.reference_motion_tokens is not None:
        return int(cfg.evaluate.reference_motion_tokens)
    m = load_config(profile=cfg.profile, params_file=None).motion_tokenizer.model
    strides = [list(s) for s in m.downsample_strides]
    t, h, w = _token_grid((m.frames, m.height, m.width), m.depth, list(m.downsample_after), strides)
    return t * h * w


def run_tags(label: str, motion_tokens: int | None, reference: int, parts=MAIN_PARTS) -> dict[str, str]:
    """Provenance tags; a motion tokenizer grid other than the reference marks the run as the Table 7 ablation, and a
    run without all of qa, t2v and recon is tagged ``parts_<...>`` so the report's main rows never come from it."""
    tags = {"videolavit.protocol": label, "videolavit.qa_metric": "exact_match"}
    if not set(MAIN_PARTS) <= set(parts):
        tags["videolavit.ablation"] = "parts_" + "+".join(parts)
    if motion_tokens is None:
        return tags
    tags["videolavit.motion_tokens"] = str(motion_tokens)
    if motion_tokens != reference:
        tags["videolavit.ablation"] = f"tokens_{motion_tokens}"
    return tags


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict:
    from videolavit.inference.loading import load_models
    from videolavit.inference.pipeline import VideoLaVITPipeline

    started = time.perf_counter()
    parts = evaluate_parts(cfg)
    protocol, label = load_protocol(cfg.evaluate.protocol, list(cfg.evaluate.protocol_overrides))
    reference = reference_motion_tokens(cfg)  # before the long part: a config problem here fails fast
    cfg = with_sampling(cfg, protocol.sampling)
    out_dir = Path(cfg.paths.runs) / STAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("t2v_*"):
        old.unlink()
    (out_dir / "protocol.yaml").write_text(OmegaConf.to_yaml(protocol))
    results, seconds = Results(), {}

    if "qa" in parts:
        evaluate_qa(cfg, protocol, results, out_dir)
        seconds["qa"] = time.perf_counter() - started
    motion_tokens = ext = None  # N of this platform's motion tokenizer (the pipeline's), not the imported one's
    if "qa_imported" in parts:
        from videolavit.inference.loading import device_of

        mark = time.perf_counter()
        results.set("qa_imported/motion_tokens_per_clip",
                    float(evaluate_qa_imported(cfg, protocol, results, out_dir, device_of(cfg))))
        seconds["qa_imported"] = time.perf_counter() - mark

    if "t2v" in parts or "recon" in parts:
        lm_path = artifact(cfg, "lm_pretrain", ("evaluate.generation_lm_path", "generate.lm_path"))
        pipe = VideoLaVITPipeline(load_models(cfg, lm_path=lm_path), cfg, seed=cfg.generate.seed)
        motion_tokens = pipe.m.motion_tokenizer.tokens_per_clip
        clips_dir = require_path(cfg.paths.clips, "clip shards", "Run `videolavit decompose` first.")
        ext = build_extractors(cfg, protocol)
    token_metrics(cfg, results, motion_tokens)
    if "t2v" in parts:
        results.set("count/t2v_real_clips", float(feed_real_clips(ext, clips_dir, protocol.t2v.split, protocol.t2v.real_clips)))
        mark = time.perf_counter()
        evaluate_t2v(cfg, protocol, results, pipe, ext, out_dir)
        seconds["t2v"] = time.perf_counter() - mark
    if "recon" in parts:
        mark = time.perf_counter()
        evaluate_recon(cfg, protocol, results, pipe, ext)
        seconds["recon"] = time.perf_counter() - mark
    for part, prefixes in PART_KEYS.items():
        if part not in parts:
            results.missing([k for k in REQUIRED if k.startswith(prefixes)], f"'{part}' is not among evaluate.parts")
    results.missing([k for k in REQUIRED if k not in results.metrics], "not computed")

    run = tracking.active()
    tags = run_tags(label, motion_tokens, reference, parts)
    if "qa_imported" in parts:
        tags["videolavit.qa_imported_lm"] = str(cfg.evaluate.understanding_lm)
    run.set_tags(tags)
    run.log_artifact(out_dir, "evaluate")
    results.update({f"seconds/{k}": v for k, v in seconds.items()})
    results.set("seconds", time.perf_counter() - started)
    metrics = dict(results.metrics)
    metrics.update({"protocol": label, "notes": dict(sorted(results.notes.items()))})
    _print_summary(metrics, ext, label)
    return metrics


def _print_summary(m: dict, ext: Extractors | None, label: str) -> None:
    def f(key: str, scale: float = 1.0) -> str:
        value = m.get(key)
        return "—" if value is None else f"{value * scale:.3g}"

    print(f"evaluate ({label}) in {f('seconds')} s "
          f"(qa {f('seconds/qa')}, t2v {f('seconds/t2v')}, recon {f('seconds/recon')})")
    if "seconds/qa" in m:
        print(f"  QA exact match (not GPT-judged): video {f('qa/video_acc')} [appearance {f('qa/video_acc_appearance')}, "
              f"motion {f('qa/video_acc_motion')} (chance {f('qa/chance_motion')}), temporal {f('qa/video_acc_temporal')}]; "
              f"w/o motion {f(NO_MOTION + 'qa/video_acc')} [motion {f(NO_MOTION + 'qa/video_acc_motion')}]; "
              f"image {f('qa/image_acc')}")
    if "qa_imported/metric" in m:
        q = "qa_imported/"
        print(f"  QA of the imported understanding LM ({m.get(q + 'lm')}): video {f(q + 'video_acc')} [motion "
              f"{f(q + 'video_acc_motion')}]; w/o motion {f(NO_MOTION + q + 'video_acc')}; image {f(q + 'image_acc')}")
    if ext is not None:
        print(f"  T2V: {ext.fvd_key} {f(ext.fvd_key)}, {ext.clipsim_key} {f(ext.clipsim_key)}, "
              f"attributes {f('t2v/attribute_acc')} "
              f"(direction {f('t2v/attribute_acc_direction')}, real clips {f('t2v/attribute_acc_real')})")
    names = sorted(k[len("t2v/attribute_chance_"):] for k in m if k.startswith("t2v/attribute_chance_"))
    if names:  # where an attribute is lost: the classifier (real), the detokenizers (own tokens) or the LM (generated)
        print("  T2V attribute accuracy, generated / real clips through their own tokens / real clips (chance): " + ", ".join(
            f"{a} {f('t2v/attribute_acc_' + a)} / {f('t2v/attribute_acc_tokens_' + a)} / "
            f"{f('t2v/attribute_acc_real_' + a)} ({f('t2v/attribute_chance_' + a)})" for a in names))
    print(f"  recon: motion EPE {f('recon/motion_epe')} px/frame (zero motion {f('recon/motion_epe_zero_baseline')}), "
          f"video PSNR {f('recon/video_psnr')} dB (first frame repeated {f('recon/video_psnr_static_baseline')}), "
          f"keyframe PSNR {f('recon/keyframe_psnr')}; tokens: N={f('tokens/motion_per_clip')}, saving {f('tokens/saving')}")
