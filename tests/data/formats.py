"""Builders of small real-format files for the data tests: MMSA feature pickles (data.md §1) and
CMU-SDK ``.csd`` computational sequences (data.md §2), with the traps of the real files."""

from __future__ import annotations

import json
import pickle

import numpy as np

from msa_fast.data.schema import get_shape

# (text_len, audio T, vision T, audio D, vision D) of the real files, data.md §1.2
REAL = {
    ("mosi", True): (50, 50, 50, 5, 20),
    ("mosi", False): (50, 375, 500, 5, 20),
    ("mosei", True): (50, 50, 50, 74, 35),
    ("mosei", False): (50, 500, 500, 74, 35),
    ("sims", False): (39, 400, 55, 33, 709),
}


def mmsa_split(like: str, aligned: bool, n: int, rng: np.random.Generator, *, split: str = "train",
               traps: bool = True, text_dim: int = 768, av_dtype=np.float64) -> dict:
    """One split of an MMSA pickle, exactly as MMSA/MMSA-FET lay it out."""
    lt, ta, tv, da, dv = REAL[(like, aligned)]
    tl = rng.integers(3, lt - 1, n)  # text length incl. [CLS]/[SEP]
    mask = (np.arange(lt)[None, :] < tl[:, None]).astype(np.int64)
    ids = rng.integers(1000, 30000, (n, lt)) * mask
    ids[:, 0] = 101
    ids[np.arange(n), tl - 1] = 102
    text_bert = np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.int64)      # [N, 3, L]
    text = (rng.standard_normal((n, lt, text_dim)) * mask[:, :, None]).astype(np.float32)
    if aligned:
        la, lv = tl.copy(), tl.copy()
    else:
        la, lv = rng.integers(1, ta + 1, n), rng.integers(1, tv + 1, n)
    audio = rng.standard_normal((n, ta, da)).astype(av_dtype)
    vision = rng.standard_normal((n, tv, dv)).astype(av_dtype)
    audio[np.arange(ta)[None, :] >= la[:, None]] = 0
    vision[np.arange(tv)[None, :] >= lv[:, None]] = 0
    if traps and not aligned:
        # values past the recorded lengths (MOSI: 302/2199 vision rows, 71 audio rows)
        for i in range(0, n, 3):
            if lv[i] < tv:
                vision[i, lv[i]:] = 0.25
        if la[1] < ta:
            audio[1, la[1]:, 0] = -1.5
        # a recorded length beyond the padded length, and a zero length
        if n > 4:
            la[4] = ta + 7
            lv[2] = 0
    if traps:
        audio[0, 0, 0] = -np.inf   # COVAREP -inf
        audio[min(2, n - 1), 0, min(1, da - 1)] = -np.inf
    label_step = get_shape(like).label_step
    lo, hi = get_shape(like).label_range
    y = np.round(rng.uniform(lo, hi, n) / label_step) * label_step
    y[0] = 0.0
    out = {
        "raw_text": np.array([f"utterance {i}" for i in range(n)], dtype=object),
        "audio": audio,
        "vision": vision,
        "id": np.array([f"vid{i // 3:03d}{split[:2]}$_${i % 3 + 1}" for i in range(n)]),
        "text": text,
        "text_bert": text_bert,
        "annotations": np.array(["Negative" if v < 0 else "Neutral" if v == 0 else "Positive" for v in y]),
        "classification_labels": np.sign(y).astype(np.float32) + 1,
        "regression_labels": y.astype(np.float32),
    }
    if not aligned:
        out["audio_lengths"] = la
        out["vision_lengths"] = lv
    if like == "sims":
        for m in "TAV":
            out[f"regression_labels_{m}"] = np.clip(np.round((y + rng.normal(0, .3, n)) / .2) * .2, -1,
                                                     1).astype(np.float32)
    return out


def mmsa_dict(like: str = "mosi", aligned: bool = False, sizes=(9, 5, 6), seed: int = 0, **kw) -> dict:
    rng = np.random.default_rng(seed)
    d = {s: mmsa_split(like, aligned, n, rng, split=s, **kw) for s, n in zip(("train", "valid", "test"), sizes)}
    if like == "sims":
        d["config"] = {"feature_extraction": "MMSA-FET", "seq_len": [39, 400, 55]}
    return d


def write_pickle(path, obj, protocol: int = 4) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


# --------------------------------------------------------------------------- CMU-SDK .csd


def write_csd(path, root: str, data: dict, metadata: dict | None = None, *, fused_key: bool = False) -> str:
    """Write a computational sequence in the SDK's layout: /<root>/data/<vid>/{features,intervals},
    /<root>/metadata/<key> = JSON string of shape (1,), gzip 9 as the SDK writer does."""
    import h5py

    metadata = dict(metadata or {"root name": root, "computational sequence description": f"test {root}",
                                 "dimension names": None, "computational sequence version": "1.0",
                                 "alignment compatible": True, "dataset name": "test", "dataset version": "1.0",
                                 "creator": "tests", "contact": "none", "featureset bib citation": "",
                                 "dataset bib citation": ""})
    if fused_key:  # the SDK template's missing comma
        metadata["dimension namescomputational sequence version"] = metadata.pop("dimension names", None)
        metadata.pop("computational sequence version", None)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        d = g.create_group("data")
        for vid, entry in data.items():
            v = d.create_group(vid)
            feats = entry["features"]
            v.create_dataset("features", data=feats, compression="gzip", compression_opts=9)
            v.create_dataset("intervals", data=entry["intervals"], compression="gzip", compression_opts=9)
        m = g.create_group("metadata")
        dt = h5py.special_dtype(vlen=str)
        for k, val in metadata.items():
            ds = m.create_dataset(k, (1,), dtype=dt)
            ds[0] = json.dumps(val)
    return str(path)


def sdk_dataset(tmp_path, n_videos: int = 6, seed: int = 0, *, da: int = 7, dv: int = 5, dw: int = 6,
                fused_key: bool = False) -> dict:
    """A small MOSI-like SDK dataset: words (byte strings, b'sp' = silence), word vectors, audio at
    ~100 Hz, vision at ~30 Hz, and opinion-segment labels (1 column). Returns the csd paths and the
    ground-truth structure used to build them."""
    rng = np.random.default_rng(seed)
    words, wvecs, audio, vision, labels = {}, {}, {}, {}, {}
    vocab = [b"i", b"like", b"this", b"movie", b"not", b"good", b"sp", b"bad", b"great"]
    for v in range(n_videos):
        vid = f"video{v:02d}"
        n_words = int(rng.integers(12, 30))
        dur = rng.uniform(0.2, 0.5, n_words)
        ends = np.cumsum(dur)
        starts = ends - dur
        iv = np.stack([starts, ends], 1)
        w = np.array([[vocab[int(k)]] for k in rng.integers(0, len(vocab), n_words)], dtype="S")
        words[vid] = {"features": w, "intervals": iv}
        wv = rng.standard_normal((n_words, dw)).astype(np.float32)
        wv[w[:, 0] == b"sp"] = 0
        wvecs[vid] = {"features": wv, "intervals": iv}
        T = ends[-1]
        ta = np.arange(0, T, 0.01)
        audio[vid] = {"features": rng.standard_normal((len(ta), da)), "intervals": np.stack([ta, ta + 0.01], 1)}
        tv = np.arange(0, T, 1 / 30)
        vision[vid] = {"features": rng.standard_normal((len(tv), dv)).astype(np.float32),
                       "intervals": np.stack([tv, tv + 1 / 30], 1)}
        # 2-3 opinion segments covering consecutive words
        cuts = np.sort(rng.choice(np.arange(3, n_words - 3), size=int(rng.integers(1, 3)), replace=False))
        bounds = [0, *cuts.tolist(), n_words]
        seg_iv = np.array([[starts[a], ends[b - 1]] for a, b in zip(bounds[:-1], bounds[1:])])
        lab = (np.round(rng.uniform(-3, 3, len(seg_iv)) * 3) / 3)[:, None]
        labels[vid] = {"features": lab, "intervals": seg_iv}
    paths = {
        "words": write_csd(tmp_path / "TEST_TimestampedWords.csd", "words", words, fused_key=fused_key),
        "word_vectors": write_csd(tmp_path / "TEST_TimestampedWordVectors.csd", "glove_vectors", wvecs),
        "audio": write_csd(tmp_path / "TEST_COVAREP.csd", "COVAREP", audio),
        "vision": write_csd(tmp_path / "TEST_Facet.csd", "FACET 4.2", vision),
        "labels": write_csd(tmp_path / "TEST_Labels.csd", "Opinion Segment Labels", labels),
    }
    vids = sorted(words)
    folds = {"train": vids[:-2], "valid": vids[-2:-1], "test": vids[-1:]}
    return {"paths": paths, "folds": folds, "words": words, "word_vectors": wvecs, "audio": audio,
            "vision": vision, "labels": labels}
