"""``msa-fast train | eval | predict`` (registered by :mod:`msa_fast.cli`; the work is imported lazily).

    msa-fast train --model NAME [--data FILE] [--preset quick|paper] [--set KEY=VALUE ...] [--seeds S ...] [--epochs N]
                   [--config FILE.json] [--resume DIR] [--no-compile] [--out DIR] [--no-progress]
    msa-fast eval --run DIR [--data FILE] [--split test|valid|train]
    msa-fast predict --run DIR --data FILE --out preds.csv [--split test] [--seed S]

``train`` without ``--data`` uses the embedded synthetic MOSEI-shaped default dataset
(:func:`msa_fast.data.default.default_dataset`, created on first use) with the ``quick`` preset
(:data:`msa_fast.models.configs.PRESETS`: the word-aligned variant with cached text features, a few
epochs, 3 seeds — minutes on 2 CPU cores); ``--preset paper`` keeps the papers' configs. ``--data`` takes an msa_fast
store or an MMSA feature pickle (converted into the run directory first). ``NAME`` is a model of the
registry (``hycon``, ``mgcl``, ...) or an import path ``package.module:factory`` whose
``factory(cfg, dims)`` returns an :class:`~msa_fast.models.base.MSAModel` (an optional
``factory.default_config`` dict adds its keys). Under ``torchrun`` the run is data-parallel.

Exit status: 0 done; 1 error (one line naming the problem: unknown model or config key, dim
mismatch, non-finite loss, checkpoint write failure); 130 interrupted (SIGINT; resume with
``--resume DIR``).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys
import time
from pathlib import Path

__all__ = ["add_parsers", "data_dims", "model_factory"]


def _fail(cmd: str, msg: str) -> int:
    print(f"msa-fast {cmd}: error: {msg}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- helpers


def data_dims(reader) -> dict:
    """The data's dims as a ``DataDims`` mapping (models.md §0.2), read from a store."""
    meta = reader.meta
    fd, sl = meta.get("feature_dims") or {}, meta.get("seq_lens") or {}
    ds = str(meta.get("dataset") or "").lower()
    sims = ds.startswith("sims")
    inner = meta.get("meta") or {}
    return {"d_a": int(fd["audio"]), "d_v": int(fd["vision"]), "d_t": fd.get("text"),
            "l_t": sl.get("text"), "l_a": sl.get("audio"), "l_v": sl.get("vision"),
            "y_range": [-1.0, 1.0] if sims else [-3.0, 3.0],
            "unimodal_labels": "regression_T" in reader.keys("train"),
            "language": "zh" if sims else "en", "aligned": inner.get("aligned")}


def _import_factory(spec: str):
    mod, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"unknown model {spec!r}: cannot import {attr!r} from {mod!r} ({e})") from e
    if not callable(obj):
        raise ValueError(f"model {spec!r} is not callable")
    return obj


def model_defaults_for(model: str, dataset: str | None) -> dict:
    from msa_fast.train.configs import model_defaults

    if ":" in model:
        return dict(getattr(_import_factory(model), "default_config", {}) or {})
    return model_defaults(model, dataset)


def model_factory(model: str, dims: dict, dataset: str | None):
    """``cfg -> model`` for a registry name or an import path."""
    if ":" in model:
        fn = _import_factory(model)
        return lambda cfg: fn(cfg, dict(dims))

    from msa_fast.train.configs import build_model

    def make(cfg):
        try:
            from msa_fast.models.configs import DataDims
            d = DataDims.coerce({k: (tuple(v) if k == "y_range" else v) for k, v in dims.items()})
        except ImportError:  # pragma: no cover
            d = dict(dims)
        return build_model(model, cfg, d, dataset)

    return make


def _open_store(path: str, run_dir: Path | None, cmd: str):
    """A StoreReader for ``path``; an MMSA pickle is converted into ``run_dir/data.h5`` first."""
    from msa_fast.data.cli import _kind
    from msa_fast.data.store import StoreReader

    kind = _kind(path)
    if kind == "store":
        return StoreReader(path)
    if kind == "pickle":
        from msa_fast.data.mmsa_pickle import mmsa_to_store

        if run_dir is None:
            raise ValueError(f"{path} is an MMSA pickle: convert it first with `msa-fast data convert {path} OUT.h5`")
        out = run_dir / "data.h5"
        if not out.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"converting {path} -> {out}", file=sys.stderr)
            mmsa_to_store(path, out)
        return StoreReader(out)
    raise ValueError(f"{path}: CMU-SDK sequences need folds; convert them first with "
                     f"`msa-fast data convert {path} OUT.h5 --folds FOLDS.json`")


def _default_out(model: str, dataset: str) -> Path:
    name = model.replace(":", "_").replace("/", "_").replace(".", "_")
    return Path("runs") / f"{name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- train


def _train(args) -> int:
    from msa_fast.data.store import StoreError
    from msa_fast.train.checkpoint import CheckpointError
    from msa_fast.train.configs import apply_overrides, resolve_config
    from msa_fast.train.distributed import init_from_env
    from msa_fast.train.engine import NonFiniteLoss, TrainingInterrupted
    from msa_fast.train.runs import load_run_config, run_seeds

    dist = init_from_env()
    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg = load_run_config(run_dir)
            if args.model and args.model != cfg.get("model"):
                return _fail("train", f"--resume {run_dir} is a {cfg.get('model')!r} run, not {args.model!r}")
            model = cfg["model"]
            reader = _open_store(args.data or cfg["data"], run_dir, "train")
            extra = {"progress": False} if args.no_progress else {}
            cfg = apply_overrides(cfg, extra)
            if args.set:  # only engine-side keys that do not change the result make sense here
                cfg = apply_overrides(cfg, args.set)
        else:
            if not args.model:
                return _fail("train", "--model is required (or --resume DIR)")
            model = args.model
            from msa_fast.models.configs import PRESET_DATA, preset_config

            preset = args.preset or ("paper" if args.data else "quick")
            preset_cfg = {} if ":" in model else preset_config(preset, model)
            if args.data:
                reader = _open_store(args.data, Path(args.out) if args.out else None, "train")
            else:
                from msa_fast.data.default import default_dataset
                from msa_fast.data.store import StoreReader

                reader = StoreReader(default_dataset(verbose=dist.is_main, **PRESET_DATA[preset]))
            if dist.is_main and preset_cfg:
                shown = ", ".join(f"{k}={v}" for k, v in preset_cfg.items())
                print(f"preset {preset!r}: {shown}" + (" (--preset paper: the papers' schedule)"
                                                         if preset == "quick" else ""), file=sys.stderr)
            dataset = str(reader.meta.get("dataset"))
            extra = {"epochs": args.epochs, "seeds": args.seeds}
            if args.no_compile:
                extra["compile"] = False
            if args.no_progress:
                extra["progress"] = False
            cfg = resolve_config(model, dataset, model_cfg={**model_defaults_for(model, dataset), **preset_cfg},
                                 config_file=args.config, extra=extra, overrides=args.set)
            cfg["model"] = model
            cfg["preset"] = preset
            cfg["data"] = os.path.abspath(reader.path)
            cfg["data_dims"] = data_dims(reader)
            run_dir = Path(args.out) if args.out else _default_out(model, dataset)
            if (run_dir / "config.json").exists():
                return _fail("train", f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                                      f"or choose another --out")
        factory = model_factory(model, cfg.get("data_dims") or data_dims(reader), cfg.get("dataset"))
        dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
        if dist.is_main:
            print(f"run directory: {run_dir}", file=sys.stderr)
        res = run_seeds(factory, cfg, reader, run_dir, seeds=cfg.get("seeds"), resume=bool(args.resume), dist=dist)
        del res
        return 0
    except TrainingInterrupted as e:
        print(f"msa-fast train: {e}", file=sys.stderr)
        return 130
    except (NonFiniteLoss, CheckpointError, StoreError, ValueError, FileNotFoundError, KeyError) as e:
        msg = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
        return _fail("train", msg)
    finally:
        if dist.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


# --------------------------------------------------------------------------- eval / predict


def _load_run_models(run_dir: Path, seeds=None):
    """``[(seed, model)]`` of a run, each with its best weights (``last.pt``'s if none was selected)."""
    from msa_fast.train.checkpoint import load_checkpoint
    from msa_fast.train.runs import load_run_config

    cfg = load_run_config(run_dir)
    dims = cfg.get("data_dims")
    if dims is None:
        raise ValueError(f"{run_dir}/config.json has no data_dims")
    factory = model_factory(cfg["model"], dims, cfg.get("dataset"))
    out = []
    want = [int(s) for s in (seeds or cfg.get("seeds") or [])]
    for seed in want:
        sdir = run_dir / f"seed{seed}"
        path = sdir / "best.pt" if (sdir / "best.pt").is_file() else sdir / "last.pt"
        if not path.is_file():
            continue
        model = factory(cfg)
        model.load_state_dict(load_checkpoint(path)["model"])
        model.eval()
        out.append((seed, model))
    if not out:
        raise FileNotFoundError(f"{run_dir}: no trained seed (no seed*/best.pt or last.pt)")
    return cfg, out


def _eval(args) -> int:
    from msa_fast import metrics
    from msa_fast.data.store import StoreError
    from msa_fast.train.engine import evaluate_model

    try:
        run_dir = Path(args.run)
        cfg, models = _load_run_models(run_dir)
        reader = _open_store(args.data or cfg["data"], None, "eval")
        rows = []
        for seed, model in models:
            res = evaluate_model(model, reader, args.split, batch_size=int(cfg.get("eval_batch_size") or
                                                                            cfg.get("batch_size") or 64),
                                 text_features=cfg.get("text_features"))
            res.pop("MAE_raw", None)
            rows.append(res)
            print(f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in res.items()))
        table = metrics.format_table(metrics.aggregate(rows), title=f"{cfg['model']} on {os.path.basename(reader.path)}"
                                     f" ({args.split}), {len(rows)} seed(s)")
        print(table)
        return 0
    except (StoreError, ValueError, FileNotFoundError, KeyError) as e:
        return _fail("eval", str(e))


def _predict(args) -> int:
    import numpy as np

    from msa_fast.data.store import StoreError
    from msa_fast.train.engine import predict

    try:
        run_dir = Path(args.run)
        cfg, models = _load_run_models(run_dir, [args.seed] if args.seed is not None else None)
        reader = _open_store(args.data, None, "predict")
        cols, ids, labels = [], None, None
        for seed, model in models:
            i, p, y = predict(model, reader, args.split, text_features=cfg.get("text_features"))
            ids, labels = i, y
            cols.append((seed, p))
        mean = np.mean([p for _, p in cols], axis=0)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "label", "pred"] + [f"pred_seed{s}" for s, _ in cols])
            for k in range(len(ids)):
                w.writerow([ids[k], f"{labels[k]:.6g}", f"{mean[k]:.9g}"] + [f"{p[k]:.9g}" for _, p in cols])
        print(f"wrote {len(ids)} predictions ({args.split} split of {reader.path}; mean of {len(cols)} seed(s)) "
              f"to {out}")
        return 0
    except (StoreError, ValueError, FileNotFoundError, KeyError) as e:
        return _fail("predict", str(e))


# --------------------------------------------------------------------------- parsers


def add_parsers(sub) -> None:
    """Register ``train``, ``eval`` and ``predict`` on the top-level subparsers object."""
    t = sub.add_parser("train", help="train a model (multi-seed, mean ± std table)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", help="registry name (hycon, mgcl, ...) or package.module:factory")
    t.add_argument("--data", help="msa_fast store or MMSA pickle (default: the embedded synthetic MOSEI-shaped set)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    t.add_argument("--config", help="JSON file of config values")
    t.add_argument("--seeds", type=int, nargs="+", help="seeds (default 1111 1112 1113 1114 1115)")
    t.add_argument("--epochs", type=int, help="epochs of the model's open-ended stage(s)")
    t.add_argument("--preset", choices=("quick", "paper"),
                   help="quick: minutes on CPU (cached text features, few epochs, 3 seeds; default without --data); "
                        "paper: the papers' configs (default with --data)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoints")
    t.add_argument("--no-compile", action="store_true", help="eager mode (no torch.compile)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--out", help="run directory (default runs/MODEL-DATASET-TIME)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a run's best checkpoints on a split")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--data", help="store (default: the run's training data)")
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="write a run's predictions on a file to CSV")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", required=True, help="store to predict on")
    p.add_argument("--out", required=True, help="output CSV (id, label, pred = mean over seeds, pred_seedS)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--seed", type=int, help="one seed's model only")
    p.set_defaults(func=_predict)
