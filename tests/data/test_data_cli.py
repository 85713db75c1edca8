"""`msa-fast data convert|info|verify|synth`, run in-process through msa_fast.cli.main."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import h5py
import numpy as np
import pytest

from msa_fast.cli import main
from msa_fast.data.mmsa_pickle import read_mmsa
from msa_fast.data.store import StoreReader

from .formats import mmsa_dict, sdk_dataset, write_pickle


def run(capsys, *argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_existing_commands_still_there():
    from msa_fast.cli import build_parser

    p = build_parser()
    assert p.parse_args(["info"]).func.__name__ == "_info"
    args = p.parse_args(["bench", "data", "--samples", "64"])
    assert args.func.__name__ == "_bench" and args.op == "data" and args.bench_args == ["--samples", "64"]
    assert p.parse_args(["data", "info", "x.h5"]).data_command == "info"


def test_synth_info_verify(tmp_path, capsys):
    out = str(tmp_path / "mosi.h5")
    code, text, _ = run(capsys, "data", "synth", "--like", "mosi", out, "--seed", "3", "--scale", "0.02",
                        "--aligned", "--dtype", "float16")
    assert code == 0 and "wrote" in text and "aligned" in text
    with StoreReader(out) as r:
        assert r.meta["storage_dtype"] == "float16" and r.meta["seq_lens"]["audio"] == 50
        assert r.meta["meta"]["seed"] == 3
    code, text, _ = run(capsys, "data", "info", out)
    assert code == 0 and "dataset        mosi" in text
    code, text, _ = run(capsys, "data", "verify", out)
    assert code == 0 and "OK" in text
    # corrupt one byte of a data array: verify fails with status 1
    with h5py.File(out, "r") as f:
        off = f["train/audio"].id.get_chunk_info(0).byte_offset
    assert off is not None
    with open(out, "r+b") as fh:
        fh.seek(off + 10)
        b = fh.read(1)
        fh.seek(off + 10)
        fh.write(bytes([b[0] ^ 0xFF]))
    code, text, _ = run(capsys, "data", "verify", out)
    assert code == 1 and "checksum mismatch train/audio" in text
    code, _, err = run(capsys, "data", "synth", "--like", "sims", str(tmp_path / "s.h5"), "--aligned")
    assert code == 1 and "no aligned release" in err


def test_convert_mmsa_and_info_verify_pickle(tmp_path, capsys):
    pkl = write_pickle(tmp_path / "unaligned_39.pkl", mmsa_dict("sims", False))
    out = str(tmp_path / "sims.h5")
    code, text, err = run(capsys, "data", "convert", pkl, out, "--compression", "gzip", "--compression-level", "1",
                          "--text-features")
    assert code == 0, err
    assert "sims (train 9, valid 5, test 6)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = read_mmsa(pkl, text_features=True)
    with StoreReader(out) as r:
        assert r.meta["compression"] == "gzip"
        for s in ("train", "valid", "test"):
            b = r.read_split(s)
            for k, v in d.splits[s].items():
                np.testing.assert_array_equal(b[k], v)
    code, text, _ = run(capsys, "data", "info", pkl)
    assert code == 0 and "MMSA pickle" in text and "regression_labels_T" in text
    code, text, _ = run(capsys, "data", "verify", pkl)
    assert code == 0 and "OK (MMSA pickle, sims, unaligned" in text
    # already a store
    code, _, err = run(capsys, "data", "convert", out, str(tmp_path / "x.h5"))
    assert code == 1 and "already an msa_fast store" in err


def test_convert_bad_inputs_exit_1_with_a_clear_message(tmp_path, capsys):
    raw = mmsa_dict("mosi", False, traps=False)
    raw["valid"]["regression_labels"][1] = np.nan
    pkl = write_pickle(tmp_path / "bad.pkl", raw)
    code, _, err = run(capsys, "data", "convert", pkl, str(tmp_path / "o.h5"))
    assert code == 1 and "bad.pkl: split 'valid', key 'regression_labels': NaN/inf label at sample 1" in err
    assert not (tmp_path / "o.h5").exists()
    (tmp_path / "trunc.pkl").write_bytes(open(pkl, "rb").read()[:1000])
    code, _, err = run(capsys, "data", "verify", str(tmp_path / "trunc.pkl"))
    assert code == 1 and "truncated" in err
    code, _, err = run(capsys, "data", "info", str(tmp_path / "nope.pkl"))
    assert code == 1 and "no such file" in err


def test_convert_csd_directory(tmp_path, capsys):
    sdk = sdk_dataset(tmp_path)
    src = tmp_path
    (src / "folds.json").write_text(json.dumps(sdk["folds"]))
    out = str(tmp_path / "out" / "sdk.h5")
    os.makedirs(os.path.dirname(out))
    code, text, err = run(capsys, "data", "convert", str(src), out, "--seq-len", "20", "--dataset", "mosi")
    assert code == 0, err
    assert os.path.exists(out + ".vocab.txt")
    with StoreReader(out) as r:
        m = r.meta["meta"]
        assert m["source_format"] == "cmu-sdk-csd" and r.meta["seq_lens"]["text"] == 20
        assert set(m["source_files"]) == {"words", "audio", "vision", "labels", "word_vectors"}
        assert r.has("train", "text_feat")
    code, text, _ = run(capsys, "data", "info", sdk["paths"]["audio"])
    assert code == 0 and "computational sequence" in text and "COVAREP" in text
    code, text, _ = run(capsys, "data", "verify", sdk["paths"]["labels"])
    assert code == 0 and "OK" in text
    # no folds -> a clear error
    other = tmp_path / "nofolds"
    other.mkdir()
    for p in sdk["paths"].values():
        shutil.copy(p, other)
    code, _, err = run(capsys, "data", "convert", str(other), str(tmp_path / "o2.h5"))
    assert code == 1 and "--folds" in err
    # a missing sequence -> named
    os.remove(other / "TEST_COVAREP.csd")
    code, _, err = run(capsys, "data", "convert", str(other), str(tmp_path / "o2.h5"), "--folds",
                       str(src / "folds.json"))
    assert code == 1 and "no audio sequence found" in err
