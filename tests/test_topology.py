"""Topology from the launcher (torchrun, SLURM) and accumulation from each stage's global batch (training/topology.py)."""

from __future__ import annotations

import pytest

from videolavit.config import load_config
from videolavit.errors import ConfigError
from videolavit.training.topology import batch_plan, detect, plan_batches

LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "RANK", "LOCAL_RANK",
                 "MASTER_ADDR", "MASTER_PORT")


def torchrun_env(world: int, per_node: int = 8, rank: int = 0) -> dict:
    """What ``torchrun --nnodes world/per_node --nproc_per_node per_node`` sets in each process."""
    return {"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": str(rank // per_node), "RANK": str(rank), "LOCAL_RANK": str(rank % per_node),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def slurm_env(nodes: int, per_node: int = 8, rank: int = 0) -> dict:
    """What ``srun --nodes N --ntasks-per-node 8 --gpus-per-node 8`` sets in each task."""
    return {"SLURM_NTASKS": str(nodes * per_node), "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_GPUS_ON_NODE": str(per_node),
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node), "SLURM_NODEID": str(rank // per_node),
            "SLURM_JOB_ID": "1234", "SLURM_JOB_NAME": "videolavit", "SLURM_NODELIST": "node[001-016]"}


ENVIRONMENTS = {
    "torchrun64": (torchrun_env(64), 8), "torchrun128": (torchrun_env(128), 16),
    "slurm8x8": (slurm_env(8), 8), "slurm16x8": (slurm_env(16), 16),
}
PAPER_GLOBAL = {"motion_tokenizer": 512, "detokenizer": 128, "pretrain": 2048, "visual_tokenizer": 2048, "instruct": 128}


@pytest.fixture()
def launcher(monkeypatch):
    """Set one simulated launcher's variables in os.environ (Lightning reads them there), clearing the others."""
    for key in LAUNCHER_VARS + tuple(slurm_env(1)):
        monkeypatch.delenv(key, raising=False)

    def apply(env: dict) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return apply


@pytest.fixture(scope="module")
def paper():
    return load_config(profile="paper", params_file=None)


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_topology_and_paper_global_batch_under_each_launcher(name, paper):
    env, nodes = ENVIRONMENTS[name]
    topo = detect(paper.compute, env)
    launcher = "torchrun" if name.startswith("torchrun") else "slurm"
    assert (topo.launcher, topo.num_nodes, topo.devices_per_node, topo.world_size) == (launcher, nodes, 8, nodes * 8)
    for stage, global_batch in PAPER_GLOBAL.items():
        plan = batch_plan(paper, stage, env)
        assert plan.global_batch == global_batch, stage
        assert plan.micro_batch <= int(getattr(paper, stage).train.batch_size)
    lm = batch_plan(paper, "pretrain", env)
    assert (lm.micro_batch, lm.accumulate_grad_batches) == ((4, 8) if nodes == 8 else (4, 4))


def test_no_launcher_uses_compute_devices_and_nodes(paper):
    topo = detect(paper.compute, {})
    assert (topo.launcher, topo.num_nodes, topo.devices_per_node) == ("none", 1, 8)
    assert batch_plan(paper, "pretrain", {}).accumulate_grad_batches == 64  # 2048 / (4 × 8)


def test_no_profile_hard_codes_nodes():
    for profile in ("tiny", "paper"):
        cfg = load_config(profile=profile, params_file=None)
        for stage in PAPER_GLOBAL:
            assert "num_nodes" not in getattr(cfg, stage).train and "devices" not in getattr(cfg, stage).train


def test_global_batch_that_does_not_divide_is_a_config_error(paper):
    with pytest.raises(ConfigError, match=r"pretrain.train.global_batch=2048 is not a multiple of the world size 48"):
        batch_plan(paper, "pretrain", torchrun_env(48))
    cfg = load_config(profile="paper", params_file=None, overrides=["pretrain.train.batch_size=3"])
    with pytest.raises(ConfigError, match=r"pretrain.train.batch_size=3 does not divide the 32 samples per process"):
        batch_plan(cfg, "pretrain", torchrun_env(64))
    cfg = load_config(profile="paper", params_file=None, overrides=["pretrain.train.accumulate_grad_batches=4"])
    with pytest.raises(ConfigError, match=r"accumulate_grad_batches=4 contradicts pretrain.train.global_batch=2048"):
        batch_plan(cfg, "pretrain", torchrun_env(64))


def test_tiny_keeps_its_accumulation():
    tiny = load_config(profile="tiny", params_file=None)
    plan = plan_batches(tiny.motion_tokenizer.train, detect(tiny.compute, {}), "motion_tokenizer.train")
    assert (plan.micro_batch, plan.accumulate_grad_batches, plan.global_batch_setting) == (
        int(tiny.motion_tokenizer.train.batch_size), 1, None)


def test_slurm_more_tasks_than_gpus_is_an_error(paper):
    env = {**slurm_env(8), "SLURM_GPUS_ON_NODE": "4"}
    with pytest.raises(ConfigError, match="SLURM_GPUS_ON_NODE=4"):
        detect(paper.compute, env)


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
@pytest.mark.parametrize("stage", ["motion_tokenizer", "detokenizer", "pretrain"])
def test_readme_launch_builds_the_trainer(name, stage, launcher, tmp_path):
    """The README's torchrun / srun commands: the Trainer accepts the launcher's world (on the old code the paper
    profile's num_nodes=16, or compute.num_nodes=1 against 8 nodes, raised ValueError here) and accumulates to the
    paper's global batch. CPU accelerator and DDP stand in for the GPUs; no process group is started."""
    from videolavit.training.trainer import make_trainer

    env, nodes = ENVIRONMENTS[name]
    launcher(env)
    cfg = load_config(profile="paper", params_file=None, overrides=[
        "compute.accelerator=cpu", f"{stage}.train.strategy=ddp", f"paths.runs={tmp_path}", "tracking.enabled=false"])
    trainer = make_trainer(cfg, stage, getattr(cfg, stage).train, enable_progress_bar=False)
    assert (trainer.num_nodes, trainer.world_size) == (nodes, nodes * 8)
    # fit's first act: the launcher checks devices × nodes against the environment (where the old code raised)
    assert trainer.strategy.launcher.launch(lambda: "launched", trainer=trainer) == "launched"
    micro = batch_plan(cfg, stage).micro_batch
    assert micro * trainer.accumulate_grad_batches * trainer.world_size == PAPER_GLOBAL[stage]
