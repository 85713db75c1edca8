"""Data-parallel training over ``torch.distributed`` (launch with ``torchrun``; gloo on CPU, NCCL on GPU).

* :func:`init_from_env` joins the process group that ``torchrun`` describes in the environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and returns a
  :class:`DistContext` (``rank``, ``world_size``, ``device``); without those variables it returns the
  single-process context.
* :class:`ShardedBlockBatchSampler` is the DistributedSampler equivalent for the block batch sampler:
  every rank computes the **same global batches** (same ``(seed, epoch)`` stream, global batch size)
  and takes its contiguous share (``np.array_split``: sizes differ by at most one; a final batch with
  fewer samples than ranks is padded by repeating its samples so no rank is empty). Its
  ``state_dict`` is the global sampler's, identical on every rank.
* Gradients are averaged across ranks by :func:`all_reduce_gradients` (one flattened all-reduce per
  dtype) right before each optimiser step, i.e. after the whole accumulation group (no
  communication on micro-steps). With per-sample-mean losses and equal shard sizes this is exactly
  the gradient of the single-process global batch. Contrastive losses that must see the global batch
  take ``global_batch=True`` (:mod:`msa_fast.ops.distributed`: ``gather_rows``, whose backward returns
  this rank's slice, plus ``ddp_loss_scale``), as the HyCon and MGCL models do.
* Model state kept by hooks (``on_batch_end`` banks, e.g. SUGRM's feature bank) sees only the rank's
  shard; a model that needs the global view gathers it itself (:func:`all_gather_object`,
  ``msa_fast.ops.distributed.gather_rows``). Evaluation runs on every rank over the whole split (identical results,
  so early-stopping decisions agree without communication). A non-finite loss on one rank only is
  not propagated to the others (they would wait in the next all-reduce).
* Metrics, logs and checkpoints are written by rank 0 only (:attr:`DistContext.is_main`); each rank's
  RNG state is gathered into rank 0's checkpoint so a resumed run restores every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from msa_fast.data.loader import BlockBatchSampler

__all__ = ["DistContext", "init_from_env", "ShardedBlockBatchSampler", "all_reduce_gradients", "gather_with_grad",
           "broadcast_parameters", "all_gather_object"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the torchrun process group (gloo on CPU, NCCL when CUDA is available), or single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


class ShardedBlockBatchSampler(BlockBatchSampler):
    """A :class:`BlockBatchSampler` over global batches of which this rank yields its share."""

    def __init__(self, num_samples: int, batch_size: int, *, rank: int, world_size: int, **kw):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        super().__init__(num_samples, batch_size, **kw)
        self.rank, self.world_size = int(rank), int(world_size)

    def shard(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) < self.world_size:  # pad so every rank gets a sample (DistributedSampler does the same)
            batch = np.resize(batch, self.world_size)
        return np.array_split(batch, self.world_size)[self.rank]

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        return [self.shard(b) for b in super().batches(epoch)]


def _flat_all_reduce(tensors: list[torch.Tensor], world: int) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    off = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[off:off + n].view_as(t))
        off += n


def all_reduce_gradients(params, ctx: DistContext, grads: list[torch.Tensor | None] | None = None) -> None:
    """Average ``p.grad`` (or the given gradient buffers) over ranks. Missing gradients count as zero
    (a parameter unused on one rank still gets the others' gradient)."""
    if not ctx.enabled:
        return
    params = list(params)
    bufs = grads if grads is not None else [p.grad for p in params]
    filled = []
    for i, (p, g) in enumerate(zip(params, bufs)):
        if g is None:
            g = torch.zeros_like(p)
            if grads is not None:
                grads[i] = g
            else:
                p.grad = g
        filled.append(g)
    by_dtype: dict[tuple, list[torch.Tensor]] = {}
    for g in filled:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for group in by_dtype.values():
        _flat_all_reduce(group, ctx.world_size)


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_gather_object(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_with_grad(x: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """Concatenate ``x`` ([B_rank, ...], equal B on every rank) from all ranks along dim 0, keeping the
    gradient path to this rank's part.

    Kept for code written against it; the models use ``msa_fast.ops.distributed.gather_rows`` instead
    (uneven shards, and a backward that returns this rank's slice without communication). This one is
    ``torch.distributed.nn.all_gather``, whose backward *sums* the gradient of this slice over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)
