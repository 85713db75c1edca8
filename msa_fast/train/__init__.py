"""The training engine: compiled train step, schedules, checkpoints with exact resume, multi-seed runs.

* :mod:`msa_fast.train.engine` — :class:`Trainer` (one run of a model's stages on a store: compiled
  forward+loss, bf16 autocast, gradient accumulation, clipping, AdamW/Adam/SGD over the model's param
  groups, linear warm-up, per-stage frozen modules / lr / batch size, per-batch multi-optimiser
  updates, model hooks, evaluation with the MMSA metrics, selection on validation MAE with patience,
  test with the best checkpoint, NaN/SIGINT handling, JSONL/TensorBoard logs, tqdm bars).
* :mod:`msa_fast.train.checkpoint` — atomic checkpoint files and RNG state capture.
* :mod:`msa_fast.train.runs` — multi-seed runs (seeds 1111–1115) and the mean ± std summary (CSV, JSON, text).
* :mod:`msa_fast.train.configs` — engine defaults + model registry defaults + ``--set key=value``.
* :mod:`msa_fast.train.distributed` — torchrun data parallelism (gloo on CPU, NCCL on GPU).
* :mod:`msa_fast.train.cli` — ``msa-fast train | eval | predict``.

Importing this package is light; the names below are resolved on first access.
"""

from __future__ import annotations

import importlib

__all__ = ["Trainer", "NonFiniteLoss", "TrainingInterrupted", "StopTraining", "run_seeds", "resolve_config",
           "CheckpointError"]

_WHERE = {"Trainer": "engine", "NonFiniteLoss": "engine", "TrainingInterrupted": "engine", "StopTraining": "engine",
          "run_seeds": "runs", "resolve_config": "configs", "CheckpointError": "checkpoint"}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'msa_fast.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"msa_fast.train.{mod}"), name)
    globals()[name] = value
    return value
