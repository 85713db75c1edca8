"""msa_fast.data.loader: batch reads, masks, sampler determinism, worker independence, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msa_fast.data.loader import Batch, BlockBatchSampler, StoreDataset, make_loader, to_batch
from msa_fast.data.store import StoreReader, write_store
from msa_fast.data.synthetic import make_synthetic, synthetic_meta, write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("loader") / "mosei.h5"
    write_synthetic_store(p, "mosei", seed=5, scale=0.02)  # 327 / 37 / 93 samples, unaligned 500 x 74 / 35
    return str(p)


@pytest.fixture(scope="module")
def sims_store(tmp_path_factory):
    p = tmp_path_factory.mktemp("loader") / "sims.h5"
    d = make_synthetic("sims", seed=1, scale=0.03, text_features=True)
    write_store(p, d, synthetic_meta("sims", seed=1, scale=0.03, text_features=True), dtype="float16")
    return str(p), d


def test_batch_equals_store_rows(store):
    ds = StoreDataset(store, "train")
    idx = [17, 3, 250, 3, 100]
    b = ds[idx]
    with StoreReader(store) as r:
        ref = r.read_batch("train", np.array(idx))
    assert isinstance(b, Batch) and len(b) == 5
    assert b.index.tolist() == idx
    assert b.audio.dtype == torch.float32 and b.text_ids.dtype == torch.int64 and b.y.dtype == torch.float32
    np.testing.assert_array_equal(b.audio.numpy(), ref["audio"])
    np.testing.assert_array_equal(b.vision.numpy(), ref["vision"])
    np.testing.assert_array_equal(b.text_ids.numpy(), ref["text_ids"])
    np.testing.assert_array_equal(b.y.numpy(), ref["regression"])
    assert b.id == list(ref["id"])
    assert torch.equal(b.text_len, b.text_mask.sum(1)) and not b.text_type.any()
    for m in ("audio", "vision"):
        ln = getattr(b, f"{m}_len")
        mask = getattr(b, f"{m}_mask")
        assert mask.dtype == torch.bool and torch.equal(mask.sum(1), ln)
        assert torch.equal(mask, torch.arange(mask.shape[1])[None] < ln[:, None])
    assert b.y_T is None and "y_T" not in b and "audio" in b and b["audio"] is b.audio
    with pytest.raises(IndexError, match="out of range"):
        ds[[0, 10**6]]


def test_float16_store_unimodal_labels_and_text_feat(sims_store):
    path, d = sims_store
    b = StoreDataset(path, "valid")[list(range(5))]
    assert b.audio.dtype == torch.float32 and b.text_feat.shape == (5, 39, 768)
    np.testing.assert_array_equal(b.audio.numpy(), d["valid"]["audio"][:5].astype(np.float16).astype(np.float32))
    for m in "TAV":
        np.testing.assert_array_equal(getattr(b, f"y_{m}").numpy(), d["valid"][f"regression_{m}"][:5])
    b16 = StoreDataset(path, "valid", float_dtype=None)[[0, 1]]
    assert b16.audio.dtype == torch.float16
    assert StoreDataset(path, "valid", text_features=False)[[0]].text_feat is None


def test_in_memory_and_array_sources_match(store):
    a = StoreDataset(store, "test")
    m = StoreDataset(store, "test", in_memory=True)
    with StoreReader(store) as r:
        arr = StoreDataset(r.read_split("test"), "test")
    assert m.in_memory and arr.in_memory and not a.in_memory
    idx = [5, 80, 0, 44]
    for other in (m, arr):
        x, y = a[idx], other[idx]
        for k in x.keys():
            if k == "id":
                assert x.id == y.id
            else:
                assert torch.equal(getattr(x, k), getattr(y, k)), k


def test_sampler_unshuffled_and_drop_last():
    s = BlockBatchSampler(10, 4)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    s = BlockBatchSampler(10, 4, drop_last=True)
    assert len(s) == 2 and list(s) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError):
        BlockBatchSampler(10, 0)


@pytest.mark.parametrize("block", [1, 4, 8])
def test_sampler_shuffle_is_a_permutation_of_whole_blocks(block):
    n, bs = 203, 32
    s = BlockBatchSampler(n, bs, shuffle=True, seed=7, block_size=block)
    batches = s.batches(0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert not np.array_equal(flat, np.arange(n))
    # every block (aligned at multiples of `block`) lies inside one batch
    for b in batches:
        for k in set((b // block).tolist()):
            assert set(range(k * block, min(n, (k + 1) * block))) <= set(b.tolist())
    assert set(range(n // block * block, n)) <= set(batches[-1].tolist())
    dl = BlockBatchSampler(n, bs, shuffle=True, seed=7, block_size=block, drop_last=True)
    assert len(np.unique(np.concatenate([np.concatenate(dl.batches(e)) for e in range(20)]))) == n
    # deterministic by (seed, epoch); epochs differ; seeds differ
    again = BlockBatchSampler(n, bs, shuffle=True, seed=7, block_size=block)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again.batches(0)))
    assert not np.array_equal(np.concatenate(s.batches(1)), flat)
    other = BlockBatchSampler(n, bs, shuffle=True, seed=8, block_size=block)
    assert not np.array_equal(np.concatenate(other.batches(0)), flat)
    # inside a batch: sorted by default, shuffled with sort_batches=False
    assert all(np.all(np.diff(b) > 0) for b in batches)
    unsorted = BlockBatchSampler(n, bs, shuffle=True, seed=7, block_size=block, sort_batches=False).batches(0)
    assert all(set(x.tolist()) == set(y.tolist()) for x, y in zip(unsorted, batches))
    assert any(not np.all(np.diff(b) > 0) for b in unsorted)


def test_sampler_does_not_touch_global_rng():
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    list(BlockBatchSampler(100, 8, shuffle=True, seed=1))
    assert torch.equal(torch.rand(1), a)


def _indices(loader, limit=None):
    out = []
    for i, b in enumerate(loader):
        out.append(b.index.tolist())
        if limit is not None and i + 1 == limit:
            break
    return out


def test_order_independent_of_workers(store):
    ref = _indices(make_loader(store, "train", 64, seed=3, num_workers=0))
    got = _indices(make_loader(store, "train", 64, seed=3, num_workers=2))
    assert got == ref and len(ref) == 6
    assert _indices(make_loader(store, "valid", 16, num_workers=0)) == [list(range(i, min(37, i + 16)))
                                                                          for i in range(0, 37, 16)]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(store, workers):
    full = make_loader(store, "train", 64, seed=11, num_workers=workers)
    epoch0 = _indices(full)
    epoch1 = _indices(full)
    assert epoch0 != epoch1 and full.state_dict()["epoch"] == 1

    a = make_loader(store, "train", 64, seed=11, num_workers=workers)
    first = _indices(a, limit=2)
    state = a.state_dict()
    assert state["epoch"] == 0 and state["position"] == 2  # delivered, not prefetched
    b = make_loader(store, "train", 64, seed=11, num_workers=workers)
    b.load_state_dict(state)
    rest = _indices(b)
    assert first + rest == epoch0
    assert _indices(b) == epoch1  # the next epoch follows
    # continuing the same loader after a break also resumes where it stopped
    assert first + _indices(a) == epoch0


def test_resume_guards(store):
    a = make_loader(store, "train", 64, seed=1)
    with pytest.raises(ValueError, match="seed=2"):
        a.load_state_dict({**a.state_dict(), "seed": 2})
    with pytest.raises(ValueError, match="position"):
        a.load_state_dict({**a.state_dict(), "position": 99})
    a.set_epoch(4)
    assert a.state_dict()["epoch"] == 4 and a.state_dict()["position"] == 0


def test_auto_block_is_chunk_aligned(store):
    ld = make_loader(store, "train", 256)
    with StoreReader(store) as r:
        chunks = [r.chunk_rows("train", k) for k in ("audio", "vision")]
    bs = ld.sampler.block_size
    assert bs == min(max(chunks), 256 // 32) and all(c % bs == 0 or bs % c == 0 for c in chunks)
    assert make_loader(store, "train", 256, in_memory=True).sampler.block_size == 1
    assert make_loader(store, "train", 16).sampler.block_size == 1


def test_to_batch_minimal():
    arrays = {"text_ids": np.ones((2, 4), np.int32), "text_mask": np.ones((2, 4), np.int32),
              "audio": np.zeros((2, 3, 2), np.float16), "audio_lengths": np.array([1, 3], np.int32),
              "vision": np.zeros((2, 5, 1), np.float32), "vision_lengths": np.array([5, 2], np.int32),
              "regression": np.array([0.5, -1], np.float32), "id": np.array(["a$_$1", "b$_$2"])}
    b = to_batch(arrays, [7, 9])
    assert b.audio.dtype == torch.float32 and b.audio_mask.tolist() == [[True, False, False], [True, True, True]]
    assert b.index.tolist() == [7, 9] and b.id == ["a$_$1", "b$_$2"]
    assert b.to("cpu").y.tolist() == [0.5, -1.0]


def test_streaming_keeps_only_small_arrays(store):
    # the reader keeps arrays of at most small_array_bytes (32 MiB by default: labels, lengths, ids, token
    # ids; MOSEI's audio/vision are ~1-2 GiB) in memory; everything else is read per batch
    ds = StoreDataset(StoreReader(store, small_array_bytes=1 << 20), "train")
    for idx in ([0, 1, 2], [300, 5]):
        ds[idx]
    assert ds.arrays is None and not ds.in_memory
    cached = {k for (_, k) in ds.reader._small}
    assert not cached & {"audio", "vision", "text_feat"} and "regression" in cached


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pinned_batches(store):
    ld = make_loader(store, "valid", 16, num_workers=1, pin_memory=True)
    b = next(iter(ld))
    assert b.audio.is_pinned() and b.y.is_pinned()
    g = b.to("cuda", non_blocking=True)
    assert g.audio.is_cuda and g.id == b.id
