"""Codebooks stay identical across ranks and learn from every rank's data (issue 18 item 6): 2 gloo processes, CPU."""

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

    from videolavit.models.quantizer import VectorQuantizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial module on both ranks, as DDP would make it
        vq = VectorQuantizer(dim=8, codebook_size=16, decay=0.8, kmeans_init=True, dead_code_threshold=0.5)
        vq.train()
        # Rank-specific data: rank 0 draws around +e0, rank 1 around +e1 (two well separated clusters on the sphere).
        centre = torch.zeros(8)
        centre[rank] = 1.0
        gen = torch.Generator().manual_seed(100 + rank)
        same_after_each_step = []
        for _ in range(6):
            x = centre + 0.05 * torch.randn(2, 32, 8, generator=gen)
            vq(x)
            books = [torch.empty_like(vq.codebook) for _ in range(world)]
            dist.all_gather(books, vq.codebook.contiguous())
            same_after_each_step.append(all(torch.allclose(books[0], b, atol=1e-6) for b in books))
        book = vq.codebook.reshape(-1, 8)
        e = torch.eye(8)[:2]
        best = (book @ e.T).max(dim=0).values  # best cosine of any code to each rank's cluster centre
        torch.save({"same": same_after_each_step, "best": best}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_codebooks_identical_and_trained_by_both_ranks(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for r, res in enumerate(results):
        assert all(res["same"]), f"rank {r}: codebooks differ across ranks after steps {res['same']}"
        # Both clusters are represented in every rank's codebook: codes moved toward rank 0's AND rank 1's data.
        assert float(res["best"].min()) > 0.9, f"rank {r}: best code cosine to each rank's cluster {res['best']}"
