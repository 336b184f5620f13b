"""Where the training processes come from and how many samples each takes: the launcher's topology (torchrun, SLURM,
or none) read from the variables Lightning's cluster environments read, and the micro batch and accumulation that
reach a stage's global batch (``<stage>.train.global_batch``) on that many processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from videolavit.errors import ConfigError

LAUNCHERS = ("none", "torchrun", "slurm")


@dataclass(frozen=True)
class Topology:
    """``num_nodes`` × ``devices_per_node`` processes, as the launcher started them (``none``: Lightning starts them)."""

    launcher: str
    num_nodes: int
    devices_per_node: int
    devices_setting: Any = None  # what the Trainer gets as ``devices`` (compute.devices as written when no launcher)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node

    def describe(self) -> str:
        return f"{self.launcher}: {self.num_nodes} node(s) × {self.devices_per_node} process(es)"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(str(env[key]).split("(")[0])
    except (KeyError, ValueError):
        raise ConfigError(f"launcher environment: {key}={env.get(key)!r} is not a number of processes") from None


def _slurm_interactive(env: Mapping[str, str]) -> bool:
    return env.get("SLURM_JOB_NAME") in ("bash", "interactive")  # Lightning's rule: such a job is not srun's


def _local_devices(compute: Any) -> int:
    devices = compute.devices
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in ("auto", -1, "-1"):
        if str(compute.accelerator) in ("gpu", "cuda", "auto"):
            import torch

            if torch.cuda.is_available():
                return torch.cuda.device_count()
            if str(compute.accelerator) != "auto":
                raise ConfigError("compute.devices=auto with compute.accelerator=gpu, but no GPU is visible: set "
                                  "compute.devices to the GPUs per node, or start under torchrun / srun")
        return 1
    try:
        return int(devices)
    except (TypeError, ValueError):
        raise ConfigError(f"compute.devices={devices!r} is not a device count, a list of devices or 'auto'") from None


def detect(compute: Any, env: Optional[Mapping[str, str]] = None) -> Topology:
    """The topology of this process's job, in Lightning's order of detection: SLURM (srun), then torchrun
    (TORCHELASTIC_RUN_ID), else ``compute.num_nodes`` × ``compute.devices`` started by Lightning itself."""
    env = os.environ if env is None else env
    if "SLURM_NTASKS" in env and not _slurm_interactive(env):
        tasks = _int(env, "SLURM_NTASKS")
        nodes = _int(env, "SLURM_NNODES") if "SLURM_NNODES" in env else 1
        if "SLURM_NTASKS_PER_NODE" in env:
            per_node = _int(env, "SLURM_NTASKS_PER_NODE")
        elif tasks % nodes == 0:
            per_node = tasks // nodes
        else:
            raise ConfigError(f"SLURM: {tasks} tasks over {nodes} nodes is uneven: use srun --ntasks-per-node")
        if per_node * nodes != tasks:
            raise ConfigError(f"SLURM: SLURM_NTASKS={tasks} is not SLURM_NNODES={nodes} × SLURM_NTASKS_PER_NODE={per_node}")
        gpus = env.get("SLURM_GPUS_ON_NODE")
        if gpus is not None and str(compute.accelerator) in ("gpu", "cuda") and _int(env, "SLURM_GPUS_ON_NODE") < per_node:
            raise ConfigError(f"SLURM: {per_node} tasks per node but SLURM_GPUS_ON_NODE={gpus}: one task per GPU "
                              "(srun --ntasks-per-node equal to --gpus-per-node)")
        return Topology("slurm", nodes, per_node, per_node)
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        world = _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        if local <= 0 or world % local:
            raise ConfigError(f"torchrun: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local} "
                              "(every node must run the same --nproc_per_node)")
        return Topology("torchrun", world // local, local, local)
    return Topology("none", int(compute.num_nodes), _local_devices(compute), compute.devices)


@dataclass(frozen=True)
class BatchPlan:
    """Per-process micro batch and accumulation of one stage on ``topology``; their product × world = global."""

    topology: Topology
    micro_batch: int
    accumulate_grad_batches: int
    global_batch_setting: Optional[int]

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulate_grad_batches * self.topology.world_size


def plan_batches(train_cfg: Any, topology: Topology, where: str) -> BatchPlan:
    """``train_cfg.global_batch`` null: ``batch_size`` × ``accumulate_grad_batches`` (or 1) per process. Set: the
    accumulation global / (micro × world), where micro is ``batch_size``, or global / world when that is smaller (more
    processes than the global batch needs at ``batch_size``); anything that does not divide is a ConfigError."""
    batch = int(train_cfg.batch_size)
    accumulate = getattr(train_cfg, "accumulate_grad_batches", None)
    global_batch = getattr(train_cfg, "global_batch", None)
    world = topology.world_size
    if batch <= 0:
        raise ConfigError(f"{where}.batch_size={batch} must be positive")
    if global_batch is None:
        return BatchPlan(topology, batch, int(accumulate or 1), None)
    global_batch = int(global_batch)
    if global_batch <= 0 or global_batch % world:
        raise ConfigError(
            f"{where}.global_batch={global_batch} is not a multiple of the world size {world} ({topology.describe()}): "
            f"run on a number of GPUs that divides it, or set {where}.global_batch=null and choose "
            f"{where}.accumulate_grad_batches yourself"
        )
    per_process = global_batch // world
    micro = batch if per_process % batch == 0 else per_process if per_process < batch else None
    if micro is None:
        divisors = [d for d in range(1, batch + 1) if per_process % d == 0]
        raise ConfigError(
            f"{where}.batch_size={batch} does not divide the {per_process} samples per process of "
            f"{where}.global_batch={global_batch} on {world} processes ({topology.describe()}): set "
            f"{where}.batch_size to one of {divisors} (or global_batch=null)"
        )
    derived = per_process // micro
    if accumulate is not None and int(accumulate) != derived:
        raise ConfigError(
            f"{where}.accumulate_grad_batches={accumulate} contradicts {where}.global_batch={global_batch} "
            f"(= {micro} per process × {world} processes × {derived}): leave accumulate_grad_batches null to derive "
            f"it, or set {where}.global_batch=null"
        )
    return BatchPlan(topology, micro, derived, global_batch)


def batch_plan(cfg: Any, stage: str, env: Optional[Mapping[str, str]] = None) -> BatchPlan:
    """The stage's :class:`BatchPlan` under the launcher this process runs in."""
    return plan_batches(getattr(cfg, stage).train, detect(cfg.compute, env), f"{stage}.train")


def micro_batch(cfg: Any, stage: str) -> int:
    """Samples per process per forward: what the stage's DataModule batches (see :func:`plan_batches`)."""
    return batch_plan(cfg, stage).micro_batch
