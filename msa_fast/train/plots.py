"""Loss-curve plot of a run directory: ``RUN/loss_curves.png`` from the seeds' ``log.jsonl``.

One panel per loss term (every term any stage logged), plus the validation MAE. The x axis counts
epochs across stages (a multi-stage model's stages follow one another; dotted lines mark where a
stage begins). Each seed is one line of training epoch means; the step records (``log_every``)
are drawn faintly behind it, so a noisy or diverging term is visible, not just its average.

matplotlib is imported here only (the Agg backend: no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_log", "plot_run"]


def read_log(path) -> list[dict]:
    """The records of one ``log.jsonl`` (a torn last line, e.g. after a kill, is skipped)."""
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _curves(records: list[dict]):
    """``(terms {name: [(x, v)]}, steps {name: [(x, v)]}, valid [(x, mae)], stage_starts [(x, name)])``.

    x is the epoch count across stages: epoch e of a stage that begins after E earlier epochs is E + e;
    a step record sits at its fractional position inside its epoch."""
    terms, steps, valid, starts = {}, {}, [], []
    offset, current, last_epoch = 0, None, 0
    epoch_steps: dict[tuple[str, int], list[int]] = {}
    for r in records:
        if r.get("event") == "step":
            epoch_steps.setdefault((r["stage"], r["epoch"]), []).append(r["step"])
    for r in records:
        ev = r.get("event")
        if ev not in ("epoch", "step"):
            continue
        if r["stage"] != current:
            offset += last_epoch
            current, last_epoch = r["stage"], 0
            starts.append((offset, current))
        if ev == "epoch":
            x = offset + r["epoch"]
            last_epoch = r["epoch"]
            for k, v in (r.get("train") or {}).items():
                terms.setdefault(k, []).append((x, v))
            if r.get("valid_mae_raw") is not None:
                valid.append((x, r["valid_mae_raw"]))
        else:
            seen = epoch_steps[(r["stage"], r["epoch"])]
            frac = (seen.index(r["step"]) + 1) / (len(seen) + 1)
            for k, v in (r.get("loss") or {}).items():
                steps.setdefault(k, []).append((offset + r["epoch"] - 1 + frac, v))
    return terms, steps, valid, starts


def plot_run(run_dir, out: str | None = None) -> Path | None:
    """Draw the loss curves of every ``seed*/log.jsonl`` of ``run_dir`` into ``out``
    (default ``run_dir/loss_curves.png``); ``None`` if no seed has logged an epoch yet."""
    run_dir = Path(run_dir)
    seeds = {}
    for log in sorted(run_dir.glob("seed*/log.jsonl")):
        c = _curves(read_log(log))
        if c[0]:
            seeds[log.parent.name] = c
    if not seeds:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for terms, *_ in seeds.values():
        names += [k for k in terms if k not in names]
    panels = names + ["valid MAE"]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j, (seed, (terms, steps, valid, starts)) in enumerate(seeds.items()):
            color = colors[j % len(colors)]
            line = valid if name == "valid MAE" else terms.get(name, [])
            if name in steps:
                xs, vs = zip(*steps[name])
                ax.plot(xs, vs, color=color, alpha=0.2, linewidth=0.8)
            if line:
                xs, vs = zip(*line)
                ax.plot(xs, vs, color=color, marker="o", markersize=3, label=seed)
            if j == 0:
                for x, stage in starts[1:]:
                    ax.axvline(x + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    stages = " → ".join(s for _, s in next(iter(seeds.values()))[3])
    fig.suptitle(f"{run_dir.name}: training loss terms (epoch means; steps faint) and validation MAE"
                 + (f"\nstages: {stages}" if " → " in stages else ""), fontsize=9)
    fig.tight_layout()
    path = Path(out) if out else run_dir / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
