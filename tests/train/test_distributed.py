"""Data parallel over torch.distributed (gloo, 2 CPU processes) matches one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msa_fast.train.checkpoint import load_checkpoint
from msa_fast.train.distributed import ShardedBlockBatchSampler
from msa_fast.train.engine import Trainer, seed_everything
from tests.train.toy_model import toy_for

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_sampler_partitions_global_batches():
    from msa_fast.data.loader import BlockBatchSampler

    ref = BlockBatchSampler(37, 8, shuffle=True, seed=5)
    shards = [ShardedBlockBatchSampler(37, 8, shuffle=True, seed=5, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        glob = ref.batches(epoch)
        parts = [s.batches(epoch) for s in shards]
        for i, g in enumerate(glob):
            np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), g)
            assert max(len(p[i]) for p in parts) - min(len(p[i]) for p in parts) <= 1
    tiny = [ShardedBlockBatchSampler(5, 4, rank=r, world_size=2) for r in range(2)]
    assert [len(t.batches(0)[-1]) for t in tiny] == [1, 1]  # a 1-sample last batch is padded for rank 1
    assert shards[0].state_dict() == shards[1].state_dict()  # the position is global: same on every rank


def _worker(rank, world, port, store, cfg, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from msa_fast.train.distributed import init_from_env

    ctx = init_from_env("gloo")
    try:
        seed_everything(1111)
        model = toy_for(store, dropout=0.0, pretrain_epochs=0, use_bank=False)
        Trainer(model, cfg, store, run_dir, seed=1111, dist=ctx, handle_sigint=False).fit()
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_single_process(store, cfg, tmp_path):
    import torch.multiprocessing as mp

    c = {**cfg, "epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 1e-2, "clip_grad_norm": 1.0}
    seed_everything(1111)
    model = toy_for(store, dropout=0.0, pretrain_epochs=0, use_bank=False)
    Trainer(model, c, store, tmp_path / "one", seed=1111).fit()
    mp.spawn(_worker, args=(2, _free_port(), str(store), c, str(tmp_path / "two")), nprocs=2, join=True)
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["engine"]["step"] == b["engine"]["step"] == 8
    params = {n for n, _ in toy_for(store).named_parameters()}  # buffers filled by hooks are rank-local
    for k in params:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    ra = json.load(open(tmp_path / "one" / "result.json"))
    rb = json.load(open(tmp_path / "two" / "result.json"))
    assert ra["best_epoch"] == rb["best_epoch"]
    assert rb["test"]["MAE"] == pytest.approx(ra["test"]["MAE"], abs=2e-4)
    assert len(b["rng"]) == 2 and len(a["rng"]) == 1  # every rank's RNG state is checkpointed


@pytest.mark.slow
def test_torchrun_cli(store, tmp_path):
    """The real launcher: torchrun --nproc-per-node=2 msa-fast train (gloo on CPU)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port",
                str(_free_port()), "-m", "msa_fast.cli"]
    args = ["train", "--model", "tests.train.toy_model:build", "--data", str(store), "--seeds", "1111",
            "--epochs", "1", "--no-compile", "--no-progress", "--set", "dropout=0.0", "--set", "pretrain_epochs=0"]
    p = subprocess.run(torchrun + args + ["--out", str(tmp_path / "ddp")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("mean ± std") == 1  # printed by rank 0 only
    p1 = subprocess.run([sys.executable, "-m", "msa_fast.cli"] + args + ["--out", str(tmp_path / "one")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
    assert p1.returncode == 0, p1.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one" / "seed1111" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "seed1111" / "last.pt")["model"]
    for k in {n for n, _ in toy_for(store).named_parameters()}:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
