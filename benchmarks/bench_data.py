"""Loader benchmark (issue 4): MOSEI-shaped unaligned batches of 256 from msa_fast's HDF5 store vs from an
in-memory MMSA pickle; samples/s and the resident memory each needs.

Data: the synthetic MOSEI generator, unaligned (text ids [N, 50], audio [N, 500, 74], vision [N, 500, 35]),
with ``--samples`` train samples (default 8192, half of MOSEI's 16,326) and valid/test in MOSEI's
proportions (1871 : 4659). Batches are read from train. It is written

* as an msa_fast store (float32, uncompressed by default; ``--dtype``/``--compression``), and
* as an MMSA pickle in MMSA's exact layout (``text`` BERT features [N, 50, 768] float32, ``text_bert``
  [N, 3, 50] int64, float64 audio/vision as in the MOSI files — ``--pickle-dtype float32`` for the
  other possibility — lengths, labels, ids), i.e. what a user downloads.

Every measurement runs in a fresh subprocess, so memory is not shared between them:

* ``store`` (``workers=W``): ``make_loader(store, 'train', 256, shuffle=True)`` (block shuffle, one
  ``read_batch`` per batch) for ``--epochs`` epochs. ``cold`` evicts the store file from the page cache
  before every epoch (``posix_fadvise(DONTNEED)`` on that file only), ``warm`` reads it from the cache.
* ``mmsa_pickle``: ``read_mmsa`` (restricted unpickling + float32 conversion, load time reported), then the
  same sampler (uniform shuffle) over the in-memory arrays through the same ``StoreDataset``/``Batch`` code.

Throughput (metric ``throughput``, samples/s): p50/p20/p80 over windows of 4 consecutive batches (the
first 2 batches of the run are warm-up); the 1-minute load average before and after each measurement is
recorded (on a shared machine, read the numbers with it in mind). Memory (metric ``memory``, MiB): the largest PSS of the
subprocess and its DataLoader workers, sampled every batch, minus the PSS measured after the imports
and before any data was touched (so it is what the data path itself keeps resident; PSS splits pages
shared between the workers and the parent). ``peak_rss`` (MiB) is the kernel's high-water RSS of the main
process (VmHWM, reset after the imports through /proc/self/clear_refs) minus the RSS at that point: for
the pickle it includes the transient full unpickled file.

    python benchmarks/bench_data.py                      # ~5-8 min on 2 CPU cores (an 8 GB pickle is
                                                         # written and read), ~10 GB RAM peak
    python benchmarks/bench_data.py --samples 2048 --epochs 2
    msa-fast bench data [same options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_data.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 256
KERNEL = "data_loader"


# ---------------------------------------------------------------------------- memory probes (child side)


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out.append(int(name))
    return out


def _tree_pss_mib() -> float:
    me = os.getpid()
    return sum(_pss_kib(p) for p in [me, *_children(me)]) / 1024


def _status_mib(field: str) -> float:
    from benchmarks import harness

    return harness.proc_status_kib(field).get(field, float("nan")) / 1024


def _evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- child: one measurement


def _iterate(loader, epochs: int, evict: str | None) -> tuple[list[float], float, int]:
    """(per-window samples/s, max tree PSS MiB, batches)."""
    times, sizes, pss = [], [], 0.0
    for _ in range(epochs):
        if evict:
            _evict(evict)
        t = time.perf_counter()
        for b in loader:
            now = time.perf_counter()
            times.append(now - t)
            sizes.append(len(b))
            pss = max(pss, _tree_pss_mib())
            del b
            t = time.perf_counter()  # the probe is outside the timed window
    rates = []
    times, sizes = times[2:], sizes[2:]
    w = max(1, min(4, len(times)))
    for i in range(0, len(times) - w + 1, w):
        rates.append(sum(sizes[i:i + w]) / sum(times[i:i + w]))
    return rates, pss, len(sizes) + 2


def child(cfg: dict) -> dict:
    import numpy as np  # noqa: F401
    import torch

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    from benchmarks import harness
    from msa_fast.data.loader import make_loader
    from msa_fast.data.mmsa_pickle import read_mmsa

    import gc

    gc.collect()
    base = _tree_pss_mib()
    base_rss = _status_mib("VmRSS")
    res: dict = {"baseline_pss_mib": base, "baseline_rss_mib": base_rss, "hwm_reset": harness.reset_rss_peak()}
    if cfg["source"] == "store":
        loader = make_loader(cfg["store"], "train", BATCH, shuffle=True, seed=0, num_workers=cfg["workers"],
                             pin_memory=False, prefetch_factor=cfg.get("prefetch", 2))
        res["block_size"] = loader.sampler.block_size
        rates, pss, n = _iterate(loader, cfg["epochs"], cfg["store"] if cfg["cold"] else None)
    else:
        import warnings

        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = read_mmsa(cfg["pickle"])
        res["load_s"] = time.perf_counter() - t
        res["pss_after_load_mib"] = _tree_pss_mib() - base
        arrays = data.splits["train"]
        loader = make_loader(arrays, "train", BATCH, shuffle=True, seed=0, num_workers=cfg["workers"],
                             pin_memory=False)
        rates, pss, n = _iterate(loader, cfg["epochs"], None)
    res.update(rates=rates, memory_mib=pss - base, peak_rss_mib=_status_mib("VmHWM") - base_rss, batches=n)
    return res


def _run_child(cfg: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({cfg['source']}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- data preparation


def prepare(workdir: Path, n: int, dtype: str, compression: str | None, pickle_dtype: str,
            write_pickle: bool = True) -> tuple[str, str | None, dict]:
    """Write ``n`` train samples (and valid/test in MOSEI's proportions) as a store and as an MMSA pickle."""
    import pickle

    import numpy as np

    from msa_fast.data.store import write_store
    from msa_fast.data.synthetic import make_synthetic_split, synthetic_meta

    scale = n / 16326
    sizes = {"train": n, "valid": max(8, round(n * 1871 / 16326)), "test": max(8, round(n * 4659 / 16326))}
    t = time.perf_counter()
    splits = {}
    for s, m in sizes.items():
        sp = make_synthetic_split("mosei", s, seed=0, scale=scale, min_samples=m)
        splits[s] = {k: v[:m] for k, v in sp.items()}
    gen_s = time.perf_counter() - t
    store = workdir / "mosei_unaligned.h5"
    t = time.perf_counter()
    write_store(store, splits, synthetic_meta("mosei", seed=0, scale=scale), dtype=dtype, compression=compression)
    store_s = time.perf_counter() - t
    if not write_pickle:
        return str(store), None, {"generate_s": gen_s, "write_store_s": store_s, "sizes": sizes,
                                  "store_bytes": os.path.getsize(store), "write_pickle_s": 0.0, "pickle_bytes": 0}
    # the same samples as an MMSA unaligned_50.pkl, in MMSA's exact layout
    rng = np.random.default_rng(0)
    mmsa = {}
    for s in list(splits):
        sp = splits.pop(s)
        m = len(sp["id"])
        mask = sp["text_mask"].astype(np.int64)
        mmsa[s] = {
            "raw_text": np.array(["synthetic utterance"] * m, dtype=object),
            "audio": sp["audio"].astype(pickle_dtype),
            "vision": sp["vision"].astype(pickle_dtype),
            "id": sp["id"],
            "text": rng.standard_normal((m, 50, 768), dtype=np.float32) * mask[:, :, None],
            "text_bert": np.stack([sp["text_ids"].astype(np.int64), mask, np.zeros_like(mask)], axis=1),
            "annotations": np.array(["Neutral"] * m),
            "classification_labels": np.ones(m, np.float32),
            "regression_labels": sp["regression"],
            "audio_lengths": sp["audio_lengths"].astype(np.int64),
            "vision_lengths": sp["vision_lengths"].astype(np.int64),
        }
        del sp
    pkl = workdir / "unaligned_50.pkl"
    t = time.perf_counter()
    with open(pkl, "wb") as f:
        pickle.dump(mmsa, f, protocol=4)
    pickle_s = time.perf_counter() - t
    del mmsa
    info = {"generate_s": gen_s, "write_store_s": store_s, "write_pickle_s": pickle_s, "sizes": sizes,
            "store_bytes": os.path.getsize(store), "pickle_bytes": os.path.getsize(pkl)}
    return str(store), str(pkl), info


# ---------------------------------------------------------------------------- main


def _stats(xs):
    from benchmarks import harness

    return harness.stats(xs) if xs else harness.Stats(float("nan"), float("nan"), float("nan"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="msa-fast bench data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8192, help="train samples (MOSEI has 16326)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs read per measurement")
    parser.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts for the store")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="store feature dtype")
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    parser.add_argument("--pickle-dtype", choices=("float64", "float32"), default="float64",
                        help="audio/vision dtype inside the MMSA pickle (MOSI's files are float64)")
    parser.add_argument("--no-pickle", action="store_true", help="skip the in-memory pickle measurement")
    parser.add_argument("--no-cold", action="store_true", help="skip the page-cache-evicted store measurement")
    parser.add_argument("--workdir", default=None, help="where the data files go (default: a temp dir, removed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the measuring processes")
    parser.add_argument("--csv", default=None, help="results file (default benchmarks/results.csv)")
    parser.add_argument("--no-csv", action="store_true")
    parser.add_argument("--quick", action="store_true", help="512 samples, 1 epoch (smoke test; not a measurement)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.epochs = 512, 2

    from benchmarks import harness

    info = harness.RunInfo.collect("cpu")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_", dir=os.environ.get("MSA_FAST_BENCH_DIR"))
        workdir = Path(tmp.name)
    try:
        harness.log(f"preparing {args.samples} MOSEI-shaped unaligned samples in {workdir} ...")
        store, pkl, prep = prepare(workdir, args.samples, args.dtype,
                                   None if args.compression == "none" else args.compression, args.pickle_dtype,
                                   write_pickle=not args.no_pickle)
        harness.log(f"  store {prep['store_bytes'] / 2**20:.0f} MiB ({prep['write_store_s']:.1f} s), pickle "
                    f"{prep['pickle_bytes'] / 2**20:.0f} MiB ({prep['write_pickle_s']:.1f} s)")
        runs = []
        for w in [int(x) for x in args.workers.split(",") if x.strip()]:
            for cold in ([False] if args.no_cold else [False, True]):
                runs.append(("store", f"workers={w},{'cold' if cold else 'warm'}",
                             {"source": "store", "store": store, "workers": w, "cold": cold}))
        if not args.no_pickle:
            runs.append(("mmsa_pickle", "workers=0,in-memory", {"source": "pickle", "pickle": pkl, "workers": 0}))
        rows, results = [], []
        x_value = f"N={args.samples},B={BATCH},text50,audio500x74,vision500x35"
        for provider, mode, cfg in runs:
            cfg.update(epochs=args.epochs, threads=args.threads)
            harness.log(f"measuring {provider} {mode} ...")
            load_before = os.getloadavg()[0]
            r = _run_child(cfg)
            r["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            results.append((provider, mode, r))
            extra = {"samples": args.samples, "batch": BATCH, "epochs": args.epochs, "store_dtype": args.dtype,
                     "compression": args.compression, "pickle_dtype": args.pickle_dtype,
                     "store_mib": round(prep["store_bytes"] / 2**20, 1),
                     "pickle_mib": round(prep["pickle_bytes"] / 2**20, 1),
                     **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "rates"}}
            common = {"kernel": KERNEL, "provider": provider, "mode": mode, "x_name": "shape", "x_value": x_value,
                      "extra_config": json.dumps(extra, sort_keys=True), "machine": info.machine,
                      "threads": args.threads or info.threads, "torch_version": info.torch_version,
                      "triton_version": info.triton_version, "msa_fast_version": info.msa_fast_version,
                      "git_commit": info.git_commit, "timestamp": info.timestamp}
            s = _stats(r["rates"])
            rows.append({**common, "metric": "throughput", "unit": "samples/s", "p50": s.p50, "p20": s.p20,
                         "p80": s.p80})
            rows.append({**common, "metric": "memory", "unit": "MiB", "p50": r["memory_mib"], "p20": r["memory_mib"],
                         "p80": r["memory_mib"]})
            rows.append({**common, "metric": "peak_rss", "unit": "MiB", "p50": r["peak_rss_mib"],
                         "p20": r["peak_rss_mib"], "p80": r["peak_rss_mib"]})
            if "load_s" in r:
                rows.append({**common, "metric": "load_time", "unit": "s", "p50": r["load_s"], "p20": r["load_s"],
                             "p80": r["load_s"]})
        print(f"data loader on {info.machine}, torch {info.torch_version}, commit {info.git_commit}; "
              f"{args.samples} MOSEI-shaped unaligned samples, batches of {BATCH}, {args.epochs} epoch(s)")
        print(f"store {prep['store_bytes'] / 2**20:.0f} MiB ({args.dtype}, compression {args.compression}); "
              f"MMSA pickle {prep['pickle_bytes'] / 2**20:.0f} MiB (audio/vision {args.pickle_dtype})")
        print(f"{'provider':<12} {'mode':<22} {'samples/s p50 [p20, p80]':<30} {'resident MiB':>12} "
              f"{'peak RSS MiB':>12} {'load s':>7}  loadavg")
        for provider, mode, r in results:
            s = _stats(r["rates"])
            print(f"{provider:<12} {mode:<22} {s.p50:>9.0f} [{s.p20:>7.0f}, {s.p80:>7.0f}]      "
                  f"{r['memory_mib']:>12.0f} {r['peak_rss_mib']:>12.0f} "
                  f"{r.get('load_s', float('nan')):>7.1f}  {r['loadavg_1min_before_after']}")
        if not args.no_csv:
            path = harness.append_csv(rows, args.csv or harness.DEFAULT_CSV)
            print(f"\n{len(rows)} rows appended to {path}")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
