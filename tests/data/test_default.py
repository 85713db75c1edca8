"""msa_fast.data.default: the embedded default dataset, made once in a cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from msa_fast.data import default as dd
from msa_fast.data import synthetic as syn
from msa_fast.data.store import FORMAT_VERSION, StoreReader, verify

TINY = 0.002  # MOSEI: 33 / 8 / 9 samples


def _spy_writes(monkeypatch) -> list:
    calls = []
    real = syn.write_synthetic_store

    def spy(path, *a, **k):
        calls.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(syn, "write_synthetic_store", spy)
    return calls


def test_created_once_then_reused(tmp_path, monkeypatch):
    calls = _spy_writes(monkeypatch)
    p = dd.default_dataset(cache_dir=tmp_path, scale=TINY, seed=3)
    assert p.parent == tmp_path and p.is_file() and len(calls) == 1
    name = p.name
    assert name.startswith("synthetic-mosei-unaligned-scale0.002-seed3-float16-")
    assert f"gen{syn.GENERATOR_VERSION}-fmt{FORMAT_VERSION}.h5" in name
    assert p == dd.default_dataset_path(cache_dir=tmp_path, scale=TINY, seed=3)
    mtime = p.stat().st_mtime_ns
    assert dd.default_dataset(cache_dir=tmp_path, scale=TINY, seed=3) == p
    assert len(calls) == 1 and p.stat().st_mtime_ns == mtime                 # reused, not rewritten
    assert sorted(f.name for f in tmp_path.iterdir() if not f.name.startswith(".")) == [name]  # no temp left
    assert verify(p).ok
    ref = syn.make_synthetic("mosei", scale=TINY, seed=3, dtype="float16")
    with StoreReader(p) as r:
        assert r.meta["dataset"] == "mosei" and r.meta["storage_dtype"] == "float16"
        assert r.meta["meta"]["synthetic"] is True and r.meta["meta"]["seed"] == 3
        assert r.meta["meta"]["tokenizer"] == syn.synthetic_meta("mosei")["tokenizer"]
        assert {s: r.num_samples(s) for s in r.splits} == {"train": 33, "valid": 8, "test": 9}
        for s in ref:
            got = r.read_split(s)
            for k in ref[s]:
                np.testing.assert_array_equal(got[k], ref[s][k], err_msg=f"{s}/{k}")


def test_arguments_select_distinct_files(tmp_path):
    a = dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, seed=0, aligned=True)
    b = dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, seed=1, aligned=True)
    c = dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, seed=0, aligned=True, dtype="float32")
    d = dd.default_dataset("sims", cache_dir=tmp_path, scale=0.01, seed=0)
    assert len({a, b, c, d}) == 4
    assert "-aligned-" in a.name and "float32" in c.name and "tok_builtin" in d.name
    if syn.synthetic_meta("mosi")["tokenizer"] == syn.PACKAGED_TOKENIZER:
        assert "tok_bert-base-uncased" in a.name
    e = dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, seed=0, aligned=True, tokenizer="builtin")
    assert "tok_builtin" in e.name and e != a
    with pytest.raises(ValueError, match="no aligned release"):
        dd.default_dataset("sims", cache_dir=tmp_path, aligned=True)
    with pytest.raises(ValueError, match="scale"):
        dd.default_dataset(cache_dir=tmp_path, scale=0)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(dd.CACHE_ENV, str(tmp_path / "env_cache"))
    assert dd.default_cache_dir() == tmp_path / "env_cache"
    assert dd.default_cache_dir(tmp_path / "x") == tmp_path / "x"
    p = dd.default_dataset("mosi", scale=0.01, aligned=True)
    assert p.parent == tmp_path / "env_cache" and p.is_file()
    monkeypatch.delenv(dd.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dd.default_cache_dir() == tmp_path / "xdg" / "msa_fast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dd.default_cache_dir() == tmp_path / "home" / ".cache" / "msa_fast"


def test_broken_file_is_recreated(tmp_path, monkeypatch):
    p = dd.default_dataset_path("mosi", cache_dir=tmp_path, scale=0.01, aligned=True)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"truncated garbage")
    calls = _spy_writes(monkeypatch)
    with pytest.warns(RuntimeWarning, match="re-creating the default dataset"):
        q = dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, aligned=True)
    assert q == p and len(calls) == 1 and verify(p).ok


def test_concurrent_callers_make_it_once(tmp_path, monkeypatch):
    calls = _spy_writes(monkeypatch)
    out, errors = [], []

    def run():
        try:
            out.append(dd.default_dataset("mosi", cache_dir=tmp_path, scale=0.01, aligned=True, seed=5))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(out)) == 1 and len(calls) == 1


def test_default_scale_is_a_few_thousand_mosei_samples():
    from msa_fast.data.schema import get_shape

    sizes = {s: round(n * dd.DEFAULT_SCALE) for s, n in get_shape("mosei").split_sizes.items()}
    assert 2000 <= sizes["train"] <= 5000, sizes
    assert dd.DEFAULT_DTYPE in ("float16", "float32")


def test_lazy_exports_and_light_import():
    import msa_fast.data as data

    assert data.default_dataset is dd.default_dataset and data.DEFAULT_SCALE == dd.DEFAULT_SCALE
    code = ("import sys, msa_fast.data as d; d.default_dataset; d.default_dataset_path; "
            "print('h5py' in sys.modules, 'transformers' in sys.modules)")
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert res.stdout.split() == ["False", "False"]
