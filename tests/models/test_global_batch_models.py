"""``global_batch=True`` in HyCon and MGCL: two gloo processes, each holding half of a batch, give
(after the engine's gradient averaging) the gradients of one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch

from tests.models import test_hycon, test_mgcl

pytest.importorskip("transformers")

B = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(name, cfg):
    # eval(): no dropout, so both processes see the same function; loss_terms and backward still run
    m = (test_hycon if name == "hycon" else test_mgcl).make({"global_batch": True, **cfg}, seed=3)
    return m.eval()


def _rows(batch, lo, hi):
    return dataclasses.replace(batch, **{f.name: (v[lo:hi] if torch.is_tensor(v) or isinstance(v, list) else v)
                                         for f in dataclasses.fields(batch)
                                         if (v := getattr(batch, f.name)) is not None})


def _grads(name, cfg, batch):
    m = _model(name, cfg)
    stage = m.stages()[-1]
    terms = m.loss_terms(batch, m(batch), stage)
    terms[stage.loss].backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, terms


CASES = [("hycon", {}), ("hycon", {"ablate": ["refinement"]}), ("mgcl", {}), ("mgcl", {"ablate": ["c3"]})]


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from msa_fast.train.distributed import DistContext, all_reduce_gradients

        ctx = DistContext(rank=rank, world_size=2, local_rank=rank, backend="gloo")
        batch = test_hycon.make_batch(B, 10, 12, 9, 74, 35, seed=5, unimodal=True)
        res = []
        for name, cfg in CASES:
            grads, terms = _grads(name, cfg, _rows(batch, rank * B // 2, (rank + 1) * B // 2))
            names = sorted(grads)
            bufs = [grads[n] for n in names]
            all_reduce_gradients(bufs, ctx, grads=bufs)  # the engine's averaging, as before each step
            res.append(({n: g for n, g in zip(names, bufs)}, {k: float(v.detach()) for k, v in terms.items()}))
        if rank == 0:
            torch.save(res, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_global_batch_equals_one_process_full_batch(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    two = torch.load(out)
    batch = test_hycon.make_batch(B, 10, 12, 9, 74, 35, seed=5, unimodal=True)
    for (name, cfg), (g2, t2) in zip(CASES, two):
        g1, t1 = _grads(name, cfg, batch)
        assert sorted(g1) == sorted(g2), name
        for n in g1:
            torch.testing.assert_close(g2[n], g1[n], rtol=1e-3, atol=2e-5, msg=lambda m: f"{name} {cfg} {n}: {m}")
        for k in ("iamcl", "iemcl", "scl", "con"):  # the logged contrastive values are the global-batch ones
            if k in t1:
                assert t2[k] == pytest.approx(float(t1[k]), rel=1e-5, abs=1e-6), (name, k)


def test_global_batch_is_a_no_op_in_one_process():
    batch = test_hycon.make_batch(B, 10, 12, 9, 74, 35, seed=5, unimodal=True)
    for name, cfg in CASES[::2]:
        g1, _ = _grads(name, cfg, batch)
        g0, _ = _grads(name, {**cfg, "global_batch": False}, batch)
        for n in g1:
            torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0)
