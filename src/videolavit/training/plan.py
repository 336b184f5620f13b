"""``videolavit plan STAGE``: the dry run of a training stage. Models built under FakeTensorMode (no memory, no GPU),
the launcher's topology and the stage's batch plan, optimizer groups as the stage builds them, per-GPU memory (weights,
gradients, AdamW state, and the activations of one micro batch measured as the peak of live tensor bytes over a fake
forward + backward) and a fits verdict, plus the pretrained parts still missing. Starts no process."""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Optional

from videolavit.training.required import missing_before_training
from videolavit.training.topology import batch_plan

PLAN_STAGES = ("motion_tokenizer", "visual_tokenizer", "detokenizer", "pretrain", "instruct")
SHARDED = ("fsdp", "deepspeed")
GB = 1e9


class LiveBytes:
    """A TorchDispatchMode counting the bytes of live tensor storages produced by ops, and their peak."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.live = self.peak = 0
                self._seen: Any = weakref.WeakSet()

            def _free(self, nbytes: int) -> None:
                self.live -= nbytes

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch
                from torch.utils._pytree import tree_leaves

                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        storage = t.untyped_storage()
                        if storage not in self._seen:
                            self._seen.add(storage)
                            self.live += storage.nbytes()
                            weakref.finalize(storage, self._free, storage.nbytes())
                self.peak = max(self.peak, self.live)
                return out

        return _Mode()


def activation_peak(build: Callable[[], Any], step: Callable[[Any], Any]) -> int:
    """Peak live bytes of ``step(model)`` (forward + backward) for a model made by ``build()`` under FakeTensorMode;
    gradients are dropped as soon as they accumulate (counted separately), so the peak is activations + workspace."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from unittest import mock

    with FakeTensorMode(allow_non_fake_inputs=True):
        # trunc_normal_ reads a scalar back (data-dependent under FakeTensorMode); fake weights need no values
        with mock.patch.object(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t):
            model = build()
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None))
        mode = LiveBytes()
        with mode:
            loss = step(model)
            loss.backward()
        del loss
    return int(mode.peak)


def _counts(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _decay_counts(named) -> dict[str, int]:
    from videolavit.training.optim import decay_groups

    groups = decay_groups(list(named), 1.0)
    return {"decay": len(groups[0]["params"]), "no_decay": len(groups[1]["params"])}


# ---- per stage: (run, build, step, groups) ------------------------------------------------------------------------


def _lm_runs(cfg, stage: str, micro: int, precision: str, depth: Optional[int] = None):
    import torch

    from videolavit.models.lm import build_lm
    from videolavit.training.lm import architecture, lm_groups, lm_param_roles
    from videolavit.vocab import PAPER_VOCAB

    arch = architecture(cfg)
    layers = int(arch.get("num_hidden_layers", 32))
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    seq = int(cfg.lm.seq_len)

    def build(n: int):
        def make():
            default = torch.get_default_dtype()
            torch.set_default_dtype(dtype)  # FSDP's mixed precision computes with bf16 copies of the weights
            try:
                model = build_lm(PAPER_VOCAB, {**arch, "num_hidden_layers": n})
            finally:
                torch.set_default_dtype(default)
            if cfg.lm.fsdp.activation_checkpointing and (getattr(cfg, stage).train.strategy or cfg.compute.strategy) == "fsdp":
                from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

                unit = type(model.model.layers[0])
                apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, unit))
            return model.train()
        return make

    def step(model):
        ids = torch.zeros(micro, seq, dtype=torch.long)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    with torch.device("meta"):
        full = build_lm(PAPER_VOCAB, arch)
    block = sum(p.numel() for p in full.model.layers[0].parameters())
    # FSDP's wrap units: the decoder blocks, and the root (embedding, head, final norm) unsharded through the step;
    # the running block and the prefetched next one gathered, one block's full gradient before its reduce-scatter
    units = {"gathered": full.num_parameters() - layers * block + 2 * block, "grad_unit": block}
    roles = lm_param_roles(full)
    groups = lm_groups(full, roles)
    opt = {"decay": len(groups[(False, True)]) + len(groups[(True, True)]),
           "no_decay": len(groups[(False, False)]) + len(groups[(True, False)])}
    # Depth cut: one and two decoder blocks measured, the rest scaled per block (the blocks are identical).
    def activations() -> tuple[int, str]:
        one, two = activation_peak(build(1), step), activation_peak(build(2), step)
        return one + (layers - 1) * (two - one), f"FakeTensorMode, depth cut 1 and 2 of {layers} blocks, per-block scaled"
    return [(stage, full, opt, activations, 0, units)]


def _motion_runs(cfg, micro: int, precision: str):
    import torch

    from videolavit.config import section_kwargs
    from videolavit.models.motion_tokenizer import MotionTokenizer

    kwargs = section_kwargs(cfg.motion_tokenizer.model)

    def make():
        model = MotionTokenizer(**kwargs).train()
        q = getattr(model, "quantizer", None)
        for buf in ("initted",):  # k-means init is data-dependent: mark it done (its memory is not the peak)
            for m in model.modules():
                if hasattr(m, buf):
                    getattr(m, buf).fill_(True)
        if q is not None:
            q.eval()  # EMA / dead-code updates are data-dependent host decisions, no autograd memory
        return model

    def step(model):
        motion = torch.zeros(micro, 2, kwargs["frames"], kwargs["height"], kwargs["width"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            out = model(motion)
            return (out["reconstruction"].float() - motion).pow(2).mean() + out["vq_loss"]

    with torch.device("meta"):
        full = MotionTokenizer(**kwargs)
    return [("motion_tokenizer", full, _decay_counts(full.named_parameters()),
             lambda: (activation_peak(make, step), "FakeTensorMode, full depth"), 0, None)]


# SD/SDXL's and SVD's VAE shapes (4 latent channels, 8× down-sampling): the stand-in a plan uses when vae_dir is not
# readable here; frozen, so only its no-grad encode adds to the activation peak.
_VAE = {"down_block_types": ["DownEncoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "latent_channels": 4}


def shape_vae(video: bool):
    import diffusers

    if video:
        vae = diffusers.AutoencoderKLTemporalDecoder(**_VAE)
    else:
        vae = diffusers.AutoencoderKL(**_VAE, up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.13025)
    return vae.requires_grad_(False).eval()


def _detokenizer_runs(cfg, micro: int, precision: str, kwargs: dict):
    """The detokenizers in latent space (a VAE of SD's / SVD's shape), one row per run the stage trains
    (``detokenizer.runs``: separate, one per model; joint, both in one module, their memory adding up). The frozen
    tokenizers the stage keeps on the GPU are counted apart."""
    import torch

    from videolavit.config import section_kwargs
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.models.visual_tokenizer import VisualTokenizer

    d = cfg.detokenizer
    parts = [str(m) for m in d.models]
    vt = cfg.visual_tokenizer.model
    cond_dim, cond_tokens = int(vt.width), (int(vt.image_size or 224) // int(vt.patch_size)) ** 2  # every patch kept
    mixed = precision.startswith("bf16")
    makers, steps, frozen = {}, {}, 0
    with torch.device("meta"):  # the frozen tokenizers the stage loads to the GPU (fp32), as shapes
        if "keyframe" in parts:
            frozen += sum(p.numel() for p in VisualTokenizer(**{**kwargs["visual_tokenizer"](cfg), "teacher_path": None}).parameters())
        if "video" in parts:
            frozen += sum(p.numel() for p in MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model)).parameters())
    if "keyframe" in parts:
        args = {**kwargs["keyframe"](cfg, cond_dim), "vae_dir": None}
        H, W = args["image_size"]
        makers["keyframe"] = lambda args=args: KeyframeDetokenizer(**args, vae=shape_vae(False)).train()

        def keyframe_step(model, H=H, W=W):
            return model.training_loss(torch.zeros(micro, 3, H, W), torch.zeros(micro, cond_tokens, cond_dim))
        steps["keyframe"] = keyframe_step
    if "video" in parts:
        args = {**kwargs["video"](cfg), "vae_dir": None}
        T, H, W = args["frames"], args["height"], args["width"]
        h, w = int(cfg.video.motion_height), int(cfg.video.motion_width)
        makers["video"] = lambda args=args: VideoDetokenizer(**args, vae=shape_vae(True)).train()

        def video_step(model, T=T, H=H, W=W, h=h, w=w):
            return model.training_loss(torch.zeros(micro, T, 3, H, W), torch.zeros(micro, 3, H, W),
                                       torch.zeros(micro, 2, T, h, w))
        steps["video"] = video_step

    from videolavit.training.detokenizer import run_groups

    runs = []
    for group in run_groups(parts, d.runs):  # the runs the stage trains (detokenizer.runs: separate | joint)
        def make(group=group):  # the module the run trains: one model, or both side by side
            return torch.nn.ModuleDict({name: makers[name]() for name in group})

        def step(model, group=group):  # one micro batch: the sum of the run's losses, every graph alive at backward
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                return sum(steps[name](model[name]) for name in group)

        with torch.device("meta"):
            model = make()
        named = []
        for name in group:
            trainable = {id(p) for p in model[name].trainable_parameters()}
            for n, p in model[name].named_parameters():
                p.requires_grad_(id(p) in trainable)
                if p.requires_grad:
                    named.append((n, p))
        note = "FakeTensorMode, full depth, SD/SVD-shaped VAE" + (", both models in one run" if len(group) > 1 else "")
        runs.append(("+".join(group), model, _decay_counts(named),
                     lambda make=make, step=step, note=note: (activation_peak(make, step), note), frozen, None))
    return runs


def _static_runs(cfg, stage: str, kwargs: dict):
    """Stages whose fake forward is not wired here yet (the visual tokenizer): parameter counts and static memory.
    ``kwargs``: the stages' model-argument functions (``visual_tokenizer``, ``keyframe``, ``video``), from the CLI."""
    import torch

    from videolavit.models.visual_tokenizer import VisualTokenizer

    with torch.device("meta"):
        model = VisualTokenizer(**{**kwargs["visual_tokenizer"](cfg), "teacher_path": None})
    return [("visual_tokenizer", model, _decay_counts(model.named_parameters()), None, 0, None)]


# CUDA context, NCCL and cuBLAS workspaces, allocator slack: an estimate, not measured here (no GPU)
RUNTIME_GB = 2.0


def strategy_buffers(strategy: str, precision: str, trainable: int, units: Optional[dict]) -> float:
    """Bytes a strategy adds per GPU: DDP's gradient buckets (a second fp32 copy of the gradients: Lightning leaves
    ``gradient_as_bucket_view`` off); FSDP / ZeRO's gathered wrap units in the compute dtype (``units``: parameters
    gathered at once and the largest unit's gradient; without them the whole model is one unit, as Lightning wraps
    a model without an auto-wrap policy)."""
    if strategy.startswith("ddp"):
        return 4.0 * trainable
    if any(strategy.startswith(s) for s in SHARDED):
        width = 2 if precision.startswith(("bf16", "16")) else 4
        units = units or {"gathered": trainable, "grad_unit": trainable}
        return float(width * (units["gathered"] + units["grad_unit"]))
    return 0.0


def plan_stage(cfg: Any, stage: str, gpu_mem_gb: float = 80.0, env=None, model_kwargs: Optional[dict] = None) -> list[dict]:
    """One dict per training run of ``stage`` (the detokenizer: one per model when run separately, else joint)."""
    bp = batch_plan(cfg, stage, env)
    train = getattr(cfg, stage).train
    strategy = str(train.strategy or cfg.compute.strategy)
    precision = str(train.precision or cfg.compute.precision)
    if stage in ("pretrain", "instruct"):
        runs = _lm_runs(cfg, stage, bp.micro_batch, precision)
    elif stage == "motion_tokenizer":
        runs = _motion_runs(cfg, bp.micro_batch, precision)
    elif stage == "detokenizer":
        runs = _detokenizer_runs(cfg, bp.micro_batch, precision, model_kwargs or {})
    else:
        runs = _static_runs(cfg, stage, model_kwargs or {})
    missing = missing_before_training(cfg, stage, check_files=False)
    world = bp.topology.world_size
    shard = world if any(strategy.startswith(s) for s in SHARDED) else 1
    out = []
    for run, model, groups, activations, frozen, units in runs:
        total, trainable = _counts(model)
        start = time.perf_counter()
        try:
            act, method = activations() if activations else (None, "not measured for this model yet")
        except Exception as exc:  # an op FakeTensorMode cannot run: say so instead of guessing
            act, method = None, f"not measured: {type(exc).__name__}: {str(exc)[:120]}"
        memory = {
            "weights": 4 * total / shard / GB,  # fp32 master weights
            "grads": 4 * trainable / shard / GB,
            "optimizer": 8 * trainable / shard / GB,  # AdamW exp_avg + exp_avg_sq, fp32
            "activations": act / GB if act is not None else None,
            "strategy_buffers": strategy_buffers(strategy, precision, trainable, units) / GB,
            "frozen": 4 * frozen / GB,  # frozen tokenizers on the GPU (the detokenizer's conditions)
            "runtime": RUNTIME_GB,
        }
        memory["total"] = sum(v for v in memory.values() if v is not None) if act is not None else None
        fits = (memory["total"] <= gpu_mem_gb) if memory["total"] is not None else None
        advice = []
        if fits is False and stage == "detokenizer" and "+" in run:
            advice.append("train the detokenizers as separate runs: detokenizer.runs=separate")
        out.append({
            "stage": stage, "run": run, "launcher": bp.topology.launcher, "world_size": world,
            "num_nodes": bp.topology.num_nodes, "devices_per_node": bp.topology.devices_per_node,
            "micro_batch": bp.micro_batch, "accumulate_grad_batches": bp.accumulate_grad_batches,
            "global_batch": bp.global_batch, "strategy": strategy, "precision": precision,
            "params_total": total, "params_trainable": trainable, "params_frozen_elsewhere": frozen,
            "optimizer_groups": groups,
            "memory_gb": {k: (round(v, 2) if v is not None else None) for k, v in memory.items()},
            "activations_method": method, "measure_seconds": round(time.perf_counter() - start, 2),
            "gpu_mem_gb": float(gpu_mem_gb), "fits": fits, "advice": advice,
            "missing_before_training": [x for x in missing if stage != "detokenizer"
                                        or any(x.startswith(f"detokenizer.{m}.") for m in run.split("+"))],
        })
    return out


def format_plan(row: dict) -> str:
    m = row["memory_gb"]
    verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown (activations not measured)"}[row["fits"]]
    lines = [
        f"{row['stage']} / {row['run']}: {row['launcher']} {row['num_nodes']} node(s) × {row['devices_per_node']} = "
        f"{row['world_size']} processes; micro batch {row['micro_batch']} × accumulate {row['accumulate_grad_batches']} "
        f"× {row['world_size']} = global {row['global_batch']}; {row['strategy']}, {row['precision']}",
        f"  parameters {row['params_total']:,} ({row['params_trainable']:,} trainable); optimizer groups "
        f"decay {row['optimizer_groups']['decay']}, no decay {row['optimizer_groups']['no_decay']}",
        f"  per GPU (GB): weights {m['weights']}, grads {m['grads']}, optimizer {m['optimizer']}, activations "
        f"{m['activations']} ({row['activations_method']}), {row['strategy']} buffers {m['strategy_buffers']}, frozen "
        f"{m['frozen']}, runtime {m['runtime']} (estimate), total {m['total']} vs {row['gpu_mem_gb']:g}: {verdict}",
    ]
    lines += [f"  advice: {x}" for x in row.get("advice", [])]
    lines += [f"  missing before training: {x}" for x in row["missing_before_training"]]
    return "\n".join(lines)
