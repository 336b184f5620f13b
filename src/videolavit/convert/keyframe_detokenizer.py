"""The released image (keyframe) detokenizer → our ``KeyframeDetokenizer`` with the official attention pool.

The official image decoding reads ``image_detokenizer/`` (``unet/``: a stock SDXL-shaped diffusers
``UNet2DConditionModel``; ``vae/``: an ``AutoencoderKL``; ``scheduler/``) and conditions it with three layers that live
in the visual tokenizer's ``highres_tokenizer_decoder.bin``, applied to the decoded features: ``unet_proj_1`` and
``unet_proj_2`` (their outputs concatenated: the cross-attention context) and ``unet_attnpool`` (the pooled condition
of SDXL's micro-conditioning, with time ids (H, W, 0, 0, H, W)). Ours: ``cond_proj`` = the two projections stacked
row-wise, ``pool_proj`` = :class:`~videolavit.models.keyframe_detokenizer.AttentionPool` (``pool="attention"``).
"""

from __future__ import annotations

import json
from pathlib import Path

from videolavit.errors import ReleaseFormatError

CONFIG_META = ("_class_name", "_diffusers_version", "_name_or_path")
POOL_RENAMES = {"positional_embedding": "position", "q_proj": "query", "k_proj": "key", "v_proj": "value",
                "c_proj": "out"}
SCHEDULER_KEYS = ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")


def condition_state(decoder: dict, where: str) -> dict:
    """``cond_proj.*`` and ``pool_proj.*`` (our names) from the decoder file's ``unet_proj_1/2`` and ``unet_attnpool``."""
    import torch

    needed = [f"unet_proj_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    needed += ["unet_attnpool.positional_embedding"] + [f"unet_attnpool.{n}.{p}" for n in ("q_proj", "k_proj", "v_proj",
                                                                                          "c_proj")
                                                        for p in ("weight", "bias")]
    absent = [k for k in needed if k not in decoder]
    if absent:
        raise ReleaseFormatError(f"'{where}' lacks the image detokenizer's condition layers: {absent[:3]}")
    state = {
        "cond_proj.weight": torch.cat([decoder["unet_proj_1.weight"], decoder["unet_proj_2.weight"]]).float(),
        "cond_proj.bias": torch.cat([decoder["unet_proj_1.bias"], decoder["unet_proj_2.bias"]]).float(),
        "pool_proj.position": decoder["unet_attnpool.positional_embedding"].float(),
    }
    for old, new in POOL_RENAMES.items():
        if old != "positional_embedding":
            for p in ("weight", "bias"):
                state[f"pool_proj.{new}.{p}"] = decoder[f"unet_attnpool.{old}.{p}"].float()
    return state


def _diffusers_model(folder: Path, class_names: tuple[str, ...], default: str):
    """A stock diffusers model from ``folder`` (config.json + diffusion_pytorch_model.{safetensors,bin}), its tensors
    read with weights_only and assigned into a model built on the meta device."""
    import diffusers
    import torch

    from videolavit.convert.checkpoint import read_state_dict

    if not (folder / "config.json").is_file():
        raise ReleaseFormatError(f"'{folder}' has no config.json")
    config = json.loads((folder / "config.json").read_text())
    name = config.get("_class_name", default)
    if name not in class_names:
        raise ReleaseFormatError(f"'{folder}/config.json' names a {name}, expected one of {list(class_names)}")
    weights = next((f for f in (folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin")
                    if f.is_file()), None)
    if weights is None:
        raise ReleaseFormatError(f"'{folder}' has no diffusion_pytorch_model.safetensors or .bin")
    with torch.device("meta"):
        model = getattr(diffusers, name).from_config({k: v for k, v in config.items() if k not in CONFIG_META})
    state = read_state_dict(weights)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ReleaseFormatError(f"'{weights}' is not the layout of its config.json: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval(), len(state)


def convert_keyframe_detokenizer(folder: Path, decoder: dict, options: dict, where_decoder: str = ""):
    """(KeyframeDetokenizer, notes, tensor count) from ``image_detokenizer/`` and the decoder file's condition layers."""
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer, vae_downsampling

    unet, count = _diffusers_model(folder / "unet", ("UNet2DConditionModel",), "UNet2DConditionModel")
    vae = None
    notes = []
    if (folder / "vae").is_dir():
        vae, more = _diffusers_model(folder / "vae", ("AutoencoderKL",), "AutoencoderKL")
        vae.requires_grad_(False)
        count += more
    else:
        notes.append(f"no {folder / 'vae'}: the U-Net works in pixel space")
    ours = condition_state(decoder, where_decoder)
    heads = int(options.get("visual_decoder_heads", 16))
    factor = vae_downsampling(vae) if vae is not None else 1
    sample = unet.config.sample_size
    sample = [sample, sample] if isinstance(sample, int) else list(sample)
    size = options.get("keyframe_size") or [s * factor for s in sample]
    kwargs = {"prediction_type": "epsilon", "beta_schedule": "scaled_linear"}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        config = json.loads(scheduler.read_text())
        kwargs.update({k: config[k] for k in SCHEDULER_KEYS if k in config})
        if config.get("_class_name") != "DDIMScheduler":
            notes.append(f"{scheduler}: the release samples with {config.get('_class_name')}, ours with DDIM "
                         "(same trained noise schedule)")
    else:
        notes.append(f"no {scheduler}: SD/SDXL's scaled_linear epsilon schedule assumed")
    try:
        model = KeyframeDetokenizer(cond_dim=ours["cond_proj.weight"].shape[1], image_size=size, pool="attention",
                                    pool_heads=heads, pool_tokens=ours["pool_proj.position"].shape[0] - 1,
                                    unet_model=unet, vae=vae, **kwargs)
    except Exception as exc:  # ConfigError or a shape the U-Net cannot take: say which release
        raise ReleaseFormatError(f"'{folder}': {exc}") from None
    if model.pool_proj is None:
        raise ReleaseFormatError(f"'{folder / 'unet'}' has no pooled condition (addition_embed_type "
                                 f"{unet.config.addition_embed_type!r}), the release's decoder has an attention pool")
    own = {k: v for k, v in model.state_dict().items() if k.startswith(("cond_proj.", "pool_proj."))}
    for key, value in own.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ReleaseFormatError(f"'{where_decoder}': '{key}' is {list(ours[key].shape)}, the U-Net needs "
                                     f"{list(value.shape)}")
    model.load_state_dict(ours, strict=False)
    return model.eval(), notes, count + len(ours)
