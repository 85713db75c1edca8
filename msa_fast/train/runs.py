"""Multi-seed runs (data.md §4): one :class:`~msa_fast.train.engine.Trainer` per seed, a mean ± std table.

Run directory layout::

    RUN/config.json        resolved config (model, dataset, engine keys, overrides)
    RUN/env.json           versions, threads, git commit, determinism flags
    RUN/seed1111/          log.jsonl, last.pt, best.pt, result.json, test_predictions.csv
    RUN/runs.jsonl         one record per finished seed (data.md §4 per-run record)
    RUN/summary.json       metrics.aggregate of the test metrics over seeds (+ the per-seed values)
    RUN/summary.csv        metric, mean, std (ddof=1), std_pop (ddof=0), mmsa_mean, mmsa_std, n
    RUN/summary.txt        the printed table
    RUN/loss_curves.png    every loss term and the validation MAE per epoch, one line per seed

``run_seeds(..., resume=True)`` skips seeds that have ``result.json``, resumes the seed that has a
``last.pt`` and starts the others.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable

from msa_fast.train.engine import Trainer, _jsonable, environment, seed_everything

__all__ = ["run_seeds", "summarise", "write_summary", "load_run_config"]


def load_run_config(run_dir) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    with open(path) as fh:
        return json.load(fh)


def summarise(records: list[dict]) -> dict:
    from msa_fast import metrics

    tests = [r["test"] for r in records]
    return metrics.aggregate(tests)


def write_summary(run_dir, records: list[dict], title: str | None = None) -> str:
    """Aggregate the seeds' test metrics; write summary.{json,csv,txt}; return the table text."""
    from msa_fast import metrics

    run_dir = Path(run_dir)
    summary = summarise(records)
    table = metrics.format_table(summary, title=title)
    with open(run_dir / "summary.json", "w") as fh:
        json.dump(_jsonable({"summary": summary, "seeds": [r["seed"] for r in records],
                             "per_seed": {str(r["seed"]): r["test"] for r in records},
                             "best_epochs": {str(r["seed"]): r["best_epoch"] for r in records}}), fh, indent=1)
    with open(run_dir / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "mean", "std", "std_pop", "mmsa_mean", "mmsa_std", "n"])
        for k, s in summary.items():
            w.writerow([k, f"{s['mean']:.6g}", f"{s['std']:.6g}", f"{s['std_pop']:.6g}", s["mmsa"][0], s["mmsa"][1],
                        s["n"]])
    with open(run_dir / "summary.txt", "w") as fh:
        fh.write(table + "\n")
    return table


def _plot(run_dir: Path, print_fn) -> None:
    """``RUN/loss_curves.png``; a run without matplotlib still finishes (the plot is a view of log.jsonl)."""
    from msa_fast.train.plots import plot_run

    try:
        path = plot_run(run_dir)
    except ImportError as e:  # pragma: no cover - matplotlib is in requirements.txt
        print_fn(f"loss curves not drawn: {e}")
        return
    if path is not None:
        print_fn(f"loss curves: {path}")


def run_seeds(model_factory: Callable[[dict], object], cfg: dict, data, run_dir, *, seeds=None,
              resume: bool = False, dist=None, hooks=(), stop_after_steps: int | None = None,
              print_fn=print) -> dict:
    """Train one run per seed; returns ``{'records', 'summary', 'table'}``.

    ``model_factory(cfg)`` builds a fresh model and is called after seeding (so initialisation depends
    on the seed)."""
    from msa_fast.data.store import StoreReader

    run_dir = Path(run_dir)
    seeds = [int(s) for s in (seeds if seeds is not None else cfg.get("seeds") or [1111])]
    is_main = dist is None or dist.is_main
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "config.json", "w") as fh:
            json.dump(_jsonable({**cfg, "seeds": seeds}), fh, indent=1)
        if cfg.get("threads"):
            import torch

            torch.set_num_threads(int(cfg["threads"]))
        with open(run_dir / "env.json", "w") as fh:
            json.dump(_jsonable(environment()), fh, indent=1)
    reader = data if isinstance(data, StoreReader) else StoreReader(data)
    records = []
    for seed in seeds:
        sdir = run_dir / f"seed{seed}"
        done = sdir / "result.json"
        if resume and done.is_file():
            with open(done) as fh:
                records.append(json.load(fh))
            continue
        seed_everything(seed, bool(cfg.get("deterministic", True)))
        model = model_factory(cfg)
        tr = Trainer(model, cfg, reader, sdir, seed=seed, resume=resume and (sdir / "last.pt").is_file(),
                     dist=dist, hooks=hooks, stop_after_steps=stop_after_steps)
        rec = tr.fit()
        records.append(rec)
        if is_main:
            with open(run_dir / "runs.jsonl", "a") as fh:
                fh.write(json.dumps(_jsonable(rec)) + "\n")
            t = rec["test"]
            print_fn(f"seed {seed}: best epoch {rec['best_epoch']}, valid MAE {rec['best_valid_mae']}, test "
                     + ", ".join(f"{k} {v}" for k, v in t.items()) + f" ({rec['wall_time']:.1f} s)")
    table = ""
    summary = None
    if is_main:
        title = f"{cfg.get('model') or 'model'} on {reader.meta.get('dataset')} ({os.path.basename(reader.path)}), " \
                f"{len(records)} seed(s): test metrics"
        table = write_summary(run_dir, records, title=title)
        summary = summarise(records)
        print_fn(table)
        _plot(run_dir, print_fn)
    return {"records": records, "summary": summary, "table": table}
