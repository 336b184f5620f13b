"""The released ``visual_tokenizer/`` → our ``VisionEncoder`` (EVA-CLIP, the frozen teacher) + ``VisualTokenizer``.

Three files (written from what the official modules compute; checked against them on seeded weights, see
tests/fixtures/README.md): ``eva_vitg_psz14.bin`` (EVA ViT-G: a CLS token, LayerNorm eps 1e-6, q/v biases only),
``tokenizer_encoder.bin`` (token predictor, merger, encode task layer, codebook; ``vit_proj`` for understanding) and
``highres_tokenizer_decoder.bin`` (the feature decoder; its ``unet_proj_*`` / ``unet_attnpool`` belong to the image
detokenizer's condition). What differs from our layout:
- a fused ``qkv`` (EVA, the merger's causal self-attention, the decoder's self-attention) is our ``q`` (rows 0..D) and
  ``kv`` (rows D..3D); separate ``key``/``value`` (cross-attention) are our ``kv`` stacked; EVA has no k bias, so its
  ``kv.bias`` is ``cat(0, v_bias)``;
- block norms ``norm0/1/2`` are our ``norm1/2/3``; the merger's ``ln_vision``/``norm`` our ``ln_vision``/``merger_norm``;
- EVA's final ``norm`` and CLIP ``head`` are not used by LaVIT (it reads the last block's patch features): dropped;
- the codebook goes into the quantizer marked initialised (else k-means would re-initialise it on the first call).
The converted tokenizer uses the official variants (``merger="official"``, ``decoder_head="mlp"``,
``selection="gumbel"``) and the converted EVA as its ``teacher_path``.
"""

from __future__ import annotations

import math
import re

from videolavit.errors import ConfigError, ReleaseFormatError

PAPER_HEADS = 16  # EVA ViT-G (head width 88), the merger and the decoder: not recoverable from the weights
CODEBOOK_KEY = "quantize.embedding.weight"
OPTIONAL_ENCODER_PREFIXES = ("vit_proj.", "encoder.")  # understanding projection; an EVA copy some dumps carry
IMAGE_CONDITION_PREFIXES = ("unet_proj_1.", "unet_proj_2.", "unet_attnpool.")


def _linear(shapes: dict, name: str, n_in: int, n_out: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)


def _norm(shapes: dict, name: str, dim: int) -> None:
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (dim,), (dim,)


def eva_layout(width: int = 1408, depth: int = 40, hidden: int = 6144, patches: int = 256, patch_size: int = 14,
               head_dim: int = 1024) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the official ``EVAVisionTransformer`` state dict (``eva_vitg_psz14.bin``)."""
    s: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, width), "pos_embed": (1, patches + 1, width),
                                     "patch_embed.proj.weight": (width, 3, patch_size, patch_size),
                                     "patch_embed.proj.bias": (width,)}
    for i in range(depth):
        b = f"blocks.{i}"
        _norm(s, f"{b}.norm1", width)
        s[f"{b}.attn.qkv.weight"] = (3 * width, width)
        s[f"{b}.attn.q_bias"] = s[f"{b}.attn.v_bias"] = (width,)
        _linear(s, f"{b}.attn.proj", width, width)
        _norm(s, f"{b}.norm2", width)
        _linear(s, f"{b}.mlp.fc1", width, hidden)
        _linear(s, f"{b}.mlp.fc2", hidden, width)
    _norm(s, "norm", width)
    _linear(s, "head", width, head_dim)
    return s


def encoder_layout(width: int = 1408, depth: int = 12, hidden: int = 6144, code_dim: int = 32,
                   codebook_size: int = 16384, llm_dim: int | None = 4096) -> dict[str, tuple[int, ...]]:
    """``tokenizer_encoder.bin``: token predictor, merger, encode task layer, codebook (+ ``vit_proj`` when given)."""
    s: dict[str, tuple[int, ...]] = {}
    _norm(s, "token_predictor.in_conv.0", width)
    _linear(s, "token_predictor.in_conv.1", width, width)
    for i, (n_in, n_out) in zip((0, 2, 4), ((width, width // 2), (width // 2, width // 4), (width // 4, 2))):
        _linear(s, f"token_predictor.out_conv.{i}", n_in, n_out)
    for i in range(depth):
        b = f"causal_encoder.blocks.{i}"
        for n in ("norm0", "norm1", "norm2"):
            _norm(s, f"{b}.{n}", width)
        _linear(s, f"{b}.token_causal_attn.qkv", width, 3 * width)
        for name in ("token_causal_attn.proj", "token_cross_attn.query", "token_cross_attn.key",
                     "token_cross_attn.value", "token_cross_attn.proj"):
            _linear(s, f"{b}.{name}", width, width)
        _linear(s, f"{b}.mlp.fc1", width, hidden)
        _linear(s, f"{b}.mlp.fc2", hidden, width)
    _norm(s, "causal_encoder.ln_vision", width)
    _norm(s, "causal_encoder.norm", width)
    _linear(s, "encode_task_layer.0", width, width)
    _linear(s, "encode_task_layer.2", width, code_dim)
    s[CODEBOOK_KEY] = (codebook_size, code_dim)
    if llm_dim:
        _linear(s, "vit_proj", width, llm_dim)
    return s


def decoder_layout(code_dim: int = 32, dim: int = 1408, depth: int = 12, hidden: int = 6144, patches: int = 256,
                   out_dim: int = 1408, cond_dims: tuple[int, int, int] | None = (768, 1280, 1280)) -> dict:
    """``highres_tokenizer_decoder.bin`` (+ the image detokenizer's condition heads when ``cond_dims`` is given)."""
    s: dict[str, tuple[int, ...]] = {"pos_embed": (1, patches, dim), "query_embed": (1, patches, dim)}
    _linear(s, "in_proj", code_dim, dim)
    for i in range(depth):
        b = f"blocks.{i}"
        for n in ("norm0", "norm1", "norm2"):
            _norm(s, f"{b}.{n}", dim)
        _linear(s, f"{b}.self_attn.qkv", dim, 3 * dim)
        for name in ("self_attn.proj", "cross_attn.query", "cross_attn.key", "cross_attn.value", "cross_attn.proj"):
            _linear(s, f"{b}.{name}", dim, dim)
        _linear(s, f"{b}.mlp.fc1", dim, hidden)
        _linear(s, f"{b}.mlp.fc2", hidden, dim)
    _norm(s, "norm", dim)
    _linear(s, "decode_task_layer.0", dim, dim)
    _linear(s, "decode_task_layer.2", dim, out_dim)
    if cond_dims:
        first, second, pooled = cond_dims
        _linear(s, "unet_proj_1", out_dim, first)
        _linear(s, "unet_proj_2", out_dim, second)
        s["unet_attnpool.positional_embedding"] = (patches + 1, out_dim)
        for p in ("k_proj", "q_proj", "v_proj"):
            _linear(s, f"unet_attnpool.{p}", out_dim, out_dim)
        _linear(s, "unet_attnpool.c_proj", out_dim, pooled)
    return s


def _require(state: dict, keys, where: str, what: str) -> None:
    for key in keys:
        if key not in state:
            raise ReleaseFormatError(f"'{where}' has no '{key}': not an official {what} state dict")


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _check(state: dict, expected: dict, where: str, what: str, optional=()) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith(tuple(optional)))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"wrong shape {[(k, list(state[k].shape), list(expected[k])) for k in wrong[:3]]}" if wrong else ""]
        raise ReleaseFormatError(f"'{where}' does not have the official {what} layout: {'; '.join(p for p in parts if p)}")


def _ratio(hidden: int, dim: int) -> float:
    """An mlp_ratio whose int(dim · ratio) is exactly ``hidden`` (hidden / dim can land a hair under it)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else math.nextafter(ratio, math.inf)


def eva_config(state: dict, heads: int = PAPER_HEADS, where: str = "") -> dict:
    """Our ``VisionEncoder`` arguments for a released EVA state dict (checked against its full layout)."""
    _require(state, ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"), where, "EVA-CLIP")
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    patches = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(patches)
    if grid * grid != patches:
        raise ReleaseFormatError(f"'{where}': pos_embed has {patches} + 1 rows, not a square patch grid + CLS")
    if width % heads:
        raise ConfigError(f"EVA width {width} of '{where}' is not divisible by heads={heads}")
    depth, hidden = _count(state, r"blocks\.(\d+)\."), state["blocks.0.mlp.fc1.weight"].shape[0]
    head_dim = state["head.weight"].shape[0] if "head.weight" in state else 1024
    _check(state, eva_layout(width, depth, hidden, patches, patch, head_dim), where, "EVA-CLIP")
    return dict(image_size=int(grid * patch), patch_size=int(patch), width=int(width), depth=depth, heads=int(heads),
                mlp_ratio=_ratio(int(hidden), int(width)), cls_token=True, norm_eps=1e-6)


def _split_qkv(ours: dict, prefix: str, weight, bias) -> None:
    dim = weight.shape[1]
    ours[f"{prefix}.q.weight"], ours[f"{prefix}.kv.weight"] = weight[:dim], weight[dim:]
    if bias is not None:
        ours[f"{prefix}.q.bias"], ours[f"{prefix}.kv.bias"] = bias[:dim], bias[dim:]


def convert_eva(state: dict, heads: int = PAPER_HEADS, where: str = ""):
    """(VisionEncoder in eval mode, notes) from ``eva_vitg_psz14.bin``'s state dict."""
    import torch

    from videolavit.models.vision_encoder import VisionEncoder

    config = eva_config(state, heads=heads, where=where)
    state = {k: v.float() for k, v in state.items()}
    ours = {"cls_token": state["cls_token"], "pos_embed": state["pos_embed"],
            "patch_embed.weight": state["patch_embed.proj.weight"], "patch_embed.bias": state["patch_embed.proj.bias"]}
    for i in range(config["depth"]):
        b = f"blocks.{i}"
        v_bias = state[f"{b}.attn.v_bias"]
        # no k bias in EVA: cat(q_bias, 0, v_bias) is the same linear map as its q/k/v
        bias = torch.cat([state[f"{b}.attn.q_bias"], torch.zeros_like(v_bias), v_bias])
        _split_qkv(ours, f"{b}.attn", state[f"{b}.attn.qkv.weight"], bias)
        for name in ("norm1", "norm2", "attn.proj"):
            for leaf in ("weight", "bias"):
                ours[f"{b}.{name}.{leaf}"] = state[f"{b}.{name}.{leaf}"]
        for old, new in (("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
            for leaf in ("weight", "bias"):
                ours[f"{b}.{new}.{leaf}"] = state[f"{b}.{old}.{leaf}"]
    model = VisionEncoder(**config)
    model.load_state_dict(ours, strict=True)
    notes = ["EVA-CLIP's final norm and CLIP head are not used by LaVIT (it reads the last block's patch features): "
             "not converted"] if "head.weight" in state else []
    return model.eval(), notes


def _cross_block(ours: dict, state: dict, src: str, dst: str, self_name: str, cross_name: str) -> None:
    """One merger/decoder block: fused-qkv self-attention, query/key/value cross-attention, MLP."""
    import torch

    for old, new in (("norm0", "norm1"), ("norm1", "norm2"), ("norm2", "norm3"), ("mlp.fc1", "mlp.0"),
                     ("mlp.fc2", "mlp.2"), (f"{self_name}.proj", "self_attn.proj"),
                     (f"{cross_name}.query", "cross_attn.q"), (f"{cross_name}.proj", "cross_attn.proj")):
        for leaf in ("weight", "bias"):
            ours[f"{dst}.{new}.{leaf}"] = state[f"{src}.{old}.{leaf}"]
    _split_qkv(ours, f"{dst}.self_attn", state[f"{src}.{self_name}.qkv.weight"], state[f"{src}.{self_name}.qkv.bias"])
    for leaf in ("weight", "bias"):
        ours[f"{dst}.cross_attn.kv.{leaf}"] = torch.cat(
            [state[f"{src}.{cross_name}.key.{leaf}"], state[f"{src}.{cross_name}.value.{leaf}"]])


def codebook_state(codebook, dead_code_threshold: float | None) -> dict:
    """Our quantizer's tensors for a released codebook [K, D]: marked initialised, an EMA state of ~1 use per step
    (above an absolute ``dead_code_threshold``; None, the relative rule: every code at the mean use, so none is dead)."""
    import torch

    codebook = codebook.float().unsqueeze(0)
    uses = 1.0 if dead_code_threshold is None else max(1.0, 2.0 * float(dead_code_threshold))
    count = torch.full((1, codebook.shape[1]), uses)
    return {"quantizer.vq._codebook.embed": codebook, "quantizer.vq._codebook.initted": torch.tensor(True),
            "quantizer.vq._codebook.cluster_size": count,
            "quantizer.vq._codebook.embed_avg": codebook * count.unsqueeze(-1)}


def tokenizer_config(encoder: dict, decoder: dict, eva: dict, heads: int, decoder_heads: int, where: str) -> dict:
    """Our ``VisualTokenizer`` architecture for the released encoder/decoder state dicts and the EVA config."""
    _require(encoder, ("causal_encoder.blocks.0.mlp.fc1.weight", "encode_task_layer.2.weight", CODEBOOK_KEY), where,
             "visual tokenizer encoder")
    _require(decoder, ("in_proj.weight", "blocks.0.mlp.fc1.weight", "decode_task_layer.2.weight"), where,
             "visual tokenizer decoder")
    width = eva["width"]
    hidden = encoder["causal_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    codebook_size, code_dim = encoder[CODEBOOK_KEY].shape
    depth = _count(encoder, r"causal_encoder\.blocks\.(\d+)\.")
    llm_dim = encoder["vit_proj.weight"].shape[0] if "vit_proj.weight" in encoder else None
    _check(encoder, encoder_layout(width, depth, hidden, code_dim, codebook_size, llm_dim), where,
           "visual tokenizer encoder", optional=("encoder.",))
    dec_dim, dec_hidden = decoder["in_proj.weight"].shape[0], decoder["blocks.0.mlp.fc1.weight"].shape[0]
    out_dim = decoder["decode_task_layer.2.weight"].shape[0]
    patches = (eva["image_size"] // eva["patch_size"]) ** 2
    dec_depth = _count(decoder, r"blocks\.(\d+)\.")
    _check(decoder, decoder_layout(code_dim, dec_dim, dec_depth, dec_hidden, patches, out_dim, None), where,
           "visual tokenizer decoder", optional=IMAGE_CONDITION_PREFIXES)
    if out_dim != width:
        raise ReleaseFormatError(f"'{where}': the decoder rebuilds {out_dim}-d features, the EVA gives {width}-d")
    ratio = _ratio(int(hidden), int(width))
    if int(hidden) != int(eva["width"] * eva["mlp_ratio"]) or int(dec_hidden) != int(dec_dim * ratio):
        raise ReleaseFormatError(f"'{where}': EVA, merger and decoder MLPs have different ratios (ours share one)")
    for name, dim, h in (("merger", width, heads), ("decoder", dec_dim, decoder_heads)):
        if dim % h:
            raise ConfigError(f"visual tokenizer {name} width {dim} is not divisible by {h} heads")
    return dict(image_size=eva["image_size"], patch_size=eva["patch_size"], width=int(width), depth=eva["depth"],
                heads=int(heads), mlp_ratio=ratio, merger_depth=depth, merger_causal=True,
                decoder_width=int(dec_dim), decoder_depth=dec_depth, decoder_heads=int(decoder_heads),
                code_dim=int(code_dim), codebook_size=int(codebook_size), vit_cls_token=True, vit_norm_eps=1e-6,
                merger="official", decoder_head="mlp", selection="gumbel", train_selection="gumbel")


def convert_tokenizer_state(encoder: dict, decoder: dict, config: dict, dead_code_threshold: float) -> dict:
    """The released encoder/decoder tensors under our ``VisualTokenizer`` names (``token_head`` excluded)."""
    encoder = {k: v.float() for k, v in encoder.items()}
    decoder = {k: v.float() for k, v in decoder.items()}
    ours: dict = {}
    pairs = [("token_predictor.in_conv.0", "selector.in_proj.0"), ("token_predictor.in_conv.1", "selector.in_proj.1"),
             *((f"token_predictor.out_conv.{i}", f"selector.out.{i}") for i in (0, 2, 4)),
             ("causal_encoder.ln_vision", "ln_vision"), ("causal_encoder.norm", "merger_norm"),
             ("encode_task_layer.0", "encode_task.0"), ("encode_task_layer.2", "encode_task.2")]
    for old, new in pairs:
        for leaf in ("weight", "bias"):
            ours[f"{new}.{leaf}"] = encoder[f"{old}.{leaf}"]
    for i in range(config["merger_depth"]):
        _cross_block(ours, encoder, f"causal_encoder.blocks.{i}", f"merger.{i}", "token_causal_attn", "token_cross_attn")
    ours.update(codebook_state(encoder[CODEBOOK_KEY], dead_code_threshold))
    for old, new in (("in_proj", "token_in"), ("norm", "decoder_norm"), ("decode_task_layer.0", "decoder_head.0"),
                     ("decode_task_layer.2", "decoder_head.2")):
        for leaf in ("weight", "bias"):
            ours[f"{new}.{leaf}"] = decoder[f"{old}.{leaf}"]
    ours["token_pos"], ours["queries"] = decoder["pos_embed"], decoder["query_embed"]
    for i in range(config["decoder_depth"]):
        _cross_block(ours, decoder, f"blocks.{i}", f"decoder.{i}", "self_attn", "cross_attn")
    return ours


def _training_defaults() -> dict:
    """The paper profile's VQ / selection settings (not in the weights), for fine-tuning the import."""
    from dataclasses import asdict

    from videolavit.schemas.sections import VisualTokenizerModelConfig

    return asdict(VisualTokenizerModelConfig())


def convert_visual_tokenizer(encoder: dict, decoder: dict, teacher_path: str, eva: dict, heads: int = PAPER_HEADS,
                             decoder_heads: int = PAPER_HEADS, where: str = ""):
    """(VisualTokenizer in eval mode, notes): the released encoder/decoder over the EVA saved at ``teacher_path``."""
    from videolavit.convert.motion_tokenizer import codebook_norm_range
    from videolavit.models.visual_tokenizer import VisualTokenizer

    arch = tokenizer_config(encoder, decoder, eva, heads, decoder_heads, where)
    model = VisualTokenizer(**{**_training_defaults(), **arch, "teacher_path": str(teacher_path)})
    ours = convert_tokenizer_state(encoder, decoder, arch, model.config["dead_code_threshold"])
    expected = {k for k in model.state_dict() if not k.startswith(("teacher.", "token_head."))}
    missing = sorted(expected - set(ours))
    if missing:  # a converter defect: every tensor but the training-only token head comes from the release
        raise RuntimeError(f"visual tokenizer conversion left {missing[:4]} unset")
    model.load_state_dict(ours, strict=False)
    notes = ["token_head (a training loss term of ours, not in the release) is freshly initialised"]
    if any(k.startswith("vit_proj.") for k in encoder):
        notes.append("vit_proj (the understanding LM's visual input) is not part of the tokenizer: see understanding_lm")
    if any(k.startswith(IMAGE_CONDITION_PREFIXES) for k in decoder):
        notes.append("unet_proj_1/2 and unet_attnpool belong to the image detokenizer's condition: not converted here")
    low, high = codebook_norm_range({"quantize.embedding.weight": encoder[CODEBOOK_KEY]})
    if high - low > 1e-3:  # the official quantizer uses distances, ours cosine: the same codes only for equal norms
        notes.append(f"codebook rows have L2 norms in [{low:.4f}, {high:.4f}]: codes may differ where distance and "
                     "cosine disagree")
    return model.eval(), notes
