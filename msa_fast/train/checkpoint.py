"""Atomic checkpoints and RNG state capture.

:func:`atomic_save` writes to a temporary file in the target directory, flushes and ``fsync``\\ s it,
then ``os.replace``\\ s it over the target and ``fsync``\\ s the directory: a reader sees either the
previous checkpoint or the new one, never a half-written file. If the write fails (e.g. disk full:
``OSError(ENOSPC)``) the temporary file is removed, the previous checkpoint is untouched, and a
:class:`CheckpointError` (an ``OSError``) names both.

A training checkpoint (written by :class:`msa_fast.train.engine.Trainer`) is a dict::

    {'format': 'msa_fast-checkpoint', 'version': 1,
     'model': state_dict, 'optimizers': [...], 'schedulers': [...], 'scaler': ...,
     'rng': capture_rng() (per rank under DDP), 'sampler': BlockBatchSampler.state_dict(),
     'engine': {'stage', 'epoch', 'step', 'opt_steps', 'micro', 'best_mae', 'best_epoch', 'bad_epochs', ...},
     'grads': accumulated gradients when saved inside a gradient-accumulation group (else None),
     'config': resolved config, 'seed': int}
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "capture_rng", "restore_rng", "FORMAT"]

FORMAT = "msa_fast-checkpoint"


class CheckpointError(OSError):
    """Writing a checkpoint failed; the previous checkpoint file (if any) is intact."""


def _write(obj: Any, fh) -> None:
    """Serialise ``obj`` into the open binary file ``fh`` (patched in tests to simulate a full disk)."""
    torch.save(obj, fh)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (``torch.save``) to ``path`` atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            _write(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            prev = f"the previous checkpoint {path} is intact" if path.exists() else "no previous checkpoint exists"
            raise CheckpointError(e.errno, f"could not write checkpoint {path} ({why}: {e}); {prev}") from e
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` (a trusted local file: full unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(path, map_location=map_location, weights_only=False)
    if isinstance(obj, dict) and obj.get("format") not in (None, FORMAT):
        raise ValueError(f"{path}: not an msa_fast checkpoint (format {obj.get('format')!r})")
    return obj


def capture_rng() -> dict:
    """The RNG states of python ``random``, numpy's global RNG, torch CPU and (if present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
