import errno
import os

import numpy as np
import pytest
import torch

from msa_fast.train import checkpoint as ck


def test_atomic_save_roundtrip(tmp_path):
    p = tmp_path / "a.pt"
    ck.atomic_save({"x": torch.arange(3)}, p)
    assert torch.equal(ck.load_checkpoint(p)["x"], torch.arange(3))
    assert [f.name for f in tmp_path.iterdir()] == ["a.pt"]


def test_disk_full_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    ck.atomic_save({"v": 1}, p)
    before = p.read_bytes()

    def full(obj, fh):
        fh.write(b"partial bytes of a new checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write", full)
    with pytest.raises(ck.CheckpointError, match=r"disk full.*previous checkpoint .* is intact"):
        ck.atomic_save({"v": 2}, p)
    assert p.read_bytes() == before and ck.load_checkpoint(p) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temp file left


def test_rng_roundtrip():
    import random

    s = ck.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))
    ck.restore_rng(s)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
