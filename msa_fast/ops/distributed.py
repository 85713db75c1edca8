"""Global-batch contrastive losses under ``torch.distributed`` (the ``global_batch=True`` option).

Every public contrastive loss (``supcon_loss``, ``info_nce``, ``align_loss``, ``uniform_loss``,
``hycon_loss``, ``mgcl_contrastive_loss``) takes a keyword-only ``global_batch=False``. With
``global_batch=True`` and an initialised process group of world size ``W > 1``, the op first gathers
its per-row inputs (features, labels) from all ranks with :func:`gather_rows`, in rank order, and then
computes the loss over the **global batch**: every rank returns the same value, the single-process
loss of the concatenated batch ``[rows of rank 0; rows of rank 1; …]``. Ranks may hold different
numbers of rows (even 0, as long as the global batch is not empty).

**What the gradient means.** The gather's backward returns this rank's slice of the incoming gradient,
with no communication. Every rank computes the identical global loss ``L`` from identical gathered
inputs, so the gradient ``∂L/∂X_global`` is identical on every rank, and this rank's slice of it *is*
the slice of the single-process full-batch gradient that belongs to its own rows. Backpropagating it
through the local encoder gives this rank's share ``g_r`` of the full-batch parameter gradient, and
``Σ_r g_r`` is the full-batch gradient ``∂L/∂θ``. Labels and ids are gathered without gradient.

**Combining with DDP.** ``DistributedDataParallel`` *averages* parameter gradients over the ``W`` ranks,
so it produces ``(1/W)·Σ_r g_r = (1/W)·∂L/∂θ``. A loop that wants the single-process full-batch
gradient multiplies the global-batch loss by ``W`` before ``backward()``::

    loss = task_loss + ddp_loss_scale() * supcon_loss(z, y, global_batch=True)

``ddp_loss_scale()`` is ``W`` (1 when not distributed). Per-rank losses that are means over the local
batch (``task_loss`` above) are *not* scaled: DDP's average of local means is already the global mean
(for equal local batch sizes). The scaled value is what is backpropagated; log the unscaled loss.

**Rules.**

* Every rank must call the loss (the same op, the same number of times, in the same order), because
  the gather is a collective. Option values must agree across ranks.
* ``reduction='none'`` returns the per-row vector of the **global** batch (length ``Σ_r N_r``, rank
  order). The backward slice is exact only if every rank reduces that vector identically (e.g.
  ``.sum()`` or the same weighted sum); do not backpropagate only this rank's slice of it.
* Without ``torch.distributed``, before ``init_process_group``, or with world size 1,
  ``global_batch=True`` is a no-op: the loss of the local batch, with no communication.
* Cost: one ``all_gather`` of the row shapes (a small host sync) and one ``all_gather`` per input
  tensor (padded to the largest rank). The loss itself is computed redundantly on every rank over the
  global batch, so its compute is that of the full batch on each rank; only the encoders are sharded.

**torch.compile.** The shape exchange needs Python ints to allocate, so it runs eagerly: under
``torch.compile`` it is a graph break (so ``fullgraph=True`` fails with ``global_batch=True`` when a
process group is initialised). The gather itself is the custom op ``msa_fast::all_gather_rows``
(fake and autograd registrations), so the loss before and after compiles; the per-rank row counts are
baked into the graph, so a new combination of batch sizes recompiles (keep batch sizes fixed, e.g.
``drop_last=True``). Undistributed, ``global_batch=True`` compiles with ``fullgraph=True``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "ddp_loss_scale", "gather_rows"]

_MAX_DIMS = 8
# dtype → code exchanged with the shapes (so a dtype mismatch across ranks is an error, not garbage).
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool)
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}


def _group_or_world(group):
    return dist.group.WORLD if group is None else group


def is_distributed(group=None) -> bool:
    """True when ``torch.distributed`` is initialised and ``group`` (default: the world) has > 1 rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(_group_or_world(group)) > 1


def world_size(group=None) -> int:
    """World size of ``group`` (default: the world), or 1 when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(_group_or_world(group))


def ddp_loss_scale(group=None) -> int:
    """The factor ``W`` to multiply a ``global_batch=True`` loss by under DDP gradient averaging.

    DDP averages parameter gradients over the ``W`` ranks; the global-batch loss's gradients, summed
    over ranks, are the full-batch gradient, so ``W · loss`` makes DDP's average equal the
    single-process full-batch gradient. 1 when not distributed. See the module docstring.
    """
    return world_size(group)


def _group_name(group) -> str:
    return _group_or_world(group).group_name


def _resolve_group(group_name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


# ----------------------------------------------------------------------------------------------
# The gather op: one all_gather of a padded copy, the rows of each rank cut out and concatenated.


@torch.library.custom_op("msa_fast::all_gather_rows", mutates_args=())
def _all_gather_rows(x: torch.Tensor, sizes: list[int], rank: int, group_name: str) -> torch.Tensor:
    """``cat([x of rank r for r in range(W)])`` along dim 0, rank ``r`` holding ``sizes[r]`` rows."""
    group = _resolve_group(group_name)
    n_max, total = max(sizes), sum(sizes)
    row_shape = tuple(x.shape[1:])
    row_numel = math.prod(row_shape)
    if n_max == 0 or row_numel == 0:                                 # nothing to send on any rank
        return x.new_zeros((total,) + row_shape)
    # Rows travel as raw bytes ([n, bytes per row] uint8): bit-exact for every dtype, and uint8 is
    # the one type every backend gathers (gloo has no int16/bool, NCCL no bool).
    wire = x.contiguous().reshape(x.shape[0], row_numel).view(torch.uint8)
    if wire.shape[0] < n_max:
        wire = torch.cat([wire, wire.new_zeros((n_max - wire.shape[0], wire.shape[1]))])
    parts = [torch.empty_like(wire) for _ in sizes]
    dist.all_gather(parts, wire, group=group)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)])
    return out.view(x.dtype).reshape((total,) + row_shape)


@_all_gather_rows.register_fake
def _(x, sizes, rank, group_name):
    return x.new_empty((sum(sizes),) + tuple(x.shape[1:]))


def _setup_context(ctx, inputs, output):
    _, sizes, rank, _ = inputs
    ctx.start = sum(sizes[:rank])
    ctx.stop = ctx.start + sizes[rank]


def _backward(ctx, grad):
    # Every rank computes the same global loss, so `grad` is the same on every rank and this rank's
    # slice is its rows' share of the full-batch gradient: no communication (module docstring).
    return grad[ctx.start:ctx.stop], None, None, None


_all_gather_rows.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.disable  # data-dependent Python ints: a graph break under torch.compile (module docstring)
def _exchange_shapes(tensors, group) -> tuple[list[list[int]], int]:
    """Per tensor, the row count of every rank; checks dtypes and trailing shapes agree across ranks.

    One all_gather of a small int64 vector. All ranks see the same gathered vector, so a mismatch
    raises the same ValueError on every rank (no rank is left waiting in a later collective).
    """
    group = _group_or_world(group)
    W = dist.get_world_size(group)
    rank = dist.get_rank(group)
    meta = []
    for t in tensors:
        if t.dim() == 0 or t.dim() > _MAX_DIMS:
            raise ValueError(f"msa_fast.ops.distributed.gather_rows: tensors must have 1 to {_MAX_DIMS} dims "
                             f"(rows along dim 0), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPE_CODE:
            raise TypeError(f"msa_fast.ops.distributed.gather_rows: unsupported dtype {t.dtype}")
        meta += [_DTYPE_CODE[t.dtype], t.dim()] + list(t.shape) + [0] * (_MAX_DIMS - t.dim())
    width = 2 + _MAX_DIMS
    local = torch.tensor(meta, dtype=torch.int64, device=tensors[0].device)
    parts = [torch.empty_like(local) for _ in range(W)]
    dist.all_gather(parts, local, group=group)
    table = torch.stack(parts).cpu().view(W, len(tensors), width).tolist()
    sizes = []
    for i in range(len(tensors)):
        rows = [table[r][i] for r in range(W)]
        if any(row[0] != rows[0][0] or row[1] != rows[0][1] or row[3:] != rows[0][3:] for row in rows):
            shapes = ", ".join(f"rank {r}: {tuple(row[2:2 + row[1]])} {_DTYPES[row[0]]}" for r, row in enumerate(rows))
            raise ValueError(f"msa_fast.ops.distributed.gather_rows: input {i} must have the same dtype and "
                             f"trailing shape on every rank (only dim 0 may differ); got {shapes}")
        sizes.append([row[2] for row in rows])
    return sizes, rank


def gather_rows(*tensors: torch.Tensor, group=None) -> tuple[torch.Tensor, ...]:
    """All-gather each tensor along dim 0 from every rank of ``group`` (default: the world), rank order.

    Ranks may hold different numbers of rows (the row counts are exchanged first); dtypes and the
    other dims must agree. Float tensors keep a gradient path: the backward returns this rank's slice
    of the incoming gradient, without communication — correct when every rank computes the same
    function of the gathered tensors (see the module docstring for what the gradient means and the
    DDP scale). Integer/bool tensors (labels, ids) are gathered without gradient. The same tensor
    object passed twice is gathered once and returned as one object (so ``k is q`` survives).

    Returns a tuple of the gathered tensors, or the inputs unchanged when not distributed.
    """
    if not tensors or not is_distributed(group):
        return tuple(tensors)
    unique: list[torch.Tensor] = []
    for t in tensors:
        if not any(t is u for u in unique):
            unique.append(t)
    sizes, rank = _exchange_shapes(unique, group)
    name = _group_name(group)
    gathered = [_all_gather_rows(t, s, rank, name) for t, s in zip(unique, sizes)]
    return tuple(next(g for u, g in zip(unique, gathered) if u is t) for t in tensors)
