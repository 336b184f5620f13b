"""The released video detokenizer (``video_detokenizer/``) → our ``VideoDetokenizer`` with its official variants.

What the release holds and how it maps:
- ``unet/diffusion_pytorch_model.bin``: the U-Net's tensors under diffusers' own names (the official 3D U-Net is
  diffusers' ``UNetSpatioTemporalConditionModel`` layout: same names and shapes, 1428 tensors at SVD size; an
  ``unet.`` prefix is accepted too) and the motion condition encoder's ``motion_encoder.*``
  (:mod:`videolavit.convert.motion_condition`). The U-Net's geometry is ``unet/config.json``'s.
- What differs is how the official model feeds that U-Net, which our switches reproduce: ``temporal_context=per_pixel``
  (each pixel's temporal cross-attention reads the T motion features at its position; the spatial one its frame's
  16×16 grid tokens) and ``motion_input=official`` (motion bicubic-resized to the latent grid, ÷ ``motion_rescale``).
- ``vae/`` (SVD's ``AutoencoderKLTemporalDecoder``, a stock diffusers class): rebuilt from its config with the
  tensors read safely; without it the U-Net must work in pixel space (3 channels).
- ``scheduler/scheduler_config.json`` (SVD's ``EulerDiscreteScheduler``: v-prediction, continuous timesteps
  ¼·ln σ, Karras σs): our EDM sampler with σ_data 1 computes the same step; its σ range becomes ours.
"""

from __future__ import annotations

import json
from pathlib import Path

from videolavit.errors import ConfigError, ReleaseFormatError

UNET_PREFIX = "unet."
SVD_SIGMAS = (0.002, 700.0)  # SVD's scheduler_config.json sigma_min / sigma_max
SCHEDULER_EXPECTED = {"prediction_type": "v_prediction", "timestep_type": "continuous", "use_karras_sigmas": True}
CONFIG_META = ("_class_name", "_diffusers_version", "_name_or_path")


def split_unet(state: dict) -> dict:
    """The U-Net's tensors of the released file (everything but ``motion_encoder.*``), without an ``unet.`` prefix."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("motion_encoder."):
            continue
        out[name.removeprefix(UNET_PREFIX)] = tensor
    return out


def unet_config(folder: Path) -> tuple[dict, list[str]]:
    """The U-Net constructor arguments from ``unet/config.json`` (else SVD's, 10 → 4 channels), and notes."""
    from videolavit.models.video_detokenizer import PAPER_UNET

    path = folder / "unet" / "config.json"
    if not path.is_file():
        config = {**PAPER_UNET, "in_channels": 10, "out_channels": 4, "num_frames": 25}
        return config, [f"no {path}: the U-Net is taken to be SVD-shaped (10 input, 4 output channels)"]
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReleaseFormatError(f"'{path}' is not JSON: {exc}") from None
    name = config.get("_class_name", "UNetSpatioTemporalConditionModel")
    if name != "UNetSpatioTemporalConditionModel":
        raise ReleaseFormatError(f"'{path}' describes a {name}, not the video detokenizer's UNetSpatioTemporalConditionModel")
    return {k: v for k, v in config.items() if k not in CONFIG_META}, []


def build_unet(state: dict, config: dict, where: str):
    """diffusers' ``UNetSpatioTemporalConditionModel(**config)`` holding ``state`` (names and shapes checked first)."""
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    try:  # on the meta device: the layout is checked before any memory is spent, then the tensors are assigned
        with torch.device("meta"):  # from_config: keys of other diffusers versions are ignored, as from_pretrained does
            unet = UNetSpatioTemporalConditionModel.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ReleaseFormatError(f"'{where}': the U-Net config does not build: {exc}") from None
    own = unet.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ReleaseFormatError(
            f"'{where}': its {len(state)} U-Net tensors are not the layout of unet/config.json ({len(own)} tensors): "
            f"{len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}"
        )
    for name, tensor in own.items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise ReleaseFormatError(f"'{where}': '{name}' is {list(state[name].shape)}, the U-Net's {list(tensor.shape)}")
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left:
        raise ReleaseFormatError(f"'{where}': the U-Net still lacks {left[:3]} after loading")
    return unet.eval()


def load_release_vae(folder: Path):
    """The release's ``vae/`` (None when absent), rebuilt from its config; weights read with weights_only."""
    import diffusers

    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.models.keyframe_detokenizer import VAE_CLASSES

    vae_dir = folder / "vae"
    if not (vae_dir / "config.json").is_file():
        return None
    config = json.loads((vae_dir / "config.json").read_text())
    name = config.get("_class_name", "AutoencoderKLTemporalDecoder")
    if name not in VAE_CLASSES:
        raise ReleaseFormatError(f"'{vae_dir}/config.json' names a {name}; the detokenizers load one of {VAE_CLASSES}")
    files = [vae_dir / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
    weights = next((f for f in files if f.is_file()), None)
    if weights is None:
        raise ReleaseFormatError(f"'{vae_dir}' has a config.json but no diffusion_pytorch_model.safetensors or .bin")
    vae = getattr(diffusers, name).from_config({k: v for k, v in config.items() if k not in CONFIG_META})
    state = read_state_dict(weights)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ReleaseFormatError(f"'{weights}' is not this {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return vae.requires_grad_(False).eval()


def scheduler_sigmas(folder: Path) -> tuple[tuple[float, float], list[str]]:
    """(σ_min, σ_max) of the release's sampler, and notes where it is not the EDM sampler ours computes."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return SVD_SIGMAS, [f"no {path}: SVD's σ range {SVD_SIGMAS} assumed"]
    config = json.loads(path.read_text())
    notes = [f"{path}: {k} is {config.get(k)!r}, our sampler computes {v!r}"
             for k, v in SCHEDULER_EXPECTED.items() if config.get(k) != v]
    return (float(config.get("sigma_min") or SVD_SIGMAS[0]), float(config.get("sigma_max") or SVD_SIGMAS[1])), notes


def convert_video_detokenizer(folder: Path, state: dict, options: dict):
    """(VideoDetokenizer with the official variants, notes) from ``video_detokenizer/`` and its U-Net file's tensors."""
    from videolavit.convert.motion_condition import convert_motion_encoder, split_motion_encoder
    from videolavit.models.video_detokenizer import VideoDetokenizer

    where = str(folder / "unet" / "diffusion_pytorch_model.bin")
    config, notes = unet_config(folder)
    unet = build_unet(split_unet(state), config, where)
    encoder, encoder_config = convert_motion_encoder(
        split_motion_encoder(state), heads=options.get("encoder_heads", 8), grid=options.get("encoder_grid", (16, 16)),
        where=where)
    if encoder_config["out_dim"] != unet.config.cross_attention_dim:
        raise ReleaseFormatError(f"'{where}': motion features are {encoder_config['out_dim']}-d, the U-Net's "
                                 f"cross-attention reads {unet.config.cross_attention_dim}")
    vae = load_release_vae(folder)
    (sigma_min, sigma_max), more = scheduler_sigmas(folder)
    frames = int(options.get("video_frames", 24))
    height, width = (int(v) for v in options.get("video_size", (320, 576)))
    motion_std = [float(v) for v in options.get("motion_std", (0.0993703, 0.1130276))]
    encoder_kwargs = {k: encoder_config[k] for k in ("grid", "dim", "depth", "heads", "mlp_ratio", "temporal_embedding")}
    try:
        model = VideoDetokenizer(
            frames=frames, height=height, width=width, motion_encoder=encoder_kwargs, sigma_data=1.0,
            sigma_min=sigma_min, sigma_max=sigma_max, motion_std=motion_std,
            motion_rescale=float(options.get("motion_rescale", 10.0)), temporal_context="per_pixel",
            motion_input="official", unet_model=unet, vae=vae,
        )
    except ConfigError as exc:
        raise ReleaseFormatError(f"'{folder}': {exc} (a latent U-Net needs the release's vae/)") from None
    ours, own = encoder.state_dict(), model.motion_encoder.state_dict()
    if ours["temporal_embedding"].shape != own["temporal_embedding"].shape:
        if "temp_pos" in split_motion_encoder(state):
            raise ReleaseFormatError(f"'{where}': motion_encoder.temp_pos holds {encoder_config['frames']} frames, "
                                     f"the detokenizer is built for {frames} (option video_frames)")
        ours["temporal_embedding"] = own["temporal_embedding"].new_zeros(own["temporal_embedding"].shape)  # none
    model.motion_encoder.load_state_dict(ours, strict=True)
    if vae is None:
        notes.append("no vae/ in the release: the U-Net works in pixel space")
    return model.eval(), notes + more
