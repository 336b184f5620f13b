"""The motion condition encoder inside the released video detokenizer → our ``MotionConditionEncoder``.

The official ``build_video_detokenizer`` loads ``video_detokenizer/unet/diffusion_pytorch_model.bin`` into a module
whose ``motion_encoder`` attribute is this encoder, so its tensors are the ones named ``motion_encoder.*``. The blocks
are the motion tokenizer's (same renames and ``cat(q_bias, 0, v_bias)``); ``pos_embed`` [1, N, D] is our
``spatial_embedding`` [1, 1, N, D]; our ``temporal_embedding`` has no official counterpart unless the release was
built with ``add_temp_pos`` (``temp_pos``), so it is zero, which computes exactly what the official encoder does.
"""

from __future__ import annotations

import re

from videolavit.convert.motion_tokenizer import _BLOCK_RENAMES
from videolavit.errors import ConfigError, ReleaseFormatError

PREFIX = "motion_encoder."
PAPER_ENCODER_GRID = (16, 16)  # the official encode_motion resizes motion to 16×16
PAPER_ENCODER_HEADS = 8


def official_encoder_layout(dim: int = 512, depth: int = 12, positions: int = 256, out_dim: int = 1024,
                            mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the official ``MotionConditionEncoder`` (``add_temp_pos=False``) and its shape."""
    hidden = int(dim * mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {"pos_embed": (1, positions, dim), "norm.weight": (dim,), "norm.bias": (dim,),
                                          "in_proj.weight": (dim, 2), "in_proj.bias": (dim,),
                                          "out_proj.weight": (out_dim, dim), "out_proj.bias": (out_dim,)}
    for k in range(depth):
        b = f"blocks.{k}"
        for i in range(3):
            shapes[f"{b}.norm{i}.weight"] = shapes[f"{b}.norm{i}.bias"] = (dim,)
        for attention in ("spatial_attention", "temporal_attention"):
            shapes[f"{b}.{attention}.qkv.weight"] = (3 * dim, dim)
            shapes[f"{b}.{attention}.q_bias"] = shapes[f"{b}.{attention}.v_bias"] = (dim,)
            shapes[f"{b}.{attention}.proj.weight"], shapes[f"{b}.{attention}.proj.bias"] = (dim, dim), (dim,)
        shapes[f"{b}.mlp.fc1.weight"], shapes[f"{b}.mlp.fc1.bias"] = (hidden, dim), (hidden,)
        shapes[f"{b}.mlp.fc2.weight"], shapes[f"{b}.mlp.fc2.bias"] = (dim, hidden), (dim,)
    return shapes


def split_motion_encoder(state: dict) -> dict:
    """The ``motion_encoder.*`` tensors of the released U-Net file, without the prefix."""
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def infer_encoder_config(state: dict, heads: int = PAPER_ENCODER_HEADS, grid=PAPER_ENCODER_GRID, frames: int = 24,
                         where: str = "") -> dict:
    """Our ``MotionConditionEncoder`` arguments for the official encoder's tensors (heads and grid are not in them)."""
    for key in ("in_proj.weight", "out_proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise ReleaseFormatError(f"'{where}' has no '{PREFIX}{key}': no official motion condition encoder in it")
    dim = int(state["in_proj.weight"].shape[0])
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] != state["pos_embed"].shape[1]:
        raise ConfigError(f"motion encoder grid {grid} does not fit the {state['pos_embed'].shape[1]} positions in '{where}'")
    if dim % heads:
        raise ConfigError(f"motion encoder: dim {dim} of '{where}' is not divisible by heads={heads}")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if "temp_pos" in state:
        frames = int(state["temp_pos"].shape[1])
    return dict(grid=list(grid), dim=dim, depth=depth, heads=int(heads), out_dim=int(state["out_proj.weight"].shape[0]),
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, frames=frames, temporal_embedding=True)


def convert_encoder_state(state: dict, config: dict, where: str = "") -> dict:
    """The official encoder's tensors under our names (``config`` from ``infer_encoder_config``)."""
    import torch

    ours: dict = {}
    dim = config["dim"]
    for name, tensor in state.items():
        tensor = tensor.float()
        if name == "pos_embed":
            ours["spatial_embedding"] = tensor.reshape(1, 1, -1, dim)  # [1, N, D] → [1, 1, N, D]
        elif name == "temp_pos":
            ours["temporal_embedding"] = tensor.reshape(1, -1, 1, dim)  # [1, T, D] → [1, T, 1, D]
        elif name.endswith(".v_bias"):
            continue  # consumed with its q_bias
        elif name.endswith(".q_bias"):
            stem = name[: -len(".q_bias")]
            v_bias = state[f"{stem}.v_bias"].float()
            ours[_block(f"{stem}.qkv.bias", where)] = torch.cat([tensor, torch.zeros_like(v_bias), v_bias])
        elif name.startswith("blocks."):
            ours[_block(name, where)] = tensor
        elif name.split(".")[0] in ("in_proj", "out_proj", "norm"):
            ours[name] = tensor
        else:
            raise ReleaseFormatError(f"'{where}': no counterpart for official motion encoder tensor '{PREFIX}{name}'")
    if "temporal_embedding" not in ours:  # the official default (add_temp_pos=False): no temporal embedding at all
        ours["temporal_embedding"] = torch.zeros(1, config["frames"], 1, dim)
    return ours


def _block(name: str, where: str) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    rest = m.group(2)
    for old, new in _BLOCK_RENAMES.items():
        if rest.startswith(old + "."):
            return f"blocks.{m.group(1)}.{new}{rest[len(old):]}"
    if rest.split(".")[0] in ("spatial_attention", "temporal_attention"):
        return name
    raise ReleaseFormatError(f"'{where}': no counterpart for official motion encoder tensor '{PREFIX}{name}'")


def convert_motion_encoder(state: dict, heads: int = PAPER_ENCODER_HEADS, grid=PAPER_ENCODER_GRID, where: str = ""):
    """(MotionConditionEncoder in eval mode, its constructor arguments) from the ``motion_encoder.*``-free tensors."""
    from videolavit.models.motion_condition import MotionConditionEncoder

    config = infer_encoder_config(state, heads=heads, grid=grid, where=where)
    model = MotionConditionEncoder(**config)
    ours = convert_encoder_state(state, config, where=where)
    missing = sorted(set(model.state_dict()) - set(ours))
    unexpected = sorted(set(ours) - set(model.state_dict()))
    if missing or unexpected:
        raise ReleaseFormatError(f"'{where}': motion encoder tensors do not match ours (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
    for key, value in model.state_dict().items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ReleaseFormatError(f"'{where}': '{key}' has shape {list(ours[key].shape)}, ours {list(value.shape)}")
    model.load_state_dict(ours, strict=True)
    return model.eval(), config
