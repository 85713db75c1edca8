"""Config resolution: engine defaults + model defaults + dataset defaults + ``--set key=value`` overrides.

A resolved config is one flat-or-nested ``dict`` (JSON-serialisable) saved as ``config.json`` in every run
directory. Layers, later ones winning:

1. :data:`ENGINE_DEFAULTS` (the training engine's own keys: batch size, optimiser, schedule, AMP, ...);
2. the model's defaults for the dataset, from the model registry
   (``msa_fast.models[.configs].default_config(name, dataset)``: one config per model x dataset);
3. an optional JSON config file (``--config FILE``);
4. ``--set key=value`` overrides. ``key`` may be dotted (``hycon.fusion=concat``) to reach into a nested
   dict, or name a flat dotted key as it appears in the model defaults. Values are parsed as JSON
   (``3``, ``1e-4``, ``true``, ``null``, ``[1,2]``, ``{"a": 1}``), also ``True/False/None``; anything
   else is a string. The parsed value is then checked against the type of the default it replaces
   (an ``int`` default accepts an integral value, a ``float`` default an int, a ``bool`` default only
   a boolean).

A key that exists in no layer raises ``ValueError`` naming it and listing the closest known keys.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ENGINE_DEFAULTS", "DEFAULT_SEEDS", "parse_value", "apply_overrides", "resolve_config",
           "model_defaults", "build_model", "registry_dataset", "flat_keys"]

#: The evaluation protocol's seeds (data.md §4).
DEFAULT_SEEDS = [1111, 1112, 1113, 1114, 1115]

#: The engine's own keys and their defaults (models override them in their defaults).
ENGINE_DEFAULTS: dict[str, Any] = {
    # data
    "batch_size": 32,            # per optimiser micro-step, global (split across DDP ranks)
    "eval_batch_size": None,     # None: batch_size
    "drop_last": False,
    "num_workers": 0,
    "in_memory": False,          # read each split into RAM once
    "block_size": "auto",        # shuffle block of the BlockBatchSampler
    "text_features": None,       # None: use cached text features when the store has them
    # schedule
    "epochs": None,              # epochs of a stage whose model schedule leaves it open (None: early stopping)
    "max_epochs": 100,           # cap for stages that run until early stopping
    "patience": None,            # early-stopping patience on validation MAE (None: off)
    "select_tol": 1e-6,          # an epoch improves only if it lowers the best MAE by more than this
    # optimiser
    "optimizer": "adamw",        # adamw | adam | sgd
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "momentum": 0.0,             # sgd only
    "optimizer_impl": "fused",   # fused: torch's single-kernel update (fused=True) | torch: torch's default choice
    "grad_accum": 1,             # micro-batches per optimiser step
    "accum_scale": "mean",       # mean: loss / grad_accum; sum: each micro-batch loss unscaled (SUGRM)
    "accum_partial": "discard",  # a trailing incomplete group: discard (SUGRM) | step
    "clip_grad_norm": None,      # max global L2 norm (None: no clipping)
    "scheduler": "none",         # none | linear (warm-up then linear decay to 0) | warmup_constant
    "warmup_ratio": 0.0,         # fraction of the stage's planned optimiser steps
    "warmup_steps": None,        # overrides warmup_ratio
    # execution
    "amp": None,                 # None | bf16 | fp16 (fp16 only with a GradScaler on CUDA)
    "compile": True,             # torch.compile the forward+loss (False: eager)
    "compile_fullgraph": True,   # fullgraph=True first; a graph break falls back to fullgraph=False
    "compile_options": None,     # Inductor options (torch.compile(options=...)); None: engine.default_compile_options
    "deterministic": True,       # torch.use_deterministic_algorithms(True, warn_only=True)
    "device": "auto",            # auto | cpu | cuda | cuda:N
    "threads": None,             # torch.set_num_threads
    "nan_check": True,           # stop on a non-finite loss term (one host sync per step)
    # logging / checkpoints
    "log_every": 10,             # steps between JSONL/TensorBoard step records
    "progress": True,            # tqdm bars
    "tensorboard": False,
    "checkpoint_every": None,    # steps between mid-epoch checkpoints (None: epoch ends only)
    "seeds": list(DEFAULT_SEEDS),
}


# --------------------------------------------------------------------------- parsing


def parse_value(text: str) -> Any:
    """``--set`` value text -> Python value (JSON, plus ``True/False/None``; else the string)."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(s)
    except ValueError:
        pass
    try:
        return float(s) if low in ("inf", "-inf", "nan") else s
    except ValueError:  # pragma: no cover
        return s


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` (``None`` defaults accept anything)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} takes a boolean (true/false), got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r} takes an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, float):
            raise ValueError(f"config key {key!r} takes an integer, got {value!r}")
        raise ValueError(f"config key {key!r} takes an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"config key {key!r} takes a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value  # e.g. block_size='auto' accepts an integer
        raise ValueError(f"config key {key!r} takes a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]  # a scalar for a list default: a one-element list (e.g. seeds=1111)
    if isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"config key {key!r} takes a JSON object, got {value!r}")
    return value


def flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every addressable key of ``cfg``: top-level keys and dotted paths into nested dicts."""
    out = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        out.append(name)
        if isinstance(v, Mapping) and v:
            out.extend(flat_keys(v, name + "."))
    return out


def _unknown(key: str, cfg: Mapping[str, Any]) -> ValueError:
    known = flat_keys(cfg)
    close = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
    if not close:  # try the last component, e.g. 'fusion' for 'hycon.fusion'
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == tail][:5] or \
            difflib.get_close_matches(tail, known, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r}{hint} (known keys: {len(known)}; "
                      f"see config.json of a run for the full list)")


def _set(cfg: dict, key: str, value: Any) -> None:
    if key in cfg:  # a flat key, possibly dotted itself
        cfg[key] = _coerce(key, value, cfg[key])
        return
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        rest = ".".join(parts[i + 1:])
        if p not in node or not isinstance(node[p], dict):
            raise _unknown(key, cfg)
        node = node[p]
        if rest in node:
            node[rest] = _coerce(key, value, node[rest])
            return
    raise _unknown(key, cfg)


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] | None) -> dict:
    """A copy of ``cfg`` with ``overrides`` applied: ``['k=v', ...]`` (values parsed) or a dict
    (values used as given). Unknown keys raise ``ValueError`` with close matches."""
    out = copy.deepcopy(dict(cfg))
    if not overrides:
        return out
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"--set takes key=value, got {item!r}")
            k, v = item.split("=", 1)
            items.append((k.strip(), parse_value(v)))
    for k, v in items:
        if not k:
            raise ValueError("--set: empty key")
        _set(out, k, v)
    return out


# --------------------------------------------------------------------------- layers


def _merge(base: dict, extra: Mapping[str, Any]) -> dict:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _registry():
    """``(build, default_config, available_models)`` of the model registry, or ``None`` if absent."""
    import importlib

    for mod in ("msa_fast.models", "msa_fast.models.configs", "msa_fast.models.registry"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        build = getattr(m, "build", None)
        if callable(build):
            return (build, getattr(m, "default_config", None),
                    getattr(m, "available_models", None) or getattr(m, "available", None))
    return None


def registry_dataset(dataset: str | None) -> str | None:
    """The registry's dataset family for a store's dataset name (CH-SIMS v2 uses the CH-SIMS configs)."""
    if dataset is None:
        return None
    d = str(dataset).lower()
    return "sims" if d in ("simsv2", "sims2", "ch-sims", "chsims") else d


def model_defaults(model: str, dataset: str | None = None) -> dict:
    """The model's default config for ``dataset`` from the registry.

    Raises ``ValueError`` naming the model when the registry does not know it (or does not exist yet)."""
    reg = _registry()
    if reg is None:
        raise ValueError(f"unknown model {model!r}: the model registry (msa_fast.models build/default_config) "
                         f"is not available in this installation")
    build, default_config, available = reg
    if callable(available):
        names = list(available())
        if model not in names:
            close = difflib.get_close_matches(model, names, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown model {model!r}{hint} (available models: {', '.join(sorted(names)) or 'none'})")
    if not callable(default_config):
        return {}
    cfg = copy.deepcopy(dict(default_config(model, registry_dataset(dataset)) or {}))
    per_ds = cfg.pop("datasets", None)
    if isinstance(per_ds, Mapping) and dataset and dataset in per_ds:
        _merge(cfg, per_ds[dataset])
    return cfg


def build_model(model: str, cfg: Mapping[str, Any], dims, dataset: str | None = None):
    """Build ``model`` with the registry, passing only the model's own config keys (the engine's keys
    are not the model's business)."""
    reg = _registry()
    if reg is None:
        raise ValueError(f"unknown model {model!r}: the model registry (msa_fast.models build) is not available")
    build, default_config, _ = reg
    ds = registry_dataset(dataset)
    keys = set(default_config(model, ds)) if callable(default_config) else set(cfg)
    mcfg = {k: v for k, v in cfg.items() if k in keys}
    try:
        return build(model, mcfg, dims, dataset=ds)
    except TypeError:
        return build(model, mcfg, dims)


def resolve_config(model: str | None = None, dataset: str | None = None, *,
                   overrides: Sequence[str] | Mapping[str, Any] | None = None,
                   model_cfg: Mapping[str, Any] | None = None, config_file: str | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict:
    """Engine defaults + model defaults (``model_cfg`` if given, else the registry's for ``model``) +
    ``config_file`` + ``extra`` (dict, e.g. from CLI flags) + ``overrides``. Adds ``model`` and
    ``dataset`` keys. Unknown override keys raise ``ValueError``."""
    cfg = copy.deepcopy(ENGINE_DEFAULTS)
    if model_cfg is not None:
        _merge(cfg, model_cfg)
    elif model is not None:
        _merge(cfg, model_defaults(model, dataset))
    cfg["model"] = model
    cfg["dataset"] = dataset
    if config_file:
        with open(config_file) as fh:
            file_cfg = json.load(fh)
        file_cfg = {k: v for k, v in file_cfg.items() if k not in ("model", "dataset")}
        cfg = apply_overrides(cfg, file_cfg)
    if extra:
        cfg = apply_overrides(cfg, {k: v for k, v in extra.items() if v is not None})
    return apply_overrides(cfg, overrides)
