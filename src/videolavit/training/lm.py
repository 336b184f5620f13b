"""LM training shared by pretrain and instruct: the next-token LightningModule, its optimizer, strategy (DDP/FSDP),
throughput, resume and the LM built from config (paper §3.3)."""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from videolavit.errors import ConfigError, require_path
from videolavit.models.lm import modality_loss_sums
from videolavit.training.optim import adamw_with_cosine
from videolavit.training.checkpoints import fit as fit_from
from videolavit.training.checkpoints import verify_checkpoint
from videolavit.training.trainer import TrainLoss, checkpoint_dir, make_trainer, resume_checkpoint
from videolavit.vocab import Vocab

MODALITIES = ("text", "visual", "motion")


class LanguageModelModule(TrainLoss, L.LightningModule):
    """Next-token loss of a transformers causal LM over the labels of each batch (IGNORE = no loss), per modality."""

    def __init__(self, model, vocab: Vocab, optim: dict, max_steps: int):
        super().__init__()
        self.model, self.vocab = model, vocab
        # Recorded before any strategy wraps the model: under FSDP every parameter becomes a 1-D shard.
        self.param_roles = lm_param_roles(model)
        self.optim, self.max_steps = dict(optim), int(max_steps)
        self._val: dict[str, list[float]] = {}
        self._ids_checked = False
        self._modality_last: dict[str, torch.Tensor] = {}

    def loss_sums(self, batch: dict, check_ids: bool = True) -> tuple[torch.Tensor, dict]:
        logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits  # [B, L, V]
        sums = modality_loss_sums(logits, batch["labels"], self.vocab, check_ids=check_ids)
        count = sum(n for _, n in sums.values())
        total = sum(s for s, _ in sums.values())
        return total / count.clamp(min=1), sums

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, sums = self.loss_sums(batch, check_ids=not self._ids_checked)
        self._ids_checked = True
        logs = {"train/loss": loss}
        for name, (total, count) in sums.items():
            # a batch without this modality logs its last value (decided on the device: no host sync)
            last = self._modality_last.get(name, torch.full_like(total, float("nan")))
            self._modality_last[name] = logs[f"train/loss_{name}"] = torch.where(
                count > 0, total.detach() / count.clamp(min=1), last)
        self.log_dict(logs, batch_size=batch["input_ids"].shape[0])
        self.remember_train_loss(loss)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {name: [0.0, 0.0] for name in MODALITIES}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, sums = self.loss_sums(batch)
        for name, (total, count) in sums.items():
            self._val[name][0] += float(total)
            self._val[name][1] += int(count)

    def on_validation_epoch_end(self) -> None:
        metrics = token_weighted(self._val, self.all_reduce_sum)
        self.log_dict({k: v for k, v in metrics.items() if math.isfinite(v)}, sync_dist=False)
        self.val_metrics = metrics

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.trainer is None or self.trainer.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(tensor, reduce_op="sum").tolist()

    def configure_optimizers(self):
        return lm_optimizer(self.model, self.optim, self.max_steps, self.param_roles)


def token_weighted(sums: dict[str, list[float]], reduce=lambda v: v) -> dict[str, float]:
    """``val/loss`` and ``val/loss_<modality>`` from per-modality [loss sum, target count] (summed over ranks)."""
    names = list(sums)
    flat = reduce([x for name in names for x in sums[name]])
    totals = {name: (flat[2 * i], flat[2 * i + 1]) for i, name in enumerate(names)}
    count = sum(n for _, n in totals.values())
    out = {"val/loss": sum(s for s, _ in totals.values()) / count if count else float("nan")}
    for name, (total, n) in totals.items():
        out[f"val/loss_{name}"] = total / n if n else float("nan")
    return out


# What wrappers insert into parameter names (FSDP1 use_orig_params, activation checkpointing, torch.compile).
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def lm_param_roles(model) -> dict[str, tuple[bool, bool]]:
    """Parameter name → (embedding or output head, decays) from the unwrapped model's shapes: matrices decay, 1-D
    (norms, biases) do not. Call it before wrapping; :func:`lm_optimizer` looks the wrapped names up here."""
    io_params = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                 for p in m.parameters()}
    return {clean_name(name): (id(p) in io_params, p.ndim >= 2) for name, p in model.named_parameters()}


def lm_groups(model, roles: dict[str, tuple[bool, bool]]) -> dict[tuple[bool, bool], list]:
    """Trainable parameters of ``model`` (wrapped or not) by (io, decay), looked up by name in ``roles``."""
    groups: dict[tuple[bool, bool], list] = {(io, decay): [] for io in (False, True) for decay in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = clean_name(name)
        if key not in roles:
            raise RuntimeError(f"LM parameter {name!r} was not recorded before wrapping (known: {len(roles)} names)")
        groups[roles[key]].append(p)
    return groups


def lm_optimizer(model, optim: dict, max_steps: int, roles: Optional[dict] = None) -> dict:
    """AdamW: blocks at ``lr``; embedding + output head (the new multimodal rows) at ``lr_other``; no decay on 1-D
    parameters, judged from ``roles`` (:func:`lm_param_roles` of the unwrapped model; default: ``model`` as it is)."""
    lr = float(optim["lr"])
    lr_other = float(optim.get("lr_other") or lr)
    groups = lm_groups(model, roles if roles is not None else lm_param_roles(model))
    param_groups = [
        {"params": params, "lr": lr_other if io else lr, "weight_decay": float(optim["weight_decay"]) if decay else 0.0}
        for (io, decay), params in groups.items() if params
    ]
    return adamw_with_cosine(param_groups, optim, max_steps)


class TokenThroughput(L.Callback):
    """Training tokens per second (non-padding ids of this process) and peak memory; printed and logged."""

    def __init__(self, warmup_steps: int = 1):
        self.warmup_steps = int(warmup_steps)
        self.tokens, self.seconds, self.batches = 0, 0.0, 0
        self._last: Optional[float] = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.batches += 1
        # Wall time between batch ends covers data, forward, backward and optimizer; the first batches warm up.
        if self._last is not None and self.batches > self.warmup_steps:
            self.tokens = self.tokens + batch["lengths"].sum()  # a device tensor: read at log time, not per step
            self.seconds += now - self._last
        self._last = now
        if self.seconds and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            module.log_dict({"train/tokens_per_second": self.tokens_per_second, "train/peak_memory_gb": peak_memory_gb()})

    @property
    def tokens_per_second(self) -> float:
        return float(self.tokens) / self.seconds if self.seconds else float("nan")


def peak_memory_gb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


# ---- building -----------------------------------------------------------------------------------------------------


def architecture(cfg: DictConfig) -> dict:
    """``lm.model.config`` as transformers kwargs (unset keys left to transformers' defaults)."""
    arch = OmegaConf.to_container(cfg.lm.model.config, resolve=True)
    return {k: v for k, v in arch.items() if v is not None}


def build_stage_lm(cfg: DictConfig, vocab: Vocab, pretrained_path: Optional[str] = None):
    from videolavit.models.lm import build_lm

    m = cfg.lm.model
    if pretrained_path is None and OmegaConf.is_missing(m, "pretrained_path"):
        raise ConfigError("lm.model.pretrained_path must name a local LM checkpoint directory for this profile "
                          "(paper: Llama-2-7B or LaVIT-7B in transformers format), or null to train from lm.model.config")
    model = build_lm(vocab, architecture(cfg), pretrained_path=pretrained_path or m.pretrained_path, dtype=m.dtype,
                     noise_scale=float(m.noise_scale), seed=int(cfg.seed))
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and int(cfg.lm.seq_len) > int(limit):
        raise ConfigError(f"lm.seq_len={cfg.lm.seq_len} exceeds the LM's max_position_embeddings={limit}")
    return model


def build_strategy(cfg: DictConfig, train_cfg: Any, model) -> Any:
    """The strategy name from config, or for ``fsdp`` a Lightning FSDPStrategy wrapping the model's decoder blocks."""
    name = train_cfg.strategy or cfg.compute.strategy
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import FSDPStrategy

    f = cfg.lm.fsdp
    wanted = list(f.wrap_modules or getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not classes:
        raise ConfigError(f"lm.fsdp.wrap_modules {wanted} name no module class of {type(model).__name__}")
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if f.activation_checkpointing else None,
        sharding_strategy=str(f.sharding_strategy),
        state_dict_type=str(f.state_dict_type),
        cpu_offload=bool(f.cpu_offload),
    )


def trainer_overrides(cfg: DictConfig, train_cfg: Any, model) -> dict:
    """The LM's strategy; devices, nodes and accumulation come from the launcher (make_trainer, training/topology.py)."""
    return {"strategy": build_strategy(cfg, train_cfg, model)}


def resume_path(cfg: DictConfig, stage: str, resume: str) -> Optional[str]:
    """Like ``resume_checkpoint``, and also a sharded FSDP ``last.ckpt`` (a directory)."""
    last = checkpoint_dir(cfg, stage) / "last.ckpt"
    if resume == "auto" and last.is_dir():
        verify_checkpoint(last, cfg, stage)
        return str(last)
    return resume_checkpoint(cfg, stage, resume)


def full_state_dict(trainer, module: LanguageModelModule) -> Optional[dict]:
    """The LM's full weights after training: None when ``module.model`` holds them already (not FSDP)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    root = trainer.strategy.model
    with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
        state = root.state_dict()
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def load_stage_tokenizer(cfg: DictConfig, vocab: Vocab):
    from videolavit.data.text_tokenizer import load_text_tokenizer

    path = require_path(Path(cfg.paths.tokens) / "text_tokenizer", "text tokenizer of the token shards",
                        "Run `videolavit tokenize` first.")
    return load_text_tokenizer(path, vocab.text_size)


def fit_lm(cfg: DictConfig, stage: str, model, vocab: Vocab, datamodule, callbacks: Optional[list] = None):
    """Train ``model`` with the stage's optim/train config; returns (trainer, module, throughput callback)."""
    stage_cfg = getattr(cfg, stage)
    train_cfg = stage_cfg.train
    model.train()  # from_pretrained returns eval mode
    module = LanguageModelModule(model, vocab, OmegaConf.to_container(stage_cfg.optim, resolve=True), int(train_cfg.max_steps))
    throughput = TokenThroughput()
    trainer = make_trainer(cfg, stage, train_cfg, callbacks=[throughput, *(callbacks or [])],
                           **trainer_overrides(cfg, train_cfg, model))
    fit_from(trainer, module, datamodule, resume_path(cfg, stage, train_cfg.resume), stage)
    return trainer, module, throughput


def evaluate_loss(model, loader, vocab: Vocab) -> dict[str, float]:
    """Token-weighted ``val/loss`` and per-modality losses of ``model`` over every batch of ``loader``."""
    sums = {name: [0.0, 0.0] for name in MODALITIES}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in loader:
            logits = model(input_ids=batch["input_ids"].to(device), use_cache=False).logits
            for name, (total, count) in modality_loss_sums(logits, batch["labels"].to(device), vocab).items():
                sums[name][0] += float(total)
                sums[name][1] += int(count)
    model.train(was_training)
    return token_weighted(sums)


def run_summary(stage: str, trainer, module, throughput: TokenThroughput) -> dict[str, float]:
    world = int(trainer.world_size)
    return {
        "global_step": float(trainer.global_step),
        "world_size": float(world),
        "train/loss": module.last_train_loss,
        "train/tokens_per_second": throughput.tokens_per_second,
        "train/tokens_per_second_global": throughput.tokens_per_second * world,
        "train/peak_memory_gb": peak_memory_gb(),
    }


def print_summary(stage: str, metrics: dict, out_dir: Path) -> None:
    print(
        f"{stage}: step {int(metrics['global_step'])}, {metrics['train/tokens_per_second']:.0f} tokens/s, "
        f"peak memory {metrics['train/peak_memory_gb']:.2f} GB, val/loss {metrics.get('val/loss', float('nan')):.4f} "
        f"→ {out_dir}"
    )
