"""Plots of benchmarks/results.csv: p50 with p20–p80 error bars per provider (engineering.md §1.4).

One PNG per (kernel, variant, setting, metric) in benchmarks/plots/ (gitignored), where the setting
is the thread count plus any allocator environment recorded with the rows: one panel per mode, the
x axis is the case's x value (e.g. the shape), one bar group per provider. Only the latest run of each
(kernel, variant, setting, x, provider, mode, metric) is drawn unless ``--all-runs`` is given (then
each run is its own bar, labelled with its timestamp).

    python benchmarks/plot.py [--csv benchmarks/results.csv] [--out benchmarks/plots] [--kernel cutoff]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness  # noqa: E402

DEFAULT_OUT = harness.BENCH_DIR / "plots"
METRIC_LABEL = {"speed": "time per call (ms)", "cpu_time": "process CPU time per call (ms)", "memory": "peak allocated during the call (MiB)",
                "saved_tensors": "extra tensors saved for backward", "saved_bytes": "extra bytes saved for backward"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def setting(row: dict) -> str:
    """What else changes the numbers: thread count, allocator environment and dtype (one figure each)."""
    cfg = json.loads(row["extra_config"])
    env = cfg.get("env", {})
    tag = f"{row['threads']}thr"
    if cfg.get("dtype", "float32") != "float32":
        tag += f" {cfg['dtype']}"
    if env:
        tag += " " + " ".join(f"{k}={v}" for k, v in sorted(env.items()))
    return tag


def latest(rows: list[dict]) -> list[dict]:
    """Keep the newest row of every (kernel, variant, setting, x, provider, mode, metric)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kernel"], harness._variant(r), setting(r), r["x_value"], r["provider"], r["mode"], r["metric"])
        if key not in best or r["timestamp"] >= best[key]["timestamp"]:
            best[key] = r
    return list(best.values())


def plot(rows: list[dict], out_dir: Path, *, all_runs: bool = False, kernel: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kernel:
        rows = [r for r in rows if r["kernel"] == kernel]
    if not all_runs:
        rows = latest(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple, list[dict]] = {}
    for r in rows:
        figures.setdefault((r["kernel"], harness._variant(r), setting(r), r["metric"], r["unit"]), []).append(r)
    written = []
    for (kern, variant, tag, metric, unit), group in figures.items():
        modes = [m for m in harness.ALL_MODES if any(r["mode"] == m for r in group)]
        xs = list(dict.fromkeys(r["x_value"] for r in group))
        series = list(dict.fromkeys((r["provider"], r["timestamp"]) if all_runs else (r["provider"], "")
                                    for r in group))
        fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes) + 1, 3.8), squeeze=False)
        width = 0.8 / max(len(series), 1)
        for ax, mode in zip(axes[0], modes):
            for i, (provider, stamp) in enumerate(series):
                pts = {r["x_value"]: r for r in group if r["mode"] == mode and r["provider"] == provider
                       and (not all_runs or r["timestamp"] == stamp)}
                idx = [j for j, x in enumerate(xs) if x in pts]
                if not idx:
                    continue
                p50 = [float(pts[xs[j]]["p50"]) for j in idx]
                lo = [p - float(pts[xs[j]]["p20"]) for p, j in zip(p50, idx)]
                hi = [float(pts[xs[j]]["p80"]) - p for p, j in zip(p50, idx)]
                label = provider + (f" {stamp}" if all_runs else "")
                ax.bar([j + (i - (len(series) - 1) / 2) * width for j in idx], p50, width, yerr=[lo, hi],
                       capsize=3, label=label)
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels(xs, rotation=15)
            ax.set_title(mode)
            ax.set_xlabel(group[0]["x_name"])
            ax.set_ylabel(METRIC_LABEL.get(metric, f"{metric} ({unit})"))
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        machine = group[0]["machine"]
        fig.suptitle(f"{kern} [{variant}] {metric}: p50 with p20–p80 bars; {machine}; {tag}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{_slug(kern)}__{_slug(variant)}__{_slug(tag)}__{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(harness.DEFAULT_CSV))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--kernel", default=None, help="only this kernel")
    parser.add_argument("--all-runs", action="store_true", help="one bar per run instead of the latest run only")
    args = parser.parse_args(argv)
    rows = harness.read_csv(args.csv)
    if not rows:
        print(f"{args.csv} has no rows", file=sys.stderr)
        return 1
    for path in plot(rows, Path(args.out), all_runs=args.all_runs, kernel=args.kernel):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
