"""msa_fast.data.mmsa_pickle: MMSA feature pickles in their exact layout, with the real files' traps."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest

from msa_fast.data.mmsa_pickle import (ForbiddenGlobalError, MMSAPickleError, load_pickle, mmsa_to_store, read_mmsa,
                                       split_id, summarize_pickle)
from msa_fast.data.store import StoreReader, verify

from .formats import REAL, mmsa_dict, write_pickle


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_mmsa(path, **kw)


@pytest.mark.parametrize("like,aligned", sorted(REAL))
def test_every_layout_reads_with_exact_fixes(tmp_path, like, aligned):
    raw = mmsa_dict(like, aligned)
    p = write_pickle(tmp_path / "f.pkl", raw)
    d = _read(p, text_features=True)
    lt, ta, tv, da, dv = REAL[(like, aligned)]
    assert d.meta["dataset"] == like and d.meta["aligned"] == aligned and d.meta["padding_side"] == "right"
    for s in ("train", "valid", "test"):
        r, o = raw[s], d.splits[s]
        n = len(r["id"])
        assert o["audio"].shape == (n, ta, da) and o["vision"].shape == (n, tv, dv)
        assert o["audio"].dtype == o["vision"].dtype == o["text_feat"].dtype == np.float32
        np.testing.assert_array_equal(o["text_ids"], r["text_bert"][:, 0])
        np.testing.assert_array_equal(o["text_mask"], r["text_bert"][:, 1])
        np.testing.assert_array_equal(o["text_feat"], r["text"])
        np.testing.assert_array_equal(o["id"], r["id"])
        np.testing.assert_array_equal(o["regression"], r["regression_labels"])
        if like == "sims":
            for m in "TAV":
                np.testing.assert_array_equal(o[f"regression_{m}"], r[f"regression_labels_{m}"])
        else:
            assert "regression_T" not in o
        # expected: cast, -inf -> 0, frames past the (capped) length zeroed, zero lengths -> 1
        for m, T in (("audio", ta), ("vision", tv)):
            ln = r["text_bert"][:, 1].sum(1) if aligned else np.minimum(r[f"{m}_lengths"], T)
            x = r[m].astype(np.float32)
            if m == "audio":
                x[np.isneginf(x)] = 0
            x[np.arange(T)[None, :] >= ln[:, None]] = 0
            np.testing.assert_array_equal(o[m], x)
            np.testing.assert_array_equal(o[f"{m}_lengths"], np.maximum(ln, 1))
        assert d.meta["neg_inf_replaced"][s] == 2


def test_traps_are_counted_and_reported(tmp_path):
    p = write_pickle(tmp_path / "f.pkl", mmsa_dict("mosi", False))
    with pytest.warns(UserWarning, match="raised 3 zero length"):
        d = read_mmsa(p)
    m = d.meta
    assert m["lengths_capped"]["train"] == {"audio": 1}
    assert m["zero_lengths_raised"]["train"] == {"vision": 1}
    assert m["samples_with_frames_past_length"]["train"]["vision"] >= 1
    assert "config" not in m["ignored_keys"] and "train/raw_text" in m["ignored_keys"]
    assert "train/text" in m["ignored_keys"]  # text_features=False
    assert "text_feat" not in d.splits["train"]
    assert m["source"].startswith("mmsa:f.pkl sha256=") and len(m["source_sha256"]) == 64


def test_zero_beyond_length_false_keeps_mmsa_bits(tmp_path):
    raw = mmsa_dict("mosi", False)
    p = write_pickle(tmp_path / "f.pkl", raw)
    d = _read(p, zero_beyond_length=False)
    x = raw["train"]["vision"].astype(np.float32)
    np.testing.assert_array_equal(d.splits["train"]["vision"], x)
    a = raw["train"]["audio"].astype(np.float32)
    a[np.isneginf(a)] = 0
    np.testing.assert_array_equal(d.splits["train"]["audio"], a)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols_and_sha(tmp_path, protocol):
    raw = mmsa_dict("mosei", True, sizes=(3, 2, 2))
    p = write_pickle(tmp_path / "f.pkl", raw, protocol=protocol)
    obj, sha = load_pickle(p)
    import hashlib
    assert sha == hashlib.sha256(open(p, "rb").read()).hexdigest()
    np.testing.assert_array_equal(obj["train"]["audio"], raw["train"]["audio"])
    _read(p, expected_sha256=sha)
    with pytest.raises(MMSAPickleError, match="SHA-256 mismatch"):
        _read(p, expected_sha256="0" * 64)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_forbidden_global_is_refused(tmp_path):
    raw = mmsa_dict("mosi", True, sizes=(3, 2, 2))
    raw["train"]["payload"] = _Evil()
    p = write_pickle(tmp_path / "evil.pkl", raw)
    with pytest.raises(ForbiddenGlobalError, match=r"evil\.pkl.*(posix|os)\.system"):
        load_pickle(p)
    # a class instance (copyreg reconstructor) is refused as well
    p2 = write_pickle(tmp_path / "obj.pkl", {"train": {"x": Exception("x")}})
    with pytest.raises(ForbiddenGlobalError, match="builtins.Exception"):
        load_pickle(p2)
    assert issubclass(ForbiddenGlobalError, pickle.UnpicklingError)


def test_truncated_corrupt_empty_and_not_a_dict(tmp_path):
    p = write_pickle(tmp_path / "f.pkl", mmsa_dict("mosi", True, sizes=(3, 2, 2)))
    data = open(p, "rb").read()
    (tmp_path / "trunc.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(MMSAPickleError, match=r"trunc\.pkl.*truncated"):
        load_pickle(tmp_path / "trunc.pkl")
    (tmp_path / "garbage.pkl").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(MMSAPickleError, match=r"garbage\.pkl.*cannot unpickle"):
        load_pickle(tmp_path / "garbage.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(MMSAPickleError, match="empty"):
        load_pickle(tmp_path / "empty.pkl")
    with pytest.raises(FileNotFoundError):
        load_pickle(tmp_path / "missing.pkl")
    write_pickle(tmp_path / "list.pkl", [1, 2])
    with pytest.raises(MMSAPickleError, match="expected MMSA's dict"):
        read_mmsa(tmp_path / "list.pkl")
    write_pickle(tmp_path / "nosplit.pkl", {"train": {}, "valid": {}})
    with pytest.raises(MMSAPickleError, match=r"missing split key\(s\) \['test'\]"):
        read_mmsa(tmp_path / "nosplit.pkl")


def _bad(tmp_path, mutate, like="mosi", aligned=False):
    raw = mmsa_dict(like, aligned, sizes=(6, 5, 5), traps=False)
    mutate(raw)
    return write_pickle(tmp_path / "bad.pkl", raw)


def test_missing_key(tmp_path):
    p = _bad(tmp_path, lambda r: r["valid"].pop("vision"))
    with pytest.raises(MMSAPickleError, match=r"bad\.pkl: split 'valid': missing key\(s\) \['vision'\]"):
        read_mmsa(p)
    p = _bad(tmp_path, lambda r: r["test"].pop("vision_lengths"))
    with pytest.raises(MMSAPickleError, match=r"split 'test': missing key 'vision_lengths'"):
        read_mmsa(p)


def test_mismatched_lengths_across_modalities(tmp_path):
    p = _bad(tmp_path, lambda r: r["train"].__setitem__("audio", r["train"]["audio"][:5]))
    with pytest.raises(MMSAPickleError, match=r"split 'train': mismatched lengths.*'audio' has 5 samples.* 6"):
        read_mmsa(p)


def test_nan_labels_name_sample_and_id(tmp_path):
    def m(r):
        r["test"]["regression_labels"][3] = np.nan
    with pytest.raises(MMSAPickleError, match=r"split 'test', key 'regression_labels': NaN/inf label at sample 3 "
                                              r"\(id 'vid001te\$_\$1'\)"):
        read_mmsa(_bad(tmp_path, m))

    def m2(r):
        r["train"]["regression_labels_A"][2] = np.nan
    with pytest.raises(MMSAPickleError, match=r"key 'regression_labels_A': NaN/inf label at sample 2"):
        read_mmsa(_bad(tmp_path, m2, like="sims"))


@pytest.mark.parametrize("key,shape_fn,pat", [
    ("audio", lambda a: a[:, :, 0], r"key 'audio': wrong dims: expected 3-D \[N, T, D\], got shape \(6, 375\)"),
    ("text_bert", lambda a: a[:, :2], r"key 'text_bert': wrong dims: expected \[N, 3, L\]"),
    ("text_bert", lambda a: a[:, 0], r"key 'text_bert': wrong dims: expected 3-D"),
    ("regression_labels", lambda a: np.stack([a, a], 1), r"key 'regression_labels': wrong dims: expected 1-D"),
    ("id", lambda a: a[:, None], r"key 'id': wrong dims"),
])
def test_wrong_dims(tmp_path, key, shape_fn, pat):
    p = _bad(tmp_path, lambda r: r["train"].__setitem__(key, shape_fn(r["train"][key])))
    with pytest.raises(MMSAPickleError, match=r"bad\.pkl: split 'train', " + pat):
        read_mmsa(p)


def test_label_columns_and_list_lengths_are_accepted(tmp_path):
    def m(r):
        r["train"]["regression_labels"] = r["train"]["regression_labels"][:, None]  # (N, 1)
        r["train"]["audio_lengths"] = list(r["train"]["audio_lengths"])
    d = read_mmsa(_bad(tmp_path, m))
    assert d.splits["train"]["regression"].shape == (6,)


def test_nonfinite_features(tmp_path):
    def m(r):
        r["valid"]["vision"][2, 0, 0] = np.nan
        r["valid"]["vision"][4, 1, 1] = np.inf
    p = _bad(tmp_path, m)
    with pytest.raises(MMSAPickleError, match=r"split 'valid', key 'vision': non-finite values \(NaN 1, \+inf 1, "
                                              r"-inf 0\) in 2 sample\(s\), first at sample 2"):
        read_mmsa(p)
    d = read_mmsa(p, nonfinite="zero")
    assert np.isfinite(d.splits["valid"]["vision"]).all()
    assert d.meta["nonfinite_zeroed"]["valid"] == {"vision": 2}

    def m2(r):
        r["train"]["audio"][1, 0, 0] = np.inf  # +inf in audio is not MMSA's -inf case
    with pytest.raises(MMSAPickleError, match=r"key 'audio': non-finite values \(NaN 0, \+inf 1"):
        read_mmsa(_bad(tmp_path, m2))

    def m3(r):
        r["train"]["audio"][1, 0, 0] = 1e300
    with pytest.raises(MMSAPickleError, match="overflows float32"):
        read_mmsa(_bad(tmp_path, m3))


def test_text_bert_checks(tmp_path):
    def m(r):
        r["train"]["text_bert"][3, 1, 0] = 2
    with pytest.raises(MMSAPickleError, match=r"attention mask \(row 1\) must be 0/1; sample 3"):
        read_mmsa(_bad(tmp_path, m))

    def m2(r):
        r["train"]["text_bert"][1, 2, 0] = 1
    with pytest.raises(MMSAPickleError, match=r"token-type ids \(row 2\) are non-zero at sample 1"):
        read_mmsa(_bad(tmp_path, m2))

    def m3(r):  # MMSA's loader casts text_bert to float32; integral floats are accepted
        r["train"]["text_bert"] = r["train"]["text_bert"].astype(np.float32)
    d = read_mmsa(_bad(tmp_path, m3))
    assert d.splits["train"]["text_ids"].dtype == np.int64

    def m4(r):
        r["train"]["vision_lengths"][0] = -1
    with pytest.raises(MMSAPickleError, match=r"negative length -1 at sample 0"):
        read_mmsa(_bad(tmp_path, m4))


@pytest.mark.parametrize("like,aligned", sorted(REAL))
def test_store_round_trip(tmp_path, like, aligned):
    """pickle -> store -> arrays equals the in-memory conversion, bit for bit."""
    p = write_pickle(tmp_path / "f.pkl", mmsa_dict(like, aligned))
    d = _read(p, text_features=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, meta = mmsa_to_store(p, tmp_path / "f.h5", text_features=True)
    assert verify(out).ok
    with StoreReader(out) as r:
        assert r.meta["dataset"] == like and r.meta["meta"]["aligned"] == aligned
        for s in ("train", "valid", "test"):
            b = r.read_split(s)
            assert set(b) == set(d.splits[s])
            for k, v in d.splits[s].items():
                np.testing.assert_array_equal(b[k], v)


def test_store_conversion_errors_leave_no_file(tmp_path):
    def m(r):
        r["test"]["regression_labels"][0] = np.nan
    p = _bad(tmp_path, m)
    with pytest.raises(MMSAPickleError, match="split 'test'"):
        mmsa_to_store(p, tmp_path / "out.h5")
    assert not any(n.startswith(".out.h5") or n == "out.h5" for n in os.listdir(tmp_path))


def test_summarize(tmp_path):
    p = write_pickle(tmp_path / "f.pkl", mmsa_dict("sims", False, sizes=(3, 2, 2)))
    s = summarize_pickle(p)
    assert "inferred dataset sims" in s and "regression_labels_T" in s and "(3, 400, 33)" in s


def test_split_id():
    assert split_id("03bSnISJMiM$_$11") == ("03bSnISJMiM", "11")
    assert split_id("video_0001$_$0001") == ("video_0001", "0001")
    with pytest.raises(ValueError, match="separator"):
        split_id("abc_1")
