"""``videolavit import-official``: find the parts of a released Video-LaVIT folder, convert those we can, report all.

The release layout (the official inference code reads these paths): ``motion_tokenizer.bin``, ``language_model/``
(generation LM), ``video_detokenizer/unet/``, ``visual_tokenizer/``, ``language_model_sft/`` + ``visual_weight.bin``
(understanding LM) and ``image_detokenizer/``. Each converted part is written to a temporary folder and renamed into
place, so an interrupted import never leaves a half-written part that loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from videolavit.errors import ConfigError, MissingArtifactError, VideolavitError

REPORT_JSON = "import_report.json"
REPORT_TEXT = "import_report.txt"


@dataclass
class PartResult:
    part: str
    status: str  # converted | partial | failed | not_found | not_supported | skipped
    source: list[str] = field(default_factory=list)
    output: str | None = None
    detail: str = ""
    notes: list[str] = field(default_factory=list)
    tensors: int = 0


@dataclass(frozen=True)
class Part:
    name: str
    sources: tuple[str, ...]  # paths inside the release; the part is present when the first exists
    convert: Callable | None  # (release, out root, options) -> PartResult; None: recognised, not convertible yet
    why_not: str = ""


def _convert_motion_tokenizer(release: Path, out: Path, options: dict) -> PartResult:
    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.convert.motion_tokenizer import convert_motion_tokenizer

    source, out = release / "motion_tokenizer.bin", out / "motion_tokenizer"
    state = read_state_dict(source)
    model, notes = convert_motion_tokenizer(
        state, heads=options.get("motion_heads", 8), grid=options.get("motion_grid", (20, 36)), where=str(source)
    )
    _write_atomically(out, model.save_pretrained)
    c = model.config
    detail = (
        f"MotionTokenizer dim {c['dim']}, {c['depth']} blocks, {c['heads']} heads, input {c['frames']}x{c['height']}x"
        f"{c['width']}, {model.tokens_per_clip} tokens per clip from a {c['codebook_size']}x{c['code_dim']} codebook"
    )
    return PartResult("motion_tokenizer", "converted", [str(source)], str(out), detail, notes, len(state))


def _convert_language_model(release: Path, out: Path, options: dict) -> PartResult:
    from videolavit.convert.language_model import convert_language_model

    source, out = release / "language_model", out / "language_model"
    detail, notes, count = convert_language_model(source, out, writer=_write_atomically)
    return PartResult("language_model", "converted", [str(source)], str(out), detail, notes, count)


def _convert_video_detokenizer(release: Path, out: Path, options: dict) -> PartResult:
    """U-Net + motion condition encoder (+ vae/, scheduler/) → DIR/detokenizer/video (VideoDetokenizer, official
    variants); when the U-Net does not convert (incomplete, not its config's layout, a latent U-Net without vae/),
    the motion encoder alone does (status partial, the reason in the report)."""
    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.convert.motion_condition import split_motion_encoder
    from videolavit.convert.video_detokenizer import convert_video_detokenizer, split_unet
    from videolavit.errors import ReleaseFormatError

    folder = release / "video_detokenizer"
    source = folder / "unet" / "diffusion_pytorch_model.bin"
    state = read_state_dict(source)
    encoder, unet = split_motion_encoder(state), split_unet(state)
    if not encoder:
        return PartResult("video_detokenizer", "not_supported", [str(source)],
                          detail="no motion_encoder.* tensors in it: not the official video detokenizer's U-Net file")
    found = [str(p) for p in (source, folder / "vae", folder / "scheduler") if p.exists()]
    try:  # the encoder alone still converts when the rest does not (the report says why)
        model, notes = convert_video_detokenizer(folder, state, options)
    except ReleaseFormatError as exc:
        return _encoder_only(source, encoder, options, out, f"the other {len(unet)} tensors (the U-Net) not: {exc}")
    del state
    target = out / "detokenizer" / "video"  # generate.detokenizer_path=DIR/detokenizer: video/, keyframe/
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, model.save_pretrained)
    c, u = model.config, model.unet.config
    detail = (f"VideoDetokenizer (temporal_context per_pixel, motion_input official) {c['frames']}x{c['height']}x"
              f"{c['width']}: U-Net {list(u.block_out_channels)}, {u.in_channels} -> {u.out_channels} channels "
              f"({len(unet)} tensors), motion encoder {len(encoder)} tensors, VAE "
              f"{type(model.vae).__name__ if model.vae is not None else 'none (pixel space)'}, "
              f"sigma {c['sigma_min']}..{c['sigma_max']}; VideoDetokenizer.from_pretrained")
    return PartResult("video_detokenizer", "converted", found, str(target), detail, notes, len(unet) + len(encoder))


def _encoder_only(source: Path, encoder: dict, options: dict, out: Path, why: str) -> PartResult:
    import json

    from safetensors.torch import save_file

    from videolavit.convert.motion_condition import convert_motion_encoder

    model, config = convert_motion_encoder(encoder, heads=options.get("encoder_heads", 8),
                                           grid=options.get("encoder_grid", (16, 16)), where=str(source))

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))

    target = out / "motion_condition_encoder"
    _write_atomically(target, write)
    detail = f"motion condition encoder converted ({len(encoder)} tensors, MotionConditionEncoder(**config.json)); {why}"
    return PartResult("video_detokenizer", "partial", [str(source)], str(target), detail, [], len(encoder))


EVA_FILE, ENCODER_FILE, DECODER_FILE = "eva_vitg_psz14.bin", "tokenizer_encoder.bin", "highres_tokenizer_decoder.bin"


def _convert_visual_tokenizer(release: Path, out: Path, options: dict) -> PartResult:
    """EVA-CLIP -> DIR/eva_clip (the frozen teacher), encoder + decoder -> DIR/visual_tokenizer (official variants)."""
    import json

    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.convert.visual_tokenizer import PAPER_HEADS, convert_eva, convert_visual_tokenizer

    folder = release / "visual_tokenizer"
    sources = [folder / name for name in (EVA_FILE, ENCODER_FILE, DECODER_FILE)]
    absent = [p.name for p in sources if not p.is_file()]
    if absent:
        raise MissingArtifactError(f"'{folder}' lacks {absent}: the visual tokenizer needs all of {EVA_FILE}, "
                                   f"{ENCODER_FILE} and {DECODER_FILE}")
    eva_state = read_state_dict(sources[0])
    eva, eva_notes = convert_eva(eva_state, heads=options.get("eva_heads", PAPER_HEADS), where=str(sources[0]))
    count = len(eva_state)
    del eva_state
    eva_dir = out / "eva_clip"
    _write_atomically(eva_dir, eva.save_pretrained)
    encoder, decoder = read_state_dict(sources[1]), read_state_dict(sources[2])
    model, notes = convert_visual_tokenizer(
        encoder, decoder, teacher_path=str(eva_dir.resolve()), eva=eva.config,
        heads=options.get("visual_heads", PAPER_HEADS), decoder_heads=options.get("visual_decoder_heads", PAPER_HEADS),
        where=str(folder),
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config["teacher_path"] = "../eva_clip"  # relative to the tokenizer folder: DIR stays usable when moved
        (tmp / "config.json").write_text(json.dumps(config, indent=2))

    target = out / "visual_tokenizer"
    _write_atomically(target, write)
    c = model.config
    detail = (f"VisualTokenizer (merger official, decoder head mlp, Gumbel selection at inference) over EVA-CLIP "
              f"{eva.config['width']}x{eva.config['depth']} in {eva_dir}; {c['codebook_size']}x{c['code_dim']} codebook")
    return PartResult("visual_tokenizer", "converted", [str(p) for p in sources], str(target), detail,
                      eva_notes + notes, count + len(encoder) + len(decoder))


UNDERSTANDING_WHY_NOT = ("its visual input, continuous token-merger features through vit_proj (visual_weight.bin over "
                         "the visual tokenizer's files), needs visual_weight.bin and visual_tokenizer/ in the release")


def _convert_understanding_lm(release: Path, out: Path, options: dict) -> PartResult:
    """Its Llama converts like the generation LM's; its visual input (merger + vit_proj) to ``visual_input/``."""
    from videolavit.convert.language_model import convert_language_model

    source, target = release / "language_model_sft", out / "understanding_lm"
    # VideoLaVITLlamaModel builds both tokenizers inside the LM; their tensors in its shards are not the LM's
    drop = ("model.visual_tokenizer.", "model.motion_tokenizer.")
    # the released SFT weights end answers with a literal "\n" (data/conversation.py VIDEO_LAVIT_RELEASED)
    detail, notes, count = convert_language_model(source, target, writer=_write_atomically, drop_prefixes=drop,
                                                  vocab_info={"template": "video_lavit_released"})
    found = [str(p) for p in (source, source / "visual_weight.bin") if p.exists()]
    tokenizer_files = [release / "visual_tokenizer" / n for n in (ENCODER_FILE, DECODER_FILE)]
    if not (source / "visual_weight.bin").is_file() or not all(p.is_file() for p in tokenizer_files):
        return PartResult("understanding_lm", "partial", found, str(target),
                          f"{detail}; not converted: {UNDERSTANDING_WHY_NOT}", notes, count)
    if not (out / "eva_clip").is_dir():
        _convert_visual_tokenizer(release, out, options)  # the EVA the visual input reads (also when --parts omits it)
    from videolavit.convert.understanding import convert_visual_input

    embedder, more = convert_visual_input(release, out, target, options)
    _write_atomically(target / "visual_input", lambda tmp: _save_embedder(embedder, tmp, out / "eva_clip"))
    found.append(str(release / "visual_tokenizer"))
    detail = f"{detail}; visual input (understanding merger + vit_proj {embedder.vit_proj.in_features}->" \
             f"{embedder.vit_proj.out_features}) -> {target / 'visual_input'}"
    return PartResult("understanding_lm", "converted", found, str(target), detail, notes + more, count)


def _save_embedder(embedder, tmp: Path, eva_dir: Path) -> None:
    import json
    import os

    embedder.save_pretrained(tmp)
    config_file = tmp / "tokenizer" / "config.json"
    config = json.loads(config_file.read_text())
    # relative to the final tokenizer folder (DIR/understanding_lm/visual_input/tokenizer), so DIR can move
    final = tmp.parent / tmp.name.removeprefix(".").removesuffix(".partial") / "tokenizer"
    config["teacher_path"] = os.path.relpath(eva_dir.resolve(), final.resolve())
    config_file.write_text(json.dumps(config, indent=2))


def _convert_image_detokenizer(release: Path, out: Path, options: dict) -> PartResult:
    """``image_detokenizer/`` (U-Net, VAE, scheduler) + the condition layers of the visual tokenizer's decoder file
    -> DIR/detokenizer/keyframe (KeyframeDetokenizer, pool attention)."""
    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.convert.keyframe_detokenizer import convert_keyframe_detokenizer

    folder, decoder_file = release / "image_detokenizer", release / "visual_tokenizer" / DECODER_FILE
    if not decoder_file.is_file():
        return PartResult("image_detokenizer", "not_supported", [str(folder)],
                          detail=f"its condition (unet_proj_1/2, unet_attnpool) is in {decoder_file}, missing")
    model, notes, count = convert_keyframe_detokenizer(folder, read_state_dict(decoder_file), options,
                                                       str(decoder_file))
    target = out / "detokenizer" / "keyframe"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, model.save_pretrained)
    c = model.config
    detail = (f"KeyframeDetokenizer (pool attention, {c['pool_heads']} heads over {c['pool_tokens']} tokens) "
              f"{c['image_size'][0]}x{c['image_size'][1]}, {c['cond_dim']}-d condition, "
              f"{c['prediction_type']} {c['beta_schedule']}; VAE "
              f"{type(model.vae).__name__ if model.vae is not None else 'none (pixel space)'}; "
              "KeyframeDetokenizer.from_pretrained")
    return PartResult("image_detokenizer", "converted", [str(folder), str(decoder_file)], str(target), detail, notes,
                      count)


PARTS: tuple[Part, ...] = (
    Part("motion_tokenizer", ("motion_tokenizer.bin",), _convert_motion_tokenizer),
    Part("language_model", ("language_model",), _convert_language_model),
    Part("video_detokenizer", ("video_detokenizer/unet/diffusion_pytorch_model.bin",), _convert_video_detokenizer),
    Part("visual_tokenizer", ("visual_tokenizer/tokenizer_encoder.bin",), _convert_visual_tokenizer),
    Part("understanding_lm", ("language_model_sft",), _convert_understanding_lm),
    Part("image_detokenizer", ("image_detokenizer", f"visual_tokenizer/{DECODER_FILE}"), _convert_image_detokenizer),
)
PART_NAMES = tuple(p.name for p in PARTS)


def _write_atomically(final: Path, write: Callable[[Path], object]) -> None:
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def import_release(
    release_dir: str | Path, out_dir: str | Path, parts: Sequence[str] | None = None, **options
) -> list[PartResult]:
    """Convert the parts of ``release_dir`` (all found, or ``parts``) into ``out_dir``; write and return the report."""
    release, out = Path(release_dir), Path(out_dir)
    if not release.is_dir():
        raise MissingArtifactError(f"release folder '{release}' does not exist")
    unknown = sorted(set(parts or ()) - set(PART_NAMES))
    if unknown:
        raise ConfigError(f"unknown part(s) {unknown}; the parts are {list(PART_NAMES)}")
    if release.resolve() == out.resolve():
        raise ConfigError(f"--out must differ from the release folder '{release}'")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for part in PARTS:
        present = (release / part.sources[0]).exists()
        found = [str(release / s) for s in part.sources if (release / s).exists()]
        if parts is not None and part.name not in parts:
            results.append(PartResult(part.name, "skipped", found, detail="not among --parts"))
        elif not present:
            if parts is not None:
                raise MissingArtifactError(f"part '{part.name}' was asked for but '{release / part.sources[0]}' is missing")
            results.append(PartResult(part.name, "not_found", detail=f"no '{part.sources[0]}' in the release"))
        elif part.convert is None:
            results.append(PartResult(part.name, "not_supported", found, detail=part.why_not))
        else:
            try:
                results.append(part.convert(release, out, options))
            except VideolavitError as exc:  # stop at the first bad part, but leave a report saying which and why
                results.append(PartResult(part.name, "failed", found, detail=str(exc)))
                write_report(results, release, out)
                raise
    write_report(results, release, out)
    return results


def write_report(results: list[PartResult], release: Path, out: Path) -> None:
    payload = {"release": str(release), "out": str(out), "parts": [asdict(r) for r in results]}
    (out / REPORT_JSON).write_text(json.dumps(payload, indent=2) + "\n")
    (out / REPORT_TEXT).write_text(format_report(results, release) + "\n")


def format_report(results: list[PartResult], release: Path) -> str:
    lines = [f"import-official {release}:"]
    for r in results:
        where = f" -> {r.output}" if r.output else ""
        lines.append(f"  {r.part:<18} {r.status}{where}")
        if r.detail:
            lines.append(f"  {'':<18} {r.detail}")
        lines += [f"  {'':<18} note: {n}" for n in r.notes]
    done = sum(r.status == "converted" for r in results)
    partial = sum(r.status == "partial" for r in results)
    lines.append(f"{done} part(s) converted, {partial} partly; report in {REPORT_JSON} and {REPORT_TEXT}")
    return "\n".join(lines)
