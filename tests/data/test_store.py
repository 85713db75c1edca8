"""msa_fast.data.store: round trips, batch reads, checksums, atomic writes and every bad input."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from msa_fast.data import store as st
from msa_fast.data.store import (FORMAT_VERSION, StoreCorruptError, StoreFormatError, StoreReader, describe,
                                 verify, write_store)

META = {"dataset": "mosei", "source": "unit-test", "aligned": False}


def make_split(n: int, rng: np.random.Generator, *, t_a=30, t_v=20, d_a=7, d_v=5, l_t=12, unimodal=False,
               text_feat=False) -> dict[str, np.ndarray]:
    lt = rng.integers(3, l_t + 1, n)
    mask = (np.arange(l_t)[None, :] < lt[:, None]).astype(np.int64)
    ids = rng.integers(1000, 3000, (n, l_t)) * mask
    la = rng.integers(1, t_a + 1, n)
    lv = rng.integers(1, t_v + 1, n)
    audio = rng.standard_normal((n, t_a, d_a)).astype(np.float32) * (np.arange(t_a)[None, :, None] < la[:, None, None])
    vision = rng.standard_normal((n, t_v, d_v)).astype(np.float32) * (np.arange(t_v)[None, :, None] < lv[:, None, None])
    out = {
        "text_ids": ids, "text_mask": mask, "audio": audio, "audio_lengths": la, "vision": vision,
        "vision_lengths": lv, "regression": (rng.integers(-18, 19, n) / 6).astype(np.float32),
        "id": np.array([f"vid{i // 4:04d}$_${i % 4}" for i in range(n)]),
    }
    if unimodal:
        for m in "TAV":
            out[f"regression_{m}"] = np.clip(out["regression"] + rng.normal(0, .3, n), -3, 3).astype(np.float32)
    if text_feat:
        out["text_feat"] = rng.standard_normal((n, l_t, 16)).astype(np.float32)
    return out


def make_splits(seed=0, sizes=(70, 9, 13), **kw):
    rng = np.random.default_rng(seed)
    return {s: make_split(n, rng, **kw) for s, n in zip(("train", "valid", "test"), sizes)}


@pytest.fixture
def splits():
    return make_splits(unimodal=True, text_feat=True)


@pytest.fixture
def store_path(tmp_path, splits):
    p = tmp_path / "ds.h5"
    write_store(p, splits, META)
    return p


def _expected(key, a, dtype="float32"):
    if key == "id":
        return a.astype(str)
    if st._kind(key) == "float":
        return a.astype(dtype)
    if st._kind(key) == "int":
        return a.astype(np.int32)
    return a.astype(np.float32)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_round_trip_float32_exact(tmp_path, splits, compression):
    p = tmp_path / "ds.h5"
    assert write_store(p, splits, META, compression=compression) == os.fspath(p)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask        # not mkstemp's 0600
    with StoreReader(p) as r:
        assert r.splits == ("train", "valid", "test")
        assert r.meta["dataset"] == "mosei" and r.meta["source"] == "unit-test"
        assert r.meta["meta"]["aligned"] is False
        assert r.meta["format_version"] == FORMAT_VERSION
        assert r.meta["feature_dims"] == {"audio": 7, "vision": 5, "text": 16}
        assert r.meta["seq_lens"] == {"text": 12, "audio": 30, "vision": 20}
        assert r.meta["compression"] == (compression or "none")
        for s, arrays in splits.items():
            assert r.num_samples(s) == len(arrays["regression"])
            got = r.read_split(s)
            assert set(got) == set(arrays)
            for k, a in arrays.items():
                exp = _expected(k, a)
                assert got[k].dtype == exp.dtype, k
                np.testing.assert_array_equal(got[k], exp, err_msg=k)
    assert verify(p).ok


def test_round_trip_float16_within_rounding(tmp_path, splits):
    p = tmp_path / "ds16.h5"
    write_store(p, splits, META, dtype="float16")
    with StoreReader(p) as r:
        assert r.meta["storage_dtype"] == "float16"
        got = r.read_split("train")
        for k in ("audio", "vision", "text_feat"):
            assert got[k].dtype == np.float16
            a = splits["train"][k]
            np.testing.assert_allclose(got[k].astype(np.float32), a, rtol=2 ** -11, atol=2 ** -24)
            np.testing.assert_array_equal(got[k], a.astype(np.float16))  # exactly numpy's fp16 rounding
        # labels and ints are never reduced
        assert got["regression"].dtype == np.float32
        np.testing.assert_array_equal(got["regression"], splits["train"]["regression"])
        np.testing.assert_array_equal(got["text_ids"], splits["train"]["text_ids"])


def test_float16_overflow_is_an_error(tmp_path, splits):
    splits["valid"]["audio"][4, 0, 0] = 1e6
    with pytest.raises(StoreFormatError, match=r"'valid'.*'audio'.*sample 4.*overflows float16"):
        write_store(tmp_path / "x.h5", splits, META, dtype="float16")


@pytest.mark.parametrize("small_array_bytes", [0, 32 << 20])   # every array from the file / small ones cached
@pytest.mark.parametrize("chunk_samples", [None, 1, 8, 64])
def test_read_batch_any_order(tmp_path, splits, chunk_samples, small_array_bytes):
    p = tmp_path / "ds.h5"
    write_store(p, splits, META, chunk_samples=chunk_samples)
    tr = splits["train"]
    rng = np.random.default_rng(1)
    with StoreReader(p, small_array_bytes=small_array_bytes) as r:
        if chunk_samples:
            assert r.chunk_rows("train", "audio") == min(chunk_samples, 70)
        cases = [slice(10, 42), slice(None), slice(60, 100), slice(3, 50, 7), [5], np.array([69, 0, 1, 2, 3]),
                 rng.permutation(70)[:32], np.array([4, 4, 9, 4]), np.arange(20, 36), np.int64(7), [],
                 np.array([0, 1, 2, 30, 31, 50, 69]),          # sparse runs: one read per run
                 np.array([10, 12, 13, 15, 11]),               # dense: one covering read
                 rng.integers(0, 70, 100)]                     # repeats, any order
        for idx in cases:
            b = r.read_batch("train", idx)
            ref = np.arange(70)[idx] if not isinstance(idx, list) or idx else np.arange(0)
            ref = np.atleast_1d(ref)
            for k in tr:
                np.testing.assert_array_equal(b[k], _expected(k, tr[k])[ref], err_msg=f"{k} {idx}")
        sub = r.read_batch("test", [2, 0], keys=("audio", "regression"))
        assert set(sub) == {"audio", "regression"}
        with pytest.raises(IndexError, match=r"'train'.*sample index 70 out of range \[0, 70\)"):
            r.read_batch("train", [1, 70])
        with pytest.raises(IndexError, match="-1"):
            r.read_batch("train", [-1])
        with pytest.raises(KeyError, match="no split 'dev'"):
            r.num_samples("dev")
        with pytest.raises(KeyError, match="no key 'text_feat'|has no key"):
            StoreReader(_without_text_feat(tmp_path, splits)).read_batch("train", [0], keys=("text_feat",))


def _without_text_feat(tmp_path, splits):
    p = tmp_path / "notf.h5"
    write_store(p, {s: {k: v for k, v in a.items() if k != "text_feat"} for s, a in splits.items()}, META)
    return p


def test_auto_chunks_bounded_and_power_of_two(tmp_path):
    rng = np.random.default_rng(0)
    sp = {"train": make_split(600, rng, t_a=500, d_a=74, t_v=500, d_v=35, l_t=50)}
    p = tmp_path / "big.h5"
    write_store(p, sp, META)
    with StoreReader(p) as r:
        assert r.chunk_rows("train", "audio") == 4      # 500*74*4 B per sample -> 4 per MiB
        assert r.chunk_rows("train", "vision") == 8
        assert r.chunk_rows("train", "text_ids") == 256
        for k in ("audio", "vision", "text_ids"):
            c = r.chunk_rows("train", k)
            assert c & (c - 1) == 0 and c * np.prod(r.shape("train", k)[1:]) * 4 <= 1 << 20


def test_reader_is_picklable_and_reopens(store_path):
    import pickle

    r = StoreReader(store_path)
    a = r.read_batch("valid", [1, 2])
    r2 = pickle.loads(pickle.dumps(r))
    b = r2.read_batch("valid", [1, 2])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    r.close()
    r2.close()


def test_array_like_inputs_are_copied_in_blocks(tmp_path, splits, monkeypatch):
    monkeypatch.setattr(st, "_BLOCK_BYTES", 4096)  # many blocks
    src = tmp_path / "a.npy"
    np.save(src, splits["train"]["audio"])
    splits["train"]["audio"] = np.load(src, mmap_mode="r")
    p = tmp_path / "ds.h5"
    write_store(p, splits, META, chunk_samples=4)
    with StoreReader(p) as r:
        np.testing.assert_array_equal(r.read_split("train")["audio"], np.load(src))
    assert verify(p).ok


def test_describe(store_path):
    text = describe(store_path)
    assert "dataset        mosei" in text and "unit-test" in text
    assert "[train] 70 samples" in text and "audio" in text and "regression_T" in text
    assert "exact zeros" in text


# --------------------------------------------------------------------------- checksums, atomicity


def test_verify_detects_a_flipped_byte(store_path):
    assert verify(store_path).ok
    with h5py.File(store_path, "r") as f:
        ds = f["train/audio"]
        off = ds.id.get_chunk_info(0).byte_offset
    with open(store_path, "r+b") as fh:
        fh.seek(off + 13)
        b = fh.read(1)
        fh.seek(off + 13)
        fh.write(bytes([b[0] ^ 0x10]))
    rep = verify(store_path)
    assert not rep.ok
    assert [m[0] for m in rep.mismatches] == ["train/audio"]
    assert "checksum mismatch train/audio" in str(rep)
    with pytest.raises(StoreCorruptError, match="train/audio"):
        rep.raise_if_failed()


def test_checksums_stored_per_array(store_path, splits):
    import hashlib

    with h5py.File(store_path, "r") as f:
        sums = json.loads(f.attrs["checksums"])
    assert set(sums) == {f"{s}/{k}" for s, a in splits.items() for k in a}
    assert sums["valid/regression"] == hashlib.sha256(splits["valid"]["regression"].astype("<f4").tobytes()).hexdigest()
    assert sums["test/text_ids"] == hashlib.sha256(splits["test"]["text_ids"].astype("<i4").tobytes()).hexdigest()


def test_atomic_write_leaves_no_partial_file(tmp_path, splits, monkeypatch):
    p = tmp_path / "ds.h5"
    real = st._write_array
    calls = []

    def failing(*args, **kw):
        calls.append(args[1])
        if len(calls) == 5:
            raise RuntimeError("disk full (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(st, "_write_array", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        write_store(p, splits, META)
    assert os.listdir(tmp_path) == []                 # neither target nor temp file

    # an existing store survives a failed overwrite untouched
    monkeypatch.setattr(st, "_write_array", real)
    write_store(p, splits, META)
    before = p.read_bytes()
    calls.clear()
    monkeypatch.setattr(st, "_write_array", failing)
    with pytest.raises(RuntimeError):
        write_store(p, make_splits(seed=5), META)
    assert os.listdir(tmp_path) == ["ds.h5"] and p.read_bytes() == before
    assert verify(p).ok


def test_bad_content_midway_leaves_no_file(tmp_path, splits):
    splits["test"]["vision"][11, 3, 2] = np.nan
    with pytest.raises(StoreFormatError, match=r"'test'.*'vision'.*sample 11"):
        write_store(tmp_path / "ds.h5", splits, META)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad inputs: writer


def test_missing_key_on_write(tmp_path, splits):
    del splits["valid"]["vision_lengths"]
    with pytest.raises(StoreFormatError, match=r"ds\.h5.*split 'valid'.*missing key.*'vision_lengths'"):
        write_store(tmp_path / "ds.h5", splits, META)


def test_unknown_key_and_split_on_write(tmp_path, splits):
    splits["train"]["audio_len"] = splits["train"]["audio_lengths"]
    with pytest.raises(StoreFormatError, match=r"unknown key.*'audio_len'"):
        write_store(tmp_path / "ds.h5", splits, META)
    with pytest.raises(StoreFormatError, match=r"unknown split.*'dev'"):
        write_store(tmp_path / "ds.h5", {"dev": splits["valid"]}, META)


def test_mismatched_counts_on_write(tmp_path, splits):
    splits["train"]["audio"] = splits["train"]["audio"][:-1]
    with pytest.raises(StoreFormatError, match=r"split 'train'.*'audio' has 69.*other arrays have 70"):
        write_store(tmp_path / "ds.h5", splits, META)


def test_mismatched_dims_across_splits(tmp_path, splits):
    splits["test"]["audio"] = splits["test"]["audio"][:, :, :6]
    with pytest.raises(StoreFormatError, match=r"'audio'.*\(30, 6\).*'test'.*\(30, 7\).*'train'"):
        write_store(tmp_path / "ds.h5", splits, META)


def test_nan_label_on_write(tmp_path, splits):
    splits["train"]["regression"][17] = np.nan
    with pytest.raises(StoreFormatError, match=r"split 'train', key 'regression'.*label.*sample 17"):
        write_store(tmp_path / "ds.h5", splits, META)
    splits["train"]["regression"][17] = 0
    splits["valid"]["regression_A"][3] = np.nan
    with pytest.raises(StoreFormatError, match=r"split 'valid', key 'regression_A'.*sample 3"):
        write_store(tmp_path / "ds.h5", splits, META)


def test_lengths_past_padding_and_bad_mask(tmp_path, splits):
    splits["train"]["audio_lengths"][9] = 31
    with pytest.raises(StoreFormatError, match=r"'audio_lengths'.*31 at sample 9 exceeds.*30"):
        write_store(tmp_path / "ds.h5", splits, META)
    splits["train"]["audio_lengths"][9] = 30
    splits["train"]["text_mask"][2, 0] = 2
    with pytest.raises(StoreFormatError, match=r"'text_mask'.*sample 2"):
        write_store(tmp_path / "ds.h5", splits, META)


def test_bad_arguments(tmp_path, splits):
    with pytest.raises(ValueError, match="float32' or 'float16"):
        write_store(tmp_path / "a.h5", splits, META, dtype="float64")
    with pytest.raises(ValueError, match="compression"):
        write_store(tmp_path / "a.h5", splits, META, compression="zstd")
    with pytest.raises(StoreFormatError, match=r"meta\['source'\]"):
        write_store(tmp_path / "a.h5", splits, {"dataset": "mosei"})
    with pytest.raises(StoreFormatError, match="3-D"):
        splits["train"]["audio"] = splits["train"]["audio"][:, :, 0]
        write_store(tmp_path / "a.h5", splits, META)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_store(tmp_path / "nodir" / "a.h5", make_splits(), META)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad inputs: reader


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        StoreReader(tmp_path / "nope.h5")
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        verify(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "data.pkl"
    p.write_bytes(b"\x80\x04\x95 this is a pickle, not HDF5" * 100)
    with pytest.raises(StoreCorruptError, match=r"data\.pkl.*not an HDF5 file") as ei:
        StoreReader(p)
    assert isinstance(ei.value, OSError)
    with pytest.raises(StoreCorruptError, match="not an HDF5"):
        describe(p)


def test_truncated_file(store_path):
    size = os.path.getsize(store_path)
    with open(store_path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(StoreCorruptError, match=r"ds\.h5.*truncated") as ei:
        StoreReader(store_path)
    assert isinstance(ei.value, OSError)
    with pytest.raises(StoreCorruptError, match="truncated"):
        verify(store_path)


def test_corrupt_chunk_of_compressed_store_names_key(tmp_path, splits):
    p = tmp_path / "gz.h5"
    write_store(p, splits, META, compression="gzip", chunk_samples=8)
    with h5py.File(p, "r") as f:
        info = f["train/vision"].id.get_chunk_info(1)
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * min(64, info.size))
    with StoreReader(p, small_array_bytes=0) as r:
        r.read_batch("train", [0, 1])                       # chunk 0 still fine
        with pytest.raises(StoreCorruptError, match=r"gz\.h5.*'train'.*'vision'.*rows 8\.\.9"):
            r.read_batch("train", [8, 9])
    with StoreReader(p) as r:                               # small arrays are read whole on first use
        with pytest.raises(StoreCorruptError, match=r"gz\.h5.*'train'.*'vision'.*rows 0\.\.69"):
            r.read_batch("train", [0, 1])
    rep = verify(p)
    assert not rep.ok and any("'vision'" in x for x in rep.problems + [m[0] for m in rep.mismatches])


def test_wrong_format_version(store_path):
    with h5py.File(store_path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreFormatError, match=r"ds\.h5.*format version 99.*version 1"):
        StoreReader(store_path)
    assert "version 99" in str(verify(store_path))


def test_not_a_store(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreFormatError, match=r"other\.h5.*not an msa_fast store"):
        StoreReader(p)


def test_missing_key_in_file(store_path):
    with h5py.File(store_path, "a") as f:
        del f["test/audio_lengths"]
    with pytest.raises(StoreFormatError, match=r"ds\.h5.*split 'test'.*missing key.*'audio_lengths'"):
        StoreReader(store_path)
    rep = verify(store_path)
    assert not rep.ok and "audio_lengths" in str(rep)


def test_mismatched_counts_in_file(store_path):
    with h5py.File(store_path, "a") as f:
        del f["valid/regression"]
        f["valid/regression"] = np.zeros(8, np.float32)
    with pytest.raises(StoreFormatError, match=r"split 'valid'.*'regression' has 8.*other arrays have 9"):
        StoreReader(store_path)


def test_nan_label_in_file(store_path):
    with h5py.File(store_path, "a") as f:
        f["test/regression"][5] = np.nan
        f["test/regression"][7] = np.inf
    with pytest.raises(StoreFormatError, match=r"split 'test', key 'regression'.*sample 5, 7 \(2 sample"):
        StoreReader(store_path)
    rep = verify(store_path)
    assert not rep.ok and "sample 5, 7" in str(rep)


def test_callable_splits_are_produced_one_at_a_time(tmp_path, splits):
    calls = []

    def lazy(name):
        def make():
            calls.append(name)
            return splits[name]
        return make

    p = tmp_path / "lazy.h5"
    write_store(p, {"train": lazy("train"), "valid": splits["valid"], "test": lazy("test")}, META)
    assert calls == ["train", "test"]
    with StoreReader(p) as r:
        np.testing.assert_array_equal(r.read_split("test")["audio"], splits["test"]["audio"])
    bad = dict(splits["test"], audio=splits["test"]["audio"][:, :, :3])
    with pytest.raises(StoreFormatError, match=r"'audio'.*split 'test'.*differs"):
        write_store(tmp_path / "bad.h5", {"train": splits["train"], "test": lambda: bad}, META)
    assert sorted(os.listdir(tmp_path)) == ["lazy.h5"]


def test_check_dims_names_file_and_key(store_path):
    with StoreReader(store_path) as r:
        r.check_dims(audio=7, vision=5, text=16, text_len=12, audio_len=30, vision_len=20)
        r.check_dims(audio=None)
        with pytest.raises(StoreFormatError, match=r"ds\.h5: key 'audio': feature dim is 7 .*expects 74"):
            r.check_dims(audio=74)
        with pytest.raises(StoreFormatError, match=r"key 'vision': sequence length is 20 .*expects 500"):
            r.check_dims(vision_len=500)
        with pytest.raises(TypeError, match="unknown dim"):
            r.check_dims(acoustic=5)
