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
from typing import Optional

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
        dead_code_threshold: Optional[float] = 2.0,
        commitment_weight: float = 0.25,
        dead_code_fraction: float = 0.1,
        kmeans_init_vectors: int = 0,
    ):
        """``dead_code_threshold`` None: scaled to the codebook, a code is dead below ``dead_code_fraction`` × the
        mean EMA uses of a code per step (its EMA cluster sizes summed / codebook_size: tokens per step over all
        ranks / codes). ``kmeans_init_vectors`` > 0: k-means initialises from that many vectors pooled over the
        first steps (and ranks) instead of the first batch alone; until then tokens quantize to the empty codebook."""
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.dim = dim
        self.codebook_size = codebook_size
        self.dead_code_fraction = None if dead_code_threshold is not None else float(dead_code_fraction)
        self.kmeans_init_vectors = int(kmeans_init_vectors) if kmeans_init else 0
        self._pool: list[torch.Tensor] = []
        self._initted = not kmeans_init
        self._kmeans_init = kmeans_init
        self.register_load_state_dict_post_hook(_forget_initialised)  # a loaded codebook may be empty again
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            decay=decay,
            kmeans_init=kmeans_init,
            kmeans_iters=10,
            use_cosine_sim=True,
            # relative: a positive placeholder (it enables restarts), replaced by the scaled value each step
            threshold_ema_dead_code=dead_code_threshold if dead_code_threshold is not None else float(dead_code_fraction),
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

    def _mark_initialised(self) -> None:
        """From now on skip vector-quantize-pytorch's per-forward ``if self.initted`` (a GPU read-back every call)."""
        self._initted = True
        codebook = self.vq._codebook
        if "init_embed_" not in codebook.__dict__:
            codebook.init_embed_ = _initialised

    def _codebook_ready(self, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """Whether the codebook is initialised; while ``kmeans_init_vectors`` are not yet pooled over all ranks, pool
        this batch's vectors (host reads of the count happen only until then), then run k-means on the pool."""
        codebook = self.vq._codebook
        if self._initted:
            return True
        if not self.training or self.kmeans_init_vectors <= 0:
            return True  # vector-quantize-pytorch initialises on this batch if empty (the first-batch rule)
        if bool(codebook.initted):  # restored from a checkpoint (read until the pool is done or found unneeded)
            self._mark_initialised()
            self._pool = []
            return True
        import torch.distributed as dist

        vectors = x.detach().float().reshape(-1, x.shape[-1]) if mask is None else x.detach().float()[mask.bool()]
        self._pool.append(vectors)
        count = torch.tensor(sum(len(v) for v in self._pool), device=x.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(count)
        if int(count) < self.kmeans_init_vectors:
            return False
        pooled = codebook.transform_input(torch.cat(self._pool))[None]  # [1, P, D] (l2-normalised for cosine)
        codebook.init_embed_(pooled)  # k-means over every rank's pool (the sync hooks sample across ranks)
        self._mark_initialised()
        self._pool = []
        return True

    def _scale_dead_code_threshold(self) -> None:
        """Relative dead codes: threshold = fraction × the EMA uses of all codes per step / codebook_size (on the device;
        restarted codes start there too, as with an absolute threshold)."""
        codebook = self.vq._codebook
        threshold = codebook.cluster_size.sum() * (self.dead_code_fraction / self.codebook_size)
        codebook.threshold_ema_dead_code = codebook.reset_cluster_size = threshold

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """``x`` [B, N, D] → quantized [B, N, D], codes [B, N], commitment loss. ``mask`` [B, N] marks real tokens."""
        self._select_sync()
        kwargs = {"mask": mask} if mask is not None else {}
        if not self._codebook_ready(x, mask):
            codebook = self.vq._codebook
            codebook.initted.fill_(True)  # quantize against the empty codebook, updating nothing, until k-means
            codebook.eval()
            try:
                quantized, codes, loss = self.vq(x, **kwargs)
            finally:
                codebook.initted.fill_(False)
                codebook.train(self.training)
        else:
            if self.training and self.dead_code_fraction is not None:
                self._scale_dead_code_threshold()
            quantized, codes, loss = self.vq(x, **kwargs)
            self._mark_initialised()  # vector-quantize-pytorch initialises on any forward that finds it empty
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
        self._mark_initialised()  # the call initialised an empty codebook, if it was one
        return codes.long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N] → L2-normalized code vectors [B, N, D]."""
        return self.vq.get_output_from_indices(codes)

    @property
    def codebook(self) -> torch.Tensor:
        """[codebook_size, D]"""
        return self.vq.codebook


def _forget_initialised(module: "VectorQuantizer", incompatible_keys) -> None:
    """After a state-dict load: ask vector-quantize-pytorch's own flag again on the next forward."""
    module._initted, module._pool = not module._kmeans_init, []
    module.vq._codebook.__dict__.pop("init_embed_", None)


def _initialised(data, mask=None) -> None:
    """Stands in for ``Codebook.init_embed_`` once the codebook is initialised (it would only read ``initted``)."""


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
