"""global_batch=True under a real 2-process gloo group (msa_fast.ops.distributed).

One spawn runs every check, each rank holding a slice of one batch (even 6 + 6, uneven 7 + 5 and
12 + 0 splits). For each of the six contrastive ops: the global-batch loss equals the single-process
loss of the full batch, and each rank's input gradients equal its slice of the single-process
full-batch gradients. Then: a DDP-wrapped linear model with ``loss × ddp_loss_scale()`` gets the
single-process parameter gradients; bool/bf16 transport and opcheck of the gather op; a shape
mismatch raises on every rank; the gather compiles (with a graph break at the shape exchange).
Failures inside a rank are re-raised by ``mp.spawn`` with the rank's traceback.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import msa_fast.ops as ops
from msa_fast.ops import distributed as D

WORLD = 2
N, DIM = 12, 5
SPLITS = ((6, 6), (7, 5), (12, 0))
ATOL = RTOL = 1e-5
EMPTY_RANK_CASES = ("supcon", "info_nce", "mgcl")   # the 12 + 0 split (a rank without rows) runs these


def _inputs(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One full batch of every op's per-row inputs (identical on every rank: same seed)."""
    f = {name: torch.randn(N, DIM, generator=gen) for name in ("z", "q", "k", "p", "g", "xl", "xa", "xv",
                                                               "Ta", "Va", "Aa", "Ti", "Vi", "Ai")}
    f["labels"] = torch.randint(0, 3, (N,), generator=gen)
    f["y"] = torch.randint(-6, 7, (N,), generator=gen).float() / 2           # sentiment in [-3, 3]
    return f


# name → (float inputs, int/label inputs, loss as a scalar); each returns one scalar to differentiate.
CASES = {
    "supcon": (("z",), ("labels",), lambda t, **kw: ops.supcon_loss(t["z"], t["labels"], 0.1, **kw)),
    "supcon_in_none": (("z",), ("labels",),
                       lambda t, **kw: ops.supcon_loss(t["z"], t["labels"], 0.1, variant="in", reduction="none",
                                                       **kw).sum()),
    "info_nce": (("q", "k"), (), lambda t, **kw: ops.info_nce(t["q"], t["k"], 0.1, **kw)),
    "info_nce_keys_none": (("q", "k"), (),
                           lambda t, **kw: (ops.info_nce(t["q"], t["k"], 0.2, "keys", reduction="none", **kw)
                                            * torch.linspace(0.5, 1.5, N)).sum()),
    "info_nce_q_is_k": (("q",), (), lambda t, **kw: ops.info_nce(t["q"], t["q"], 0.1, **kw)),
    "align": (("p", "g"), (), lambda t, **kw: ops.align_loss(t["p"], t["g"], **kw)),
    "uniform": (("p", "g"), (), lambda t, **kw: ops.uniform_loss(t["p"], t["g"], 2.0, **kw)),
    "uniform_wang_isola": (("p", "g"), (),
                           lambda t, **kw: ops.uniform_loss(t["p"], t["g"], 2.0, mode="wang_isola", **kw)),
    "hycon": (("xl", "xa", "xv"), ("y",),
              lambda t, **kw: torch.stack(ops.hycon_loss(t["xl"], t["xa"], t["xv"], t["y"], **kw))
              @ torch.tensor([1.0, 2.0, 3.0])),
    "mgcl": (("Ta", "Va", "Aa", "Ti", "Vi", "Ai"), ("y",),
             lambda t, **kw: ops.mgcl_contrastive_loss((t["Ta"], t["Va"], t["Aa"]), (t["Ti"], t["Vi"], t["Ai"]),
                                                       t["y"], tau=0.1, **kw)),
}


def _loss_and_grads(case, tensors, **kw):
    floats, _, fn = CASES[case]
    leaves = {name: tensors[name].clone().requires_grad_(True) for name in floats}
    loss = fn({**tensors, **leaves}, **kw)
    grads = torch.autograd.grad(loss, [leaves[name] for name in floats])
    return loss.detach(), dict(zip(floats, grads))


def _check_ops(rank: int, backends) -> None:
    full = _inputs(torch.Generator().manual_seed(1))
    for sizes in SPLITS:
        start = sum(sizes[:rank])
        stop = start + sizes[rank]
        local = {name: t[start:stop] for name, t in full.items()}
        for case in CASES:
            if 0 in sizes and case not in EMPTY_RANK_CASES:
                continue
            for backend in backends:
                where = f"rank {rank}, split {sizes}, {case}, backend {backend}"
                ref_loss, ref_grads = _loss_and_grads(case, full, backend=backend)
                loss, grads = _loss_and_grads(case, local, backend=backend, global_batch=True)
                torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=RTOL, msg=lambda m: f"{where}: loss {m}")
                for name, grad in grads.items():
                    torch.testing.assert_close(grad, ref_grads[name][start:stop], atol=ATOL, rtol=RTOL,
                                               msg=lambda m: f"{where}: d/d{name} {m}")


def _check_ddp(rank: int) -> None:
    """2-process DDP with ``ddp_loss_scale() × global-batch loss`` = the single-process gradient."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, 6, generator=gen)
    labels = torch.randint(0, 3, (N,), generator=gen)
    y = torch.randint(-6, 7, (N,), generator=gen).float() / 2
    sizes = (7, 5)
    start = sum(sizes[:rank])
    stop = start + sizes[rank]

    def loss_fn(model, xs, ls, ys, **kw):
        z = model(xs)
        return ops.supcon_loss(z, ls, 0.1, **kw) + 0.5 * ops.uniform_loss(z[:, :4], z[:, 4:], **kw)

    torch.manual_seed(3)
    single = torch.nn.Linear(6, 8)
    torch.manual_seed(3)
    ddp = DDP(torch.nn.Linear(6, 8))
    loss_fn(single, x, labels, y).backward()
    assert D.ddp_loss_scale() == WORLD
    (D.ddp_loss_scale() * loss_fn(ddp, x[start:stop], labels[start:stop], y[start:stop], global_batch=True)).backward()
    for (name, p_single), p_ddp in zip(single.named_parameters(), ddp.module.parameters()):
        torch.testing.assert_close(p_ddp.grad, p_single.grad, atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"rank {rank}: DDP grad of {name} {m}")


def _check_gather(rank: int) -> None:
    # bit-exact transport of bool, bf16 and fp16 rows, uneven sizes; the same object passed twice
    # comes back as one object.
    full_b = torch.tensor([True, False, True, True, False])
    full_h = torch.randn(5, 3, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    cut = (3, 2)
    sl = slice(sum(cut[:rank]), sum(cut[:rank + 1]))
    lh = full_h[sl].half()
    b, h, h16, h16_again = D.gather_rows(full_b[sl], full_h[sl], lh, lh)
    assert torch.equal(b, full_b) and torch.equal(h, full_h) and torch.equal(h16, full_h.half())
    assert h16 is h16_again
    # the gather op's schema, fake tensor and autograd registrations (every rank runs the same checks,
    # so the collectives inside stay in step)
    x = torch.randn(cut[rank], 3, requires_grad=True)
    torch.library.opcheck(torch.ops.msa_fast.all_gather_rows.default, (x, list(cut), rank, dist.group.WORLD.group_name))
    # a trailing-shape mismatch raises the same ValueError on every rank (no rank left hanging)
    with pytest.raises(ValueError, match="same dtype and trailing shape"):
        D.gather_rows(torch.zeros(2, 3 + rank))
    dist.barrier()


def _check_compile(rank: int) -> None:
    torch._dynamo.reset()
    full = _inputs(torch.Generator().manual_seed(5))
    start, stop = (0, 7) if rank == 0 else (7, N)

    def fn(z, labels, global_batch=True):
        return 2.0 * ops.supcon_loss(torch.tanh(z), labels, 0.1, global_batch=global_batch)

    z = full["z"][start:stop].clone().requires_grad_(True)
    loss = torch.compile(fn)(z, full["labels"][start:stop])
    loss.backward()
    zr = full["z"].clone().requires_grad_(True)
    ref = fn(zr, full["labels"], global_batch=False)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z.grad, zr.grad[start:stop], atol=ATOL, rtol=RTOL)


def _worker(rank: int, init_method: str, backends) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        assert D.is_distributed() and D.world_size() == WORLD
        _check_gather(rank)
        _check_ops(rank, backends)
        _check_ddp(rank)
        _check_compile(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_global_batch_two_processes(tmp_path):
    backends = [b for b in ("reference", "cpp") if b in ops.available_backends()]
    init_method = f"file://{os.fspath(tmp_path / 'rendezvous')}"
    mp.spawn(_worker, args=(init_method, backends), nprocs=WORLD, join=True)


def test_global_batch_is_a_noop_without_a_process_group():
    assert not D.is_distributed() and D.world_size() == 1 and D.ddp_loss_scale() == 1
    z = torch.randn(5, 3)
    assert D.gather_rows(z)[0] is z
    full = _inputs(torch.Generator().manual_seed(1))
    for case in CASES:
        loss, grads = _loss_and_grads(case, full, global_batch=True)
        ref_loss, ref_grads = _loss_and_grads(case, full)
        assert torch.equal(loss, ref_loss), case
        for name in grads:
            assert torch.equal(grads[name], ref_grads[name]), (case, name)
