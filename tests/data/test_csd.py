"""msa_fast.data.csd: CMU-SDK computational sequences in their real layout, alignment, folds, store round trip."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import torch

from msa_fast.data.csd import (CSDError, ComputationalSequence, align_to_reference, build_utterances, csd_to_store,
                               load_folds, write_csd)
from msa_fast.data.loader import StoreDataset
from msa_fast.data.store import StoreReader, verify

from .formats import sdk_dataset, write_csd as fixture_write_csd


@pytest.fixture
def sdk(tmp_path):
    return sdk_dataset(tmp_path)


def _build(sdk, **kw):
    p = sdk["paths"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_utterances(p["words"], p["audio"], p["vision"], p["labels"], sdk["folds"],
                                word_vectors=p.get("word_vectors"), **kw)


def test_reader_layout_and_metadata(sdk):
    with ComputationalSequence(sdk["paths"]["audio"]) as cs:
        assert cs.root == "COVAREP" and cs.videos == sorted(sdk["audio"]) and cs.dim == 7 and not cs.is_words
        f, iv = cs["video00"]
        np.testing.assert_array_equal(f, sdk["audio"]["video00"]["features"])
        np.testing.assert_array_equal(iv, sdk["audio"]["video00"]["intervals"])
        assert cs.metadata["alignment compatible"] is True and cs.metadata["computational sequence version"] == "1.0"
        assert "COVAREP" in cs.describe()
        with pytest.raises(KeyError, match="no video 'nope'"):
            cs["nope"]
    with ComputationalSequence(sdk["paths"]["words"]) as cs:
        assert cs.is_words
        f, _ = cs["video01"]
        assert f.dtype.kind == "S" and f.shape[1] == 1


def test_fused_metadata_key_and_raw_string_fallback(tmp_path):
    data = {"v": {"features": np.ones((2, 3)), "intervals": np.array([[0, 1], [1, 2]], float)}}
    p = fixture_write_csd(tmp_path / "f.csd", "root", data, fused_key=True)
    with h5py.File(p, "a") as f:
        ds = f["root/metadata"].create_dataset("creator2", (1,), dtype=h5py.string_dtype())
        ds[0] = "not json {"
    with ComputationalSequence(p) as cs:
        assert "dimension namescomputational sequence version" in cs.metadata
        assert "dimension names" in cs.metadata and cs.dimension_names is None
        assert cs.metadata["creator2"] == "not json {"


def _one_video(tmp_path, features, intervals, name="bad.csd"):
    p = tmp_path / name
    with h5py.File(p, "w") as f:
        v = f.create_group("seq/data/vidA")
        v.create_dataset("features", data=features)
        v.create_dataset("intervals", data=intervals)
    return p


def test_integrity_errors_name_file_and_video(tmp_path):
    iv = np.array([[0, 1], [1, 2], [2, 3]], float)
    p = _one_video(tmp_path, np.ones((2, 4)), iv)
    with pytest.raises(CSDError, match=r"bad\.csd: video 'vidA': 'features' has 2 rows but 'intervals' has 3"):
        ComputationalSequence(p)["vidA"]
    p = _one_video(tmp_path, np.ones((3, 4)), np.ones((3, 3)), "bad2.csd")
    with pytest.raises(CSDError, match=r"bad2\.csd: video 'vidA': 'intervals' must be \[n, 2\]"):
        ComputationalSequence(p).validate()
    p = _one_video(tmp_path, np.ones(3), iv, "bad3.csd")
    with pytest.raises(CSDError, match=r"bad3\.csd: video 'vidA': 'features' must be at least 2-D"):
        ComputationalSequence(p)["vidA"]
    (tmp_path / "junk.csd").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(CSDError, match=r"junk\.csd: not an HDF5 file"):
        ComputationalSequence(tmp_path / "junk.csd")
    with h5py.File(tmp_path / "nodata.csd", "w") as f:
        f.create_group("root/metadata")
    with pytest.raises(CSDError, match="has no 'data' group"):
        ComputationalSequence(tmp_path / "nodata.csd")
    with pytest.raises(FileNotFoundError):
        ComputationalSequence(tmp_path / "missing.csd")


def test_truncated_csd(sdk, tmp_path):
    raw = open(sdk["paths"]["audio"], "rb").read()
    (tmp_path / "trunc.csd").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CSDError, match=r"trunc\.csd"):
        cs = ComputationalSequence(tmp_path / "trunc.csd")
        cs.validate()


def test_align_to_reference_matches_a_loop():
    rng = np.random.default_rng(0)
    ref = np.array([[0.0, 0.5], [0.5, 0.5 + 1e-7], [0.5, 1.3], [5.0, 6.0], [1.3, 1.31]])
    t = np.arange(0, 2, 0.1)
    iv = np.stack([t, t + 0.1], 1)
    feats = rng.standard_normal((len(t), 3))
    out, found = align_to_reference(ref, iv, feats)
    for i, (rs, re) in enumerate(ref):
        sel = [j for j in range(len(t)) if min(iv[j, 1], re) - max(iv[j, 0], rs) >= 1e-5]
        if sel:
            np.testing.assert_array_equal(out[i], feats[sel].mean(0))
        else:
            assert not found[i] and not out[i].any()
    assert found.tolist() == [True, False, True, False, True]
    # unsorted intervals take the general path and agree
    perm = rng.permutation(len(t))
    out2, found2 = align_to_reference(ref, iv[perm], feats[perm])
    np.testing.assert_allclose(out2, out, rtol=1e-12)
    assert (found2 == found).all()


def _expected(sdk, seq_len=50, keep="first"):
    """Reference build with plain loops over the fixture's ground truth."""
    out = {}
    vocab = sorted({w.decode() for v in sdk["words"].values() for w in v["features"][:, 0]})
    for split, vids in sdk["folds"].items():
        rows = []
        for vid in sorted(vids):
            w = sdk["words"][vid]
            for k, (ls, le) in enumerate(sdk["labels"][vid]["intervals"]):
                sel = [i for i, (s, e) in enumerate(w["intervals"]) if min(e, le) - max(s, ls) >= 1e-5]
                sel = sel[:seq_len] if keep == "first" else sel[-seq_len:]
                feats = {}
                for m in ("audio", "vision", "word_vectors"):
                    seq = sdk[m][vid]
                    vals = []
                    for i in sel:
                        ws, we = w["intervals"][i]
                        hit = [j for j, (s, e) in enumerate(seq["intervals"]) if min(e, we) - max(s, ws) >= 1e-5]
                        vals.append(seq["features"][hit].astype(np.float64).mean(0) if hit
                                    else np.zeros(seq["features"].shape[1]))
                    feats[m] = np.array(vals, dtype=np.float32)
                ids = [vocab.index(w["features"][i, 0].decode()) + 1 for i in sel]
                rows.append((f"{vid}$_${k}", ids, feats, float(sdk["labels"][vid]["features"][k, 0])))
        out[split] = rows
    return out, vocab


@pytest.mark.parametrize("keep,seq_len", [("first", 50), ("first", 8), ("last", 8)])
def test_build_matches_reference(sdk, keep, seq_len):
    d = _build(sdk, keep=keep, seq_len=seq_len, dataset="mosi")
    exp, vocab = _expected(sdk, seq_len, keep)
    assert d.vocab == vocab
    for split, rows in exp.items():
        s = d.splits[split]
        assert list(s["id"]) == [r[0] for r in rows]
        assert s["audio"].shape == (len(rows), seq_len, 7) and s["vision"].shape[2] == 5
        assert s["text_feat"].shape[2] == 6
        for i, (uid, ids, feats, y) in enumerate(rows):
            n = len(ids)
            assert s["audio_lengths"][i] == s["vision_lengths"][i] == s["text_mask"][i].sum() == n
            assert s["text_ids"][i, :n].tolist() == ids and not s["text_ids"][i, n:].any()
            np.testing.assert_array_equal(s["audio"][i, :n], feats["audio"])
            np.testing.assert_array_equal(s["vision"][i, :n], feats["vision"])
            np.testing.assert_array_equal(s["text_feat"][i, :n], feats["word_vectors"])
            assert not s["audio"][i, n:].any()
            assert s["regression"][i] == np.float32(y)
    assert d.meta["padding_side"] == "right" and d.meta["dataset"] == "mosi"


def test_unify_folds_and_reporting(tmp_path):
    sdk = sdk_dataset(tmp_path, n_videos=7)
    # one video lacks vision; one video is in no fold; a fold lists a video that does not exist
    with h5py.File(sdk["paths"]["vision"], "a") as f:
        del f["FACET 4.2/data/video06"]
    folds = {"train": ["video00", "video01", "video02"], "valid": ["video03", "ghost"], "test": ["video04", "video06"]}
    p = sdk["paths"]
    with pytest.warns(UserWarning, match=r"1 videos not in every sequence.*1 videos in no fold.*2 fold videos "
                                         r"missing"):
        d = build_utterances(p["words"], p["audio"], p["vision"], p["labels"], folds)
    assert d.meta["videos_in_no_fold"] == 1 and d.meta["fold_videos_missing"] == 2
    assert {u.split("$_$")[0] for u in d.splits["test"]["id"]} == {"video04"}
    jf = tmp_path / "folds.json"
    jf.write_text(json.dumps(folds))
    assert load_folds(jf) == folds
    with pytest.raises(CSDError, match="'video00' is in both"):
        load_folds({"train": ["video00"], "valid": ["video00"], "test": []})
    with pytest.raises(CSDError, match="missing split"):
        load_folds({"train": []})
    with pytest.raises(CSDError, match="no segments for split 'test'"):
        build_utterances(p["words"], p["audio"], p["vision"], p["labels"],
                         {"train": ["video00"], "valid": ["video01"], "test": ["ghost"]})


def test_nonfinite_and_nan_labels(tmp_path):
    sdk = sdk_dataset(tmp_path)
    p = sdk["paths"]
    a = sdk["audio"]
    a["video01"]["features"][3, 0] = -np.inf
    write_csd(p["audio"], "COVAREP", a)
    d = _build(sdk)
    assert d.meta["neg_inf_replaced"] == 1 and np.isfinite(d.splits["train"]["audio"]).all()
    a["video01"]["features"][5, 1] = np.nan
    write_csd(p["audio"], "COVAREP", a)
    with pytest.raises(CSDError, match=r"TEST_COVAREP\.csd: video 'video01': non-finite features \(NaN 1"):
        _build(sdk)
    assert _build(sdk, nonfinite="zero").meta["nonfinite_zeroed"] == 1
    lab = sdk["labels"]
    lab["video02"]["features"][0, 0] = np.nan
    write_csd(p["labels"], "Opinion Segment Labels", lab)
    with pytest.raises(CSDError, match=r"TEST_Labels\.csd: video 'video02', segment 0: NaN/inf label"):
        _build(sdk, nonfinite="zero")
    with pytest.raises(CSDError, match="expected a word sequence"):
        build_utterances(p["audio"], p["audio"], p["vision"], p["labels"], sdk["folds"])


def test_drop_silence(sdk):
    d = _build(sdk, drop_silence=True)
    assert "sp" not in d.vocab
    assert sum(len(r[1]) for r in _expected(sdk)[0]["train"]) > int(d.splits["train"]["text_mask"].sum())


def test_store_round_trip(sdk, tmp_path):
    d = _build(sdk, seq_len=20)
    p = sdk["paths"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, meta = csd_to_store(tmp_path / "sdk.h5", p["words"], p["audio"], p["vision"], p["labels"], sdk["folds"],
                                 word_vectors=p["word_vectors"], seq_len=20, dataset="mosi")
    assert verify(out).ok
    assert open(out + ".vocab.txt").read().splitlines() == d.vocab
    with StoreReader(out) as r:
        assert r.meta["meta"]["vocab_size"] == len(d.vocab) and r.meta["dataset"] == "mosi"
        for s in ("train", "valid", "test"):
            b = r.read_split(s)
            for k, v in d.splits[s].items():
                np.testing.assert_array_equal(b[k], v)
            ds = StoreDataset(out, s)
            t = ds[list(range(len(ds)))]
            assert torch.equal(t.audio, torch.from_numpy(d.splits[s]["audio"]))
            assert torch.equal(t.text_feat, torch.from_numpy(d.splits[s]["text_feat"]))
            assert t.id == list(d.splits[s]["id"])
