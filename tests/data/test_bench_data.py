"""benchmarks/bench_data.py: data preparation and one in-process measurement of each path (tiny sizes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench = pytest.importorskip("benchmarks.bench_data")


def test_prepare_and_measure_in_process(tmp_path):
    store, pkl, info = bench.prepare(tmp_path, 96, "float32", None, "float64")
    assert info["sizes"] == {"train": 96, "valid": 11, "test": 27}
    from msa_fast.data.mmsa_pickle import read_mmsa
    from msa_fast.data.store import StoreReader

    d = read_mmsa(pkl)
    with StoreReader(store) as r:  # the two files hold the same samples
        for s in ("train", "test"):
            b = r.read_split(s)
            for k in ("audio", "vision", "text_ids", "regression", "id"):
                np.testing.assert_array_equal(b[k], d.splits[s][k])
    for cfg in ({"source": "store", "store": store, "workers": 0, "cold": True},
                {"source": "pickle", "pickle": pkl, "workers": 0}):
        r = bench.child({**cfg, "epochs": 3, "threads": None})
        assert r["batches"] == 3 and len(r["rates"]) == 1 and r["rates"][0] > 0
        assert np.isfinite(r["memory_mib"]) and np.isfinite(r["peak_rss_mib"])  # meaningful only at real sizes
    assert "load_s" in r
