"""The released ``motion_tokenizer.bin`` → ``MotionTokenizer`` (written from what the official module computes).

What differs between the two layouts, and why each step is needed (checked against the official code run on the same
weights, see tests/fixtures/README.md):
- names: ``norm0/1/2`` are our ``norm_spatial/temporal/mlp``, ``mlp.fc1/fc2`` our ``mlp.0/2``, and so on;
- the official attention has a q and a v bias and no k bias: our fused ``qkv.bias`` is ``cat(q_bias, 0, v_bias)``;
- ``pos_embed`` [1, H·W, D] (row-major over H, W) is our ``spatial_pos`` [1, 1, H, W, D], ``temp_pos`` [1, T, D]
  our ``temporal_pos`` [1, T, 1, 1, D];
- the official decoder runs its segments 0..3 from the coarsest grid up; ours walks ``segments`` in reverse, so
  official decoder block k is our block ``(S − 1 − k // n)·n + k % n`` (S segments of n blocks);
- the codebook goes into the quantizer with ``initted`` set, else k-means would re-initialise it on the first call.
"""

from __future__ import annotations

import re

from videolavit.errors import ConfigError, ReleaseFormatError

# The official module hard-codes these (``stage = [3, 3, 3, 3]`` and its stride list); our defaults are the same.
OFFICIAL_SEGMENTS = 4
OFFICIAL_BLOCKS_PER_SEGMENT = 3
OFFICIAL_STRIDES = ((1, 2, 2), (2, 1, 1), (2, 1, 1), (2, 2, 2))
PAPER_GRID = (20, 36)  # (H, W) of the 720 positions in the released pos_embed
PAPER_HEADS = 8  # not recoverable from the weights: the official builder's num_heads

_BLOCK_RENAMES = {
    "norm0": "norm_spatial",
    "norm1": "norm_temporal",
    "norm2": "norm_mlp",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_TOP_RENAMES = {
    "encoder.in_proj": "in_proj",
    "encoder.norm": "encoder_norm",
    "decoder.in_proj": "decoder_in_proj",
    "decoder.norm": "decoder_norm",
    "encode_task_layer.0": "encode_task_layer.0",
    "encode_task_layer.2": "encode_task_layer.2",
    "decode_task_layer.0": "decode_task_layer.0",
    "decode_task_layer.2": "decode_task_layer.2",
}
CODEBOOK_KEY = "quantize.embedding.weight"


def official_layout(
    dim: int = 512,
    in_channels: int = 2,
    frames: int = 24,
    positions: int = 720,
    code_dim: int = 32,
    codebook_size: int = 1024,
    mlp_ratio: float = 4.0,
) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the official ``MotionTransformerTokenizer`` state dict and its shape."""
    hidden = int(dim * mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (dim,), (dim,)

    for part, n_in in (("encoder", in_channels), ("decoder", code_dim)):
        for k in range(OFFICIAL_SEGMENTS * OFFICIAL_BLOCKS_PER_SEGMENT):
            block = f"{part}.blocks.{k}"
            for i, attention in enumerate(("spatial_attention", "temporal_attention")):
                norm(f"{block}.norm{i}")
                shapes[f"{block}.{attention}.qkv.weight"] = (3 * dim, dim)
                shapes[f"{block}.{attention}.q_bias"] = shapes[f"{block}.{attention}.v_bias"] = (dim,)
                linear(f"{block}.{attention}.proj", dim, dim)
            norm(f"{block}.norm2")
            linear(f"{block}.mlp.fc1", dim, hidden)
            linear(f"{block}.mlp.fc2", hidden, dim)
        norm(f"{part}.norm")
        linear(f"{part}.in_proj", n_in, dim)
        layers = "down_sample_layers" if part == "encoder" else "up_sample_layers"
        for i in range(OFFICIAL_SEGMENTS):
            shapes[f"{part}.{layers}.{i}.conv.weight"] = (dim, dim, 3, 3, 3)
            shapes[f"{part}.{layers}.{i}.conv.bias"] = (dim,)
    shapes["encoder.pos_embed"] = (1, positions, dim)
    shapes["encoder.temp_pos"] = (1, frames, dim)
    linear("encode_task_layer.0", dim, dim)
    linear("encode_task_layer.2", dim, code_dim)
    linear("decode_task_layer.0", dim, dim)
    linear("decode_task_layer.2", dim, in_channels)
    shapes[CODEBOOK_KEY] = (codebook_size, code_dim)
    return shapes


def infer_config(state: dict, heads: int = PAPER_HEADS, grid: tuple[int, int] = PAPER_GRID, where: str = "") -> dict:
    """Our ``MotionTokenizer`` constructor arguments for a released state dict (heads and H×W are not in it)."""
    for key in ("encoder.in_proj.weight", "encoder.temp_pos", "encoder.pos_embed", CODEBOOK_KEY, "encoder.blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise ReleaseFormatError(f"'{where}' has no '{key}': not an official motion tokenizer state dict")
    dim, in_channels = state["encoder.in_proj.weight"].shape
    positions = state["encoder.pos_embed"].shape[1]
    height, width = (int(g) for g in grid)
    if height * width != positions:
        raise ConfigError(
            f"motion tokenizer grid {height}x{width} has {height * width} positions but '{where}' has a pos_embed of "
            f"{positions} (pass the release's H x W, e.g. --motion-grid 20x36)"
        )
    if dim % heads:
        raise ConfigError(f"motion tokenizer: dim {dim} of '{where}' is not divisible by heads={heads}")
    codebook_size, code_dim = state[CODEBOOK_KEY].shape
    depth = OFFICIAL_SEGMENTS * OFFICIAL_BLOCKS_PER_SEGMENT
    return dict(
        in_channels=int(in_channels), frames=int(state["encoder.temp_pos"].shape[1]), height=height, width=width,
        dim=int(dim), depth=depth, heads=int(heads), mlp_ratio=state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / dim,
        downsample_after=[OFFICIAL_BLOCKS_PER_SEGMENT * (i + 1) for i in range(OFFICIAL_SEGMENTS)],
        downsample_strides=[list(s) for s in OFFICIAL_STRIDES], code_dim=int(code_dim), codebook_size=int(codebook_size),
    )


def _check_layout(state: dict, config: dict, where: str) -> None:
    expected = official_layout(
        dim=config["dim"], in_channels=config["in_channels"], frames=config["frames"],
        positions=config["height"] * config["width"], code_dim=config["code_dim"],
        codebook_size=config["codebook_size"], mlp_ratio=config["mlp_ratio"],
    )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"wrong shape {[(k, list(state[k].shape), list(expected[k])) for k in wrong[:3]]}" if wrong else ""]
        raise ReleaseFormatError(
            f"'{where}' does not have the official motion tokenizer layout: {'; '.join(p for p in parts if p)}"
        )


def _decoder_block(k: int) -> int:
    n = OFFICIAL_BLOCKS_PER_SEGMENT
    return (OFFICIAL_SEGMENTS - 1 - k // n) * n + k % n


def _rename(name: str) -> str:
    """Our name of an official tensor name (the bias fusion, embeddings and codebook are handled by the caller)."""
    m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", name)
    if m:
        part, k, rest = m.group(1), int(m.group(2)), m.group(3)
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        index = k if part == "encoder" else _decoder_block(k)
        return f"{part}_blocks.{index}.{rest}"
    m = re.fullmatch(r"encoder\.down_sample_layers\.(\d+)\.(.+)", name)
    if m:
        return f"downsample.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up_sample_layers\.(\d+)\.(.+)", name)
    if m:
        return f"upsample.{m.group(1)}.{m.group(2)}"
    stem, _, leaf = name.rpartition(".")
    if stem in _TOP_RENAMES:
        return f"{_TOP_RENAMES[stem]}.{leaf}"
    raise ReleaseFormatError(f"no counterpart for official motion tokenizer tensor '{name}'")


def convert_state_dict(state: dict, config: dict, dead_code_threshold: float = 2.0, where: str = "") -> dict:
    """The official tensors under our names and layouts (``config`` from ``infer_config``)."""
    import torch

    _check_layout(state, config, where)
    ours: dict = {}
    height, width, dim = config["height"], config["width"], config["dim"]
    for name, tensor in state.items():
        tensor = tensor.float()
        if name == "encoder.pos_embed":
            ours["spatial_pos"] = tensor.reshape(1, 1, height, width, dim)  # [1, H·W, D] row-major → [1, 1, H, W, D]
        elif name == "encoder.temp_pos":
            ours["temporal_pos"] = tensor.reshape(1, -1, 1, 1, dim)  # [1, T, D] → [1, T, 1, 1, D]
        elif name == CODEBOOK_KEY:
            codebook = tensor.unsqueeze(0)  # [1, K, code_dim]: one codebook
            ours["quantizer.vq._codebook.embed"] = codebook
            ours["quantizer.vq._codebook.initted"] = torch.tensor(True)
            # EMA state of a code used about once per step (at least twice the dead-code threshold), so fine-tuning
            # moves the released codes gradually: zeros would replace each used code by one batch's mean on the first
            # step and restart every other one; an unused code is restarted only after ~log(2)/(1 - decay) steps.
            count = torch.full((1, codebook.shape[1]), max(1.0, 2.0 * float(dead_code_threshold)))
            ours["quantizer.vq._codebook.cluster_size"] = count
            ours["quantizer.vq._codebook.embed_avg"] = codebook * count.unsqueeze(-1)
        elif name.endswith(".q_bias"):
            stem = name[: -len(".q_bias")]
            v_bias = state[f"{stem}.v_bias"].float()
            # The official attention adds no bias to k: cat(q_bias, 0, v_bias) is the same linear map.
            ours[_rename(f"{stem}.qkv.bias")] = torch.cat([tensor, torch.zeros_like(v_bias), v_bias])
        elif name.endswith(".v_bias"):
            continue  # consumed with its q_bias
        else:
            ours[_rename(name)] = tensor
    return ours


def codebook_norm_range(state: dict) -> tuple[float, float]:
    """(min, max) L2 norm of the released code vectors; both near 1 for the codes to match exactly (see below)."""
    norms = state[CODEBOOK_KEY].float().norm(dim=-1)
    return float(norms.min()), float(norms.max())


def _training_defaults() -> dict:
    """The paper profile's EMA / dead-code / commitment settings (not in the weights), for fine-tuning the import."""
    from dataclasses import asdict

    from videolavit.schemas.sections import MotionTokenizerModelConfig

    return asdict(MotionTokenizerModelConfig())


def convert_motion_tokenizer(state: dict, heads: int = PAPER_HEADS, grid=PAPER_GRID, where: str = ""):
    """(MotionTokenizer in eval mode, notes) from the released state dict; notes list what a user should know."""
    from videolavit.models.motion_tokenizer import MotionTokenizer

    config = {**_training_defaults(), **infer_config(state, heads=heads, grid=grid, where=where)}
    model = MotionTokenizer(**config)
    ours = convert_state_dict(state, config, dead_code_threshold=model.config["dead_code_threshold"], where=where)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing:  # a converter defect, not a user error: every tensor of ours must come from the release
        raise RuntimeError(f"motion tokenizer conversion left {missing[:4]} unset")
    model.load_state_dict(ours, strict=True)
    notes = []
    low, high = codebook_norm_range(state)
    # The official quantizer picks argmin ‖l2norm(z) − e‖, ours argmax l2norm(z)·e: the same code only when every
    # ‖e‖ is equal. The official code initialises unit rows; a release with other norms would tokenize differently.
    if high - low > 1e-3:
        notes.append(
            f"codebook rows have L2 norms in [{low:.4f}, {high:.4f}], not all equal: codes may differ from the "
            "official tokenizer where the nearest code by distance and by cosine disagree"
        )
    return model.eval(), notes
