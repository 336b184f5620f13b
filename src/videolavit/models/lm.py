"""The unified language model: any transformers causal LM whose vocabulary is extended to the layout of ``vocab.py``.

The model is built from a config (tiny profile, or a paper-size model on the ``meta`` device) or loaded from a local
checkpoint directory (Llama-2-7B, LaVIT-7B). Either way its input embedding and output head are resized to
``vocab.size`` rows; rows the checkpoint already had are kept bit for bit.

New rows start at the mean of the existing rows plus small Gaussian noise (Hewitt 2021, "Initializing new word
embeddings"; the same idea as transformers' ``mean_resizing``). With the mean, a new id's logit h·mean is the average of
the old logits, so ~17k fresh ids neither swamp the softmax nor change text predictions much before training; the noise
(``noise_scale`` × the per-dimension std of the old rows) only breaks the symmetry between new rows. transformers'
version samples from the full covariance (a 4096×4096 matrix and its Cholesky on every load); a diagonal covariance is
as good for this purpose, works on ``meta`` and bf16 weights, and is reproducible from ``seed``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.vocab import Vocab

IGNORE_INDEX = -100


def paper_llama2_7b_config() -> dict:
    """Llama-2-7B shapes (text vocabulary of 32000 before resizing to the unified vocabulary)."""
    return {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"lm dtype {dtype!r} is not a torch dtype (use float32, bfloat16 or float16)")
    return resolved


def _config_from_dict(vocab: Vocab, config: dict):
    from transformers import AutoConfig

    kwargs = dict(config)
    model_type = kwargs.pop("model_type", "llama")
    kwargs.pop("attn_implementation", None)
    kwargs.setdefault("vocab_size", vocab.text_size)
    try:
        default = AutoConfig.for_model(model_type)
    except ValueError:
        raise ConfigError(f"lm config: unknown model_type {model_type!r} (a transformers type, e.g. 'llama')") from None
    # transformers configs store unknown keys silently; a typo ('hidden_szie') must not train the default size.
    valid = set(default.to_dict())
    for cls in type(default).__mro__:
        if "__init__" in vars(cls):
            valid |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(f"lm config: unknown key(s) {unknown} for model_type {model_type!r}; valid: {sorted(valid)}")
    return AutoConfig.for_model(model_type, **kwargs)


def _load_pretrained(path: str, dtype: torch.dtype | None, attn_implementation: str | None):
    from transformers import AutoModelForCausalLM

    local = Path(path).expanduser()
    if not local.is_dir():
        raise MissingArtifactError(
            f"lm pretrained_path {path!r} is not a local directory; models are never downloaded "
            "(save one with save_pretrained, or point the key at a local Llama checkpoint)"
        )
    if not (local / "config.json").is_file():
        raise MissingArtifactError(f"lm pretrained_path {str(local)!r} has no config.json (not a transformers model)")
    from videolavit.pretrained import LOCAL, load_error

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(str(local), **LOCAL, **kwargs)
    except Exception as err:  # OSError/ValueError, a refused pickle (UnpicklingError): named, not a traceback
        raise load_error(err, local, "lm.model.pretrained_path") from None


@torch.no_grad()
def _init_new_rows(weight: torch.Tensor, old_rows: int, noise_scale: float, generator: torch.Generator) -> None:
    """Rows ``old_rows:`` of ``weight`` [V, D] ← mean of rows ``:old_rows`` + noise_scale·std·N(0, 1)."""
    if weight.is_meta or weight.shape[0] <= old_rows:
        return
    old = weight[:old_rows].float()  # [V_old, D]
    mean = old.mean(0)  # [D]
    std = old.std(0) if old_rows > 1 else torch.zeros_like(mean)  # [D]
    noise = torch.randn(weight.shape[0] - old_rows, weight.shape[1], generator=generator)  # [V_new, D]
    new = mean + noise_scale * std * noise.to(weight.device)
    weight[old_rows:] = new.to(weight.dtype)


def resize_to_vocab(model, vocab: Vocab, noise_scale: float = 0.01, seed: int = 0):
    """Grow the input embedding (and an untied output head) to ``vocab.size`` rows, mean-initialising the new ones."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    if old_rows > vocab.size:
        raise ConfigError(
            f"the LM has {old_rows} embedding rows but the unified vocabulary has only {vocab.size} ids "
            f"(text {vocab.text_size} + 4 special + {vocab.visual_codes} visual + {vocab.motion_codes} motion); "
            "shrinking would drop trained rows: check vocab.text_size against the checkpoint's tokenizer"
        )
    output = model.get_output_embeddings()
    old_out_rows = output.weight.shape[0] if output is not None else old_rows
    if old_rows < vocab.size:
        # mean_resizing=False: transformers' full-covariance sampling is replaced by _init_new_rows (module docstring).
        model.resize_token_embeddings(vocab.size, mean_resizing=False)
        generator = torch.Generator().manual_seed(seed)
        _init_new_rows(model.get_input_embeddings().weight, old_rows, noise_scale, generator)
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            _init_new_rows(output.weight, old_out_rows, noise_scale, generator)
    model.config.vocab_size = vocab.size
    return model


def build_lm(
    vocab: Vocab,
    config: dict | None = None,
    pretrained_path: str | None = None,
    dtype=None,
    noise_scale: float = 0.01,
    seed: int = 0,
):
    """A transformers causal LM over the unified vocabulary: from a local checkpoint, else from a config dict.

    ``config``: transformers config keys (``model_type`` defaults to ``llama``; ``vocab_size`` to ``vocab.text_size``);
    with ``pretrained_path`` the checkpoint's own config wins and only ``config["attn_implementation"]`` is used.
    Build inside ``with torch.device("meta"):`` to get paper-size shapes without memory.
    """
    dtype = _resolve_dtype(dtype)
    if config is not None and not isinstance(config, dict):  # an OmegaConf section straight from the stage config
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    attn = (config or {}).get("attn_implementation")
    if pretrained_path:
        model = _load_pretrained(str(pretrained_path), dtype, attn)
    elif config:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(_config_from_dict(vocab, config), attn_implementation=attn)
        if dtype is not None:
            model = model.to(dtype)
    else:
        raise ConfigError("build_lm needs lm.pretrained_path (a local checkpoint) or lm.config (a model config)")
    return resize_to_vocab(model, vocab, noise_scale=noise_scale, seed=seed)


# ---- per-modality loss ----------------------------------------------------------------------------------------------


def modality_loss_sums(
    logits: torch.Tensor, labels: torch.Tensor, vocab: Vocab, check_ids: bool = True
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Summed next-token loss and target count (0-d tensors on the logits' device) per modality, for token-weighted
    averaging over batches. Masked sums, no boolean indexing: nothing waits for the device except ``check_ids``."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, L, V], labels [B, L]; got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if logits.shape[-1] < vocab.size:
        raise ValueError(f"logits have {logits.shape[-1]} classes, fewer than the vocabulary's {vocab.size} ids")
    # labels are aligned with input_ids (the transformers convention): position t predicts labels[t + 1].
    targets = labels[:, 1:].reshape(-1)  # [B·(L-1)]
    valid = targets != IGNORE_INDEX
    if check_ids:  # a host sync: the training step checks its first batch only
        bad = valid & ((targets < 0) | (targets >= vocab.size))
        if bad.any():
            raise ValueError(f"label id {int(targets[bad][0])} is outside the vocabulary of {vocab.size} ids")
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # [B·(L-1)], 0 where ignored
    group = (targets >= vocab.text_size).long() + (targets >= vocab.mov_start).long()  # 0 text, 1 visual, 2 motion
    out = {}
    for index, name in enumerate(("text", "visual", "motion")):
        sel = valid & (group == index)
        out[name] = (per_token.masked_fill(~sel, 0.0).sum(), sel.sum())
    return out


def loss_by_modality(logits: torch.Tensor, labels: torch.Tensor, vocab: Vocab) -> dict[str, torch.Tensor]:
    """Mean next-token loss over the targets of each modality: ``text``, ``visual``, ``motion``.

    ``visual`` covers the visual codes and [IMG]/[/IMG]; ``motion`` the motion codes and [MOV]/[/MOV] (the same split
    as ``Vocab.modality``), so closing a span on time counts toward its modality. NaN where a modality has no target.
    """
    return {
        name: (total / count) if count else torch.tensor(float("nan"), device=logits.device)
        for name, (total, count) in modality_loss_sums(logits, labels, vocab).items()
    }
