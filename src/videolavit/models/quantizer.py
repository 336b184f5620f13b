"""The vector quantizer of both tokenizers (paper Eq. 2): L2-normalized codes, EMA updates, k-means init, dead-code restart.

A thin wrapper over ``vector_quantize_pytorch.VectorQuantize`` (cosine-similarity codebook = nearest neighbour between
L2-normalized vectors; EMA codebook updates; k-means initialisation on the first batch; codes used less than
``dead_code_threshold`` times per EMA window are restarted from the batch; straight-through gradients). The wrapper
fixes the paper's choices and adds the statistics both tokenizers report: code usage and perplexity.

Under torch.distributed (world > 1) the codebook is synchronised: EMA cluster sizes and sums are all-reduced (summed),
k-means init and dead-code restarts sample from every rank's vectors, so each rank holds the same codebook trained on the
global batch and ``dead_code_threshold`` counts uses per step over the whole global batch. Single process: unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, N, D] L2-normalized code vectors, straight-through to the input
    codes: torch.Tensor  # [B, N] long
    loss: torch.Tensor  # scalar commitment loss


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.995,
        kmeans_init: bool = True,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
    ):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.dim = dim
        self.codebook_size = codebook_size
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            decay=decay,
            kmeans_init=kmeans_init,
            kmeans_iters=10,
            use_cosine_sim=True,
            threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight,
            rotation_trick=False,  # the paper's straight-through estimator, not the rotation trick
            sync_codebook=False,  # chosen per call in _select_sync: the model is built before the process group
        )

    def _select_sync(self) -> None:
        """Point the codebook's reduce/sample hooks at torch.distributed when a group of > 1 ranks is up, else local."""
        import torch.distributed as dist
        from vector_quantize_pytorch import vector_quantize_pytorch as vqp

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        codebook = self.vq._codebook
        if getattr(codebook, "_videolavit_sync", None) is distributed:
            return
        codebook.use_ddp = distributed
        codebook.all_reduce_fn = dist.all_reduce if distributed else vqp.noop
        codebook.kmeans_all_reduce_fn = dist.all_reduce if distributed else vqp.noop
        sample = vqp.sample_vectors_distributed if distributed else vqp.batched_sample_vectors
        codebook.sample_fn = sample
        codebook.replace_sample_fn = sample
        codebook._videolavit_sync = distributed

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """``x`` [B, N, D] → quantized [B, N, D], codes [B, N], commitment loss. ``mask`` [B, N] marks real tokens."""
        self._select_sync()
        if mask is not None:
            quantized, codes, loss = self.vq(x, mask=mask)
        else:
            quantized, codes, loss = self.vq(x)
        return QuantizerOutput(quantized, codes.long(), loss.sum() if loss.numel() > 1 else loss.reshape(()))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, N, D] → codes [B, N] (no codebook update)."""
        self._select_sync()
        was_training = self.training
        self.eval()
        try:
            _, codes, _ = self.vq(x)
        finally:
            self.train(was_training)
        return codes.long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N] → L2-normalized code vectors [B, N, D]."""
        return self.vq.get_output_from_indices(codes)

    @property
    def codebook(self) -> torch.Tensor:
        """[codebook_size, D]"""
        return self.vq.codebook


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of the codebook used by ``codes`` and the perplexity of their distribution (max = codebook_size)."""
    flat = codes.reshape(-1).long()
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        return {"codebook_usage": 0.0, "perplexity": 0.0}
    counts = torch.bincount(flat, minlength=codebook_size).double()
    probs = counts / counts.sum()
    nz = probs[probs > 0]
    perplexity = torch.exp(-(nz * nz.log()).sum()).item()
    return {"codebook_usage": float((counts > 0).double().mean().item()), "perplexity": float(perplexity)}
