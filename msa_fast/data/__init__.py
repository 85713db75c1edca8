"""msa_fast's data layer (issue 4).

* :mod:`msa_fast.data.schema` — the shapes of the real datasets (MOSI, MOSEI, CH-SIMS; aligned and
  unaligned), exactly as ``../shared/spec/data.md`` §1.2 gives them, and the array layout of one split
  of msa_fast's store.
* :mod:`msa_fast.data.store` — msa_fast's packed HDF5 store: :func:`write_store`,
  :class:`StoreReader`, :func:`verify`, :func:`describe`.
* :mod:`msa_fast.data.synthetic` — :func:`make_synthetic` / :func:`write_synthetic_store`, a deterministic
  MOSI/MOSEI/SIMS-shaped dataset whose labels follow the real label distribution and whose modalities carry a learnable,
  modality-specific sentiment signal; by default its English text is tokenised by the packaged
  bert-base-uncased tokenizer (:mod:`msa_fast.text`).
* :mod:`msa_fast.data.default` — :func:`default_dataset`, the main job's embedded default dataset: the
  synthetic MOSEI-shaped store, created once in a cache directory (``$MSA_FAST_CACHE`` or
  ``~/.cache/msa_fast``) and reused.

Importing this package is light: h5py is imported only inside the store functions, transformers only
when a tokenizer is loaded (inside the synthetic generator). The names below are resolved lazily on first access.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DATASETS", "DatasetShape", "ArraySpec", "split_layout", "get_shape",
    "write_store", "StoreReader", "verify", "describe", "VerifyReport",
    "StoreError", "StoreFormatError", "StoreCorruptError", "FORMAT_VERSION",
    "make_synthetic", "make_synthetic_split", "write_synthetic_store", "synthetic_meta",
    "default_dataset", "default_dataset_path", "default_cache_dir", "DEFAULT_SCALE", "DEFAULT_DTYPE",
]

_WHERE = {
    "DATASETS": "schema", "DatasetShape": "schema", "ArraySpec": "schema", "split_layout": "schema",
    "get_shape": "schema",
    "write_store": "store", "StoreReader": "store", "verify": "store", "describe": "store",
    "VerifyReport": "store", "StoreError": "store", "StoreFormatError": "store",
    "StoreCorruptError": "store", "FORMAT_VERSION": "store",
    "make_synthetic": "synthetic", "make_synthetic_split": "synthetic", "write_synthetic_store": "synthetic",
    "synthetic_meta": "synthetic",
    "default_dataset": "default", "default_dataset_path": "default", "default_cache_dir": "default",
    "DEFAULT_SCALE": "default", "DEFAULT_DTYPE": "default",
}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'msa_fast.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"msa_fast.data.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
