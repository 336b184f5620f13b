"""Per-rank RNG streams that resume exactly per rank (issue 18 item 7): 2 gloo processes, CPU, ResumableRNG's hooks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from videolavit.training.trainer import ResumableRNG

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(1234)  # one seed on every rank, as seed_everything(cfg.seed) does
        module = ResumableRNG()
        module.on_train_batch_start(None, 0)
        first = torch.randn(4)  # the first step's noise
        checkpoint: dict = {}
        module.on_save_checkpoint(checkpoint)  # every rank joins; rank 0 writes the file, as Lightning does
        if rank == 0:
            torch.save(checkpoint, f"{out}/ckpt.pt")
        continuation = torch.randn(4)  # what the uninterrupted run draws next
        dist.barrier()

        # A fresh process of the resumed run: same seed, scrambled stream, checkpoint read from rank 0's file.
        torch.manual_seed(1234)
        torch.rand(17)
        resumed = ResumableRNG()
        resumed.on_load_checkpoint(torch.load(f"{out}/ckpt.pt", weights_only=True))
        resumed.on_train_batch_start(None, 0)
        after_resume = torch.randn(4)
        torch.save({"first": first, "continuation": continuation, "resumed": after_resume}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_rank_streams_differ_and_resume_per_rank(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(world)]
    assert not torch.equal(r[0]["first"], r[1]["first"]), "both ranks drew the same noise"
    assert not torch.equal(r[0]["continuation"], r[1]["continuation"])
    for i in range(world):
        assert torch.equal(r[i]["resumed"], r[i]["continuation"]), f"rank {i} did not resume its own stream"


def test_single_process_stream_untouched_and_resumes():
    from videolavit.training.trainer import ResumableRNG

    torch.manual_seed(7)
    expected = torch.randn(3)
    torch.manual_seed(7)
    module = ResumableRNG()
    module.on_train_batch_start(None, 0)
    assert torch.equal(torch.randn(3), expected)  # one process: no reseed, the tiny recipe's draws are unchanged
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    nxt = torch.randn(3)
    resumed = ResumableRNG()
    resumed.on_load_checkpoint(checkpoint)
    torch.rand(5)
    resumed.on_train_batch_start(None, 0)
    assert torch.equal(torch.randn(3), nxt)
