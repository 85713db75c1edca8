"""Reader for MMSA feature pickles (MOSI, MOSEI, CH-SIMS; aligned and unaligned), ``../shared/spec/data.md`` §1.

``read_mmsa(path)`` returns the three splits in the layout of msa_fast's store
(:func:`msa_fast.data.store.write_store` accepts them as they are) plus a ``meta`` dict;
``mmsa_to_store(path, out)`` converts a pickle into a store file, block by block.

What the reader does with each key of an MMSA split (data.md §1.1, §1.3):

=========================== ===========================================================================
``id``                      -> ``id`` (str); ``"<video_id>$_$<clip_id>"`` is kept as is
``text_bert`` [N, 3, L]     -> ``text_ids`` = row 0, ``text_mask`` = row 1 (must be 0/1). Row 2 (token
                            types) must be all zero, as MMSA writes it: the store has no token-type
                            array, so a non-zero row raises instead of being dropped silently
``text`` [N, L, 768]        -> ``text_feat`` only with ``text_features=True`` (MOSEI: 3.5 GB float32)
``audio`` / ``vision``      -> float32. Audio ``-inf`` -> 0 (MMSA does the same; the count is logged and
                            recorded in ``meta['neg_inf_replaced']``). Any other non-finite value (NaN,
                            +inf, or -inf outside audio) raises with per-key counts, unless
                            ``nonfinite='zero'``. Frames ``t >= length`` are zeroed
                            (``zero_beyond_length=True``, the default; ``False`` keeps them as MMSA does)
``audio_lengths`` etc.      -> ``*_lengths`` (unaligned files). Aligned files have none: both lengths are
                            the text-mask sum. Lengths above the padded length are capped; zero lengths
                            are raised to 1 (one warning with the count) after the zeroing, so masked
                            means are defined; negative lengths raise
``regression_labels``       -> ``regression`` (float32); NaN/inf raises naming the sample and its id
``regression_labels_T/A/V`` -> ``regression_T/A/V`` (CH-SIMS); NaN raises
``raw_text``, ``annotations``, ``classification_labels``, top-level ``config``: not stored (listed in
``meta['ignored_keys']``)
=========================== ===========================================================================

Security (trap 8): pickles are read with :class:`RestrictedUnpickler`, which resolves only the globals
numpy needs to rebuild arrays, dtypes and scalars (numpy 1.x ``numpy.core`` and numpy 2.x
``numpy._core`` spellings), builtin containers and scalars, and ``_codecs.encode`` limited to latin-1
(protocol-2 bytes). Any other global raises :class:`ForbiddenGlobalError` naming the file and the global,
before anything is called.

Memory (traps 4, 5): the pickle is unpickled once (its SHA-256 is computed on the same pass). The
float64 → float32 cast, the ``-inf`` fix and the zeroing past the length happen on blocks of rows:
:func:`mmsa_to_store` streams the converted blocks into the store and drops each split's source arrays
once written, so the peak stays near the unpickled file itself plus one block.

Every error is an :class:`MMSAPickleError` (a ``ValueError``) whose message names the file and, where
they apply, the split, the key and the sample (index and id).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msa_fast.data.schema import SPLITS

__all__ = ["MMSAPickleError", "ForbiddenGlobalError", "RestrictedUnpickler", "load_pickle", "read_mmsa",
           "convert_split", "mmsa_to_store", "MMSAData", "infer_dataset", "OFFICIAL_SHA256", "summarize_pickle",
           "split_id", "ID_SEPARATOR"]

log = logging.getLogger(__name__)

#: Official MMSA files: (first 8, last 4) hex digits of the SHA-256 (data.md §1.2; the MMSA README has
#: the full hashes). A file whose hash matches is recorded as that file in the meta.
OFFICIAL_SHA256 = {
    "mosi/unaligned_50.pkl": ("78e0f8b5", "2524"),
    "mosi/aligned_50.pkl": ("d3994fd2", "e5f9"),
    "mosei/unaligned_50.pkl": ("ad8b23d5", "ec1f"),
    "mosei/aligned_50.pkl": ("45eccfb7", "f791"),
    "sims/unaligned_39.pkl": ("c9e20c13", "442f"),
}

_ROWS_PER_BLOCK_BYTES = 64 << 20
_LABEL_KEYS = {"regression_labels": "regression", "regression_labels_T": "regression_T",
               "regression_labels_A": "regression_A", "regression_labels_V": "regression_V"}
_KNOWN_IGNORED = ("raw_text", "annotations", "classification_labels", "classification_labels_T",
                  "classification_labels_A", "classification_labels_V")


#: MMSA's separator between video id and clip id (data.md §1.1, trap 9).
ID_SEPARATOR = "$_$"


def split_id(sample_id: str) -> tuple[str, str]:
    """``'03bSnISJMiM$_$11'`` -> ``('03bSnISJMiM', '11')``; raises ValueError without the separator."""
    video, sep, clip = str(sample_id).rpartition(ID_SEPARATOR)
    if not sep:
        raise ValueError(f"sample id {sample_id!r} has no {ID_SEPARATOR!r} separator between video and clip id")
    return video, clip


class MMSAPickleError(ValueError):
    """An MMSA pickle is unreadable, truncated, or does not follow MMSA's layout."""


class ForbiddenGlobalError(MMSAPickleError, pickle.UnpicklingError):
    """The pickle references a global outside the allow-list (it could run arbitrary code)."""


# --------------------------------------------------------------------------- restricted unpickling


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, restricted to latin-1."""
    if not isinstance(obj, str) or str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1",
                                                                                                  "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed with a str and 'latin1', got "
                                     f"{type(obj).__name__} and {encoding!r}")
    return obj.encode("latin1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    import builtins
    import collections

    try:
        from numpy._core import multiarray as ma, numeric as nu  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma, numeric as nu
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = ma._reconstruct
        table[(mod, "scalar")] = ma.scalar
    if hasattr(nu, "_frombuffer"):
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            table[(mod, "_frombuffer")] = nu._frombuffer
    for name in ("set", "frozenset", "bytearray", "complex", "slice", "list", "dict", "tuple", "str", "bytes",
                 "int", "float", "bool", "range"):
        for mod in ("builtins", "__builtin__"):
            table[(mod, name)] = getattr(builtins, name)
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and builtin objects only.

    ``find_class`` resolves a fixed table of globals (see the module docstring); everything else
    raises :class:`ForbiddenGlobalError`. Persistent ids are rejected too.
    """

    _table: dict[tuple[str, str], Any] | None = None

    def __init__(self, file, *, name: str = "<pickle>"):
        super().__init__(file, fix_imports=True, encoding="latin1")
        self.name = name
        if RestrictedUnpickler._table is None:
            RestrictedUnpickler._table = _allowed()

    def find_class(self, module, name):
        obj = self._table.get((module, name))
        if obj is None:
            raise ForbiddenGlobalError(
                f"{self.name}: refusing to unpickle the global {module}.{name}: only numpy arrays/dtypes/scalars "
                f"and builtin containers are allowed in an MMSA feature pickle (a pickle can run arbitrary code; "
                f"this file may be malicious or not an MMSA feature file)")
        return obj

    def persistent_load(self, pid):
        raise ForbiddenGlobalError(f"{self.name}: refusing persistent id {pid!r} (not an MMSA feature pickle)")


class _HashingReader(io.RawIOBase):
    """File wrapper that feeds every byte read into a SHA-256 (one pass for load + checksum)."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()

    def readable(self):
        return True

    def read(self, n=-1):
        b = self._f.read(n)
        self.sha.update(b)
        return b

    def readinto(self, buf):
        n = self._f.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
        return n

    def readline(self, size=-1):
        b = self._f.readline(size)
        self.sha.update(b)
        return b

    def finish(self) -> str:
        while True:
            b = self._f.read(1 << 24)
            if not b:
                break
            self.sha.update(b)
        return self.sha.hexdigest()


def load_pickle(path: str | os.PathLike) -> tuple[Any, str]:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; returns ``(object, sha256 hex of the file)``.

    Raises ``FileNotFoundError``, :class:`ForbiddenGlobalError`, or :class:`MMSAPickleError` for a
    truncated or corrupt file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"MMSA pickle not found: {path}")
    if os.path.isdir(path):
        raise MMSAPickleError(f"{path}: is a directory, expected an MMSA feature pickle (.pkl)")
    size = os.path.getsize(path)
    if size == 0:
        raise MMSAPickleError(f"{path}: empty file (0 bytes), expected an MMSA feature pickle")
    with open(path, "rb", buffering=1 << 20) as raw:
        f = _HashingReader(raw)
        try:
            obj = RestrictedUnpickler(f, name=path).load()
        except ForbiddenGlobalError:
            raise
        except MemoryError:
            raise
        except EOFError as e:
            raise MMSAPickleError(f"{path}: truncated pickle ({size} bytes): the data ends before the pickle's "
                                  f"STOP opcode (interrupted download or copy?)") from e
        except Exception as e:  # UnpicklingError, ValueError, TypeError, ... from garbage bytes
            what = "truncated" if "truncated" in str(e) else "corrupt or not a pickle"
            raise MMSAPickleError(f"{path}: cannot unpickle ({what}): {type(e).__name__}: {e}") from e
        sha = f.finish()
    return obj, sha


# --------------------------------------------------------------------------- conversion of one split


def infer_dataset(split: dict[str, Any]) -> str:
    """'mosi' | 'mosei' | 'sims' from the feature dims / text length, or 'unknown'."""
    try:
        da, dv = int(np.shape(split["audio"])[-1]), int(np.shape(split["vision"])[-1])
        lt = int(np.shape(split["text_bert"])[-1])
    except (KeyError, IndexError, TypeError):
        return "unknown"
    if (da, dv) == (5, 20):
        return "mosi"
    if (da, dv) == (74, 35):
        return "mosei"
    if (da, dv) == (33, 709) or lt == 39 or "regression_labels_T" in split:
        return "sims"
    return "unknown"


def _block_rows(row_bytes: int) -> int:
    return max(1, _ROWS_PER_BLOCK_BYTES // max(1, row_bytes))


class _Frames:
    """Lazy float32 view of one modality of one split with the data.md §1.3 fixes applied on read.

    ``shape``/``dtype``/``__getitem__`` (row slices) are what :func:`write_store` needs to copy it block
    by block; :meth:`materialize` makes the whole float32 array."""

    def __init__(self, src: np.ndarray, lengths: np.ndarray | None, *, fix_neg_inf: bool, zero_nonfinite: bool):
        self.src = src
        self.lengths = lengths
        self.fix_neg_inf = fix_neg_inf
        self.zero_nonfinite = zero_nonfinite
        self.shape = tuple(int(d) for d in src.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            return self[int(item):int(item) + 1][0]
        if not isinstance(item, slice):
            raise TypeError("_Frames supports row slices only")
        start, stop, step = item.indices(self.shape[0])
        if step != 1:
            raise TypeError("_Frames supports contiguous row slices only")
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.array(self.src[start:stop], dtype=np.float32, copy=True)
        if self.fix_neg_inf:
            x[np.isneginf(x)] = 0.0
        if self.zero_nonfinite:
            x[~np.isfinite(x)] = 0.0
        if self.lengths is not None:
            t = np.arange(self.shape[1])
            x[t[None, :] >= self.lengths[start:stop, None]] = 0.0
        return x

    def materialize(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        step = _block_rows(int(np.prod(self.shape[1:])) * 8)
        for a in range(0, self.shape[0], step):
            out[a:a + step] = self[a:a + step]
        return out


@dataclass
class SplitReport:
    """What the conversion of one split changed (all counts are of samples or values)."""

    neg_inf_replaced: int = 0                       # audio -inf -> 0
    nonfinite_zeroed: dict[str, int] = field(default_factory=dict)  # nonfinite='zero' only
    lengths_capped: dict[str, int] = field(default_factory=dict)
    zero_lengths_raised: dict[str, int] = field(default_factory=dict)
    frames_zeroed_past_length: dict[str, int] = field(default_factory=dict)  # samples with non-zero frames past length


def _where(path: str, split: str, key: str | None = None) -> str:
    return f"{path}: split {split!r}" + (f", key {key!r}" if key else "")


def _sample_desc(i: int, ids) -> str:
    try:
        return f"sample {i} (id {str(ids[i])!r})"
    except Exception:  # pragma: no cover
        return f"sample {i}"


def _as_int_array(a, path, split, key) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise MMSAPickleError(f"{_where(path, split, key)}: expected integers, got object values ({e})") from e
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(1))[0]) if arr.ndim else 0
            raise MMSAPickleError(f"{_where(path, split, key)}: non-integer value at sample {i}")
        arr = arr.astype(np.int64)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MMSAPickleError(f"{_where(path, split, key)}: expected an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _scan_nonfinite(x: np.ndarray, *, audio: bool) -> tuple[int, int, int, int, int]:
    """(neg_inf, pos_inf, nan, first bad sample (or -1) excluding audio -inf, samples affected)."""
    n = x.shape[0]
    if not np.issubdtype(x.dtype, np.floating):
        return 0, 0, 0, -1, 0
    neg = pos = nan = 0
    first, affected = -1, 0
    step = _block_rows(int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    for a in range(0, n, step):
        blk = np.asarray(x[a:a + step])
        fin = np.isfinite(blk)
        if fin.all():
            continue
        isn = np.isnan(blk)
        isneg = np.isneginf(blk)
        nan += int(isn.sum())
        neg += int(isneg.sum())
        pos += int(np.isposinf(blk).sum())
        bad = ~fin & ~isneg if audio else ~fin
        per = bad.reshape(bad.shape[0], -1).any(1)
        if per.any():
            if first < 0:
                first = a + int(np.flatnonzero(per)[0])
            affected += int(per.sum())
    return neg, pos, nan, first, affected


def convert_split(raw: dict[str, Any], *, path: str = "<pickle>", split: str = "train", text_features: bool = False,
                  zero_beyond_length: bool = True, nonfinite: str = "raise", min_length_one: bool = True,
                  report: SplitReport | None = None, lazy: bool = False) -> dict[str, Any]:
    """Convert one MMSA split dict into the store's split arrays (see the module docstring).

    With ``lazy=True`` the audio/vision/text-feature arrays are returned as lazy block-wise views
    (``shape``, ``dtype``, row slicing) that :func:`write_store` copies block by block; otherwise
    they are float32 numpy arrays. ``report`` (a :class:`SplitReport`) receives the counts."""
    if nonfinite not in ("raise", "zero"):
        raise ValueError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
    report = report if report is not None else SplitReport()
    if not isinstance(raw, dict):
        raise MMSAPickleError(f"{path}: split {split!r} must be a dict of arrays, got {type(raw).__name__}")
    required = ["id", "text_bert", "audio", "vision", "regression_labels"] + (["text"] if text_features else [])
    missing = [k for k in required if k not in raw]
    if missing:
        raise MMSAPickleError(f"{_where(path, split)}: missing key(s) {missing} (present: {sorted(raw)}); "
                              f"an MMSA split needs {required}")
    has_la, has_lv = "audio_lengths" in raw, "vision_lengths" in raw
    if has_la != has_lv:
        present, absent = ("audio_lengths", "vision_lengths") if has_la else ("vision_lengths", "audio_lengths")
        raise MMSAPickleError(f"{_where(path, split)}: missing key {absent!r} while {present!r} is present "
                              f"(unaligned files carry both, aligned files neither)")
    aligned = not has_la

    # ---- ranks and dims
    def arr(key):
        a = raw[key]
        return a if isinstance(a, np.ndarray) else np.asarray(a)

    expect_ndim = {"text_bert": 3, "audio": 3, "vision": 3, "text": 3, "audio_lengths": 1, "vision_lengths": 1,
                   "id": 1}
    arrays: dict[str, np.ndarray] = {}
    for key in required + (["audio_lengths", "vision_lengths"] if not aligned else []) + \
            [k for k in ("regression_labels_T", "regression_labels_A", "regression_labels_V") if k in raw]:
        a = arr(key)
        if key in _LABEL_KEYS:
            if a.ndim >= 1 and a.ndim > 1 and all(d == 1 for d in a.shape[1:]):
                a = a.reshape(a.shape[0])      # (N, 1) or (N, 1, 1) label columns
            want = 1
        else:
            want = expect_ndim[key]
        if a.ndim != want:
            layout = {1: "[N]", 3: "[N, T, D]" if key != "text_bert" else "[N, 3, L]"}[want]
            raise MMSAPickleError(f"{_where(path, split, key)}: wrong dims: expected {want}-D {layout}, got shape "
                                  f"{tuple(a.shape)}")
        arrays[key] = a
    counts = {k: int(a.shape[0]) for k, a in arrays.items()}
    for k in _KNOWN_IGNORED:  # the other parallel arrays must agree too
        if k in raw and np.ndim(raw[k]) >= 1:
            counts[k] = int(np.shape(raw[k])[0])
    values, freq = np.unique(list(counts.values()), return_counts=True)
    if len(values) > 1:
        n_ref = int(values[np.argmax(freq)])
        odd = {k: c for k, c in counts.items() if c != n_ref}
        raise MMSAPickleError(f"{_where(path, split)}: mismatched lengths across modalities/keys: "
                              + ", ".join(f"{k!r} has {c} samples" for k, c in odd.items())
                              + f" while the others have {n_ref} (all: {counts})")
    n = int(values[0])
    if n == 0:
        raise MMSAPickleError(f"{_where(path, split)}: no samples")

    ids_raw = arrays["id"]
    ids = np.array([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in ids_raw.tolist()])

    tb = arrays["text_bert"]
    if tb.shape[1] != 3:
        raise MMSAPickleError(f"{_where(path, split, 'text_bert')}: wrong dims: expected [N, 3, L] (input ids, "
                              f"attention mask, token types), got shape {tuple(tb.shape)}")
    tb = _as_int_array(tb, path, split, "text_bert")
    text_ids, text_mask, text_type = tb[:, 0, :].copy(), tb[:, 1, :].copy(), tb[:, 2, :]
    lt = text_ids.shape[1]
    bad = (text_mask != 0) & (text_mask != 1)
    if bad.any():
        i = int(np.flatnonzero(bad.any(1))[0])
        raise MMSAPickleError(f"{_where(path, split, 'text_bert')}: attention mask (row 1) must be 0/1; "
                              f"{_sample_desc(i, ids)} has {sorted(set(text_mask[i].tolist()))}")
    if (text_type != 0).any():
        i = int(np.flatnonzero((text_type != 0).any(1))[0])
        raise MMSAPickleError(f"{_where(path, split, 'text_bert')}: token-type ids (row 2) are non-zero at "
                              f"{_sample_desc(i, ids)}; MMSA writes zeros and msa_fast's store keeps no token "
                              f"types, so they would be lost")
    if (text_ids < 0).any():
        i = int(np.flatnonzero((text_ids < 0).any(1))[0])
        raise MMSAPickleError(f"{_where(path, split, 'text_bert')}: negative token id at {_sample_desc(i, ids)}")
    del tb, text_type

    out: dict[str, Any] = {"text_ids": text_ids, "text_mask": text_mask}

    # ---- labels
    for key, name in _LABEL_KEYS.items():
        if key not in arrays:
            continue
        y = arrays[key]
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
            raise MMSAPickleError(f"{_where(path, split, key)}: expected float labels, got dtype {y.dtype}")
        y32 = y.astype(np.float32)
        badl = ~np.isfinite(y32)
        if badl.any():
            where = np.flatnonzero(badl)
            raise MMSAPickleError(f"{_where(path, split, key)}: NaN/inf label at {_sample_desc(int(where[0]), ids)} "
                                  f"({where.size} sample(s): {where[:5].tolist()}{'...' if where.size > 5 else ''}); "
                                  f"nothing is dropped silently - fix or remove these samples")
        out[name] = y32

    # ---- lengths
    lengths: dict[str, np.ndarray] = {}
    for m in ("audio", "vision"):
        T = int(arrays[m].shape[1])
        if aligned:
            ln = text_mask.sum(1).astype(np.int64)
            if T != lt:
                raise MMSAPickleError(f"{_where(path, split, m)}: aligned file (no *_lengths) but {m} has {T} steps "
                                      f"while text_bert has {lt}; aligned modalities share the text length")
        else:
            ln = _as_int_array(arrays[f"{m}_lengths"], path, split, f"{m}_lengths")
            if (ln < 0).any():
                i = int(np.flatnonzero(ln < 0)[0])
                raise MMSAPickleError(f"{_where(path, split, f'{m}_lengths')}: negative length {int(ln[i])} at "
                                      f"{_sample_desc(i, ids)}")
        over = ln > T
        if over.any():
            report.lengths_capped[m] = int(over.sum())
            ln = np.minimum(ln, T)
        lengths[m] = ln

    # ---- features
    zero = nonfinite == "zero"
    for m in ("audio", "vision") + (("text",) if text_features else ()):
        x = arrays[m]
        key = m
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise MMSAPickleError(f"{_where(path, split, key)}: expected a float array, got dtype {x.dtype}")
        if m == "text" and x.shape[1] != lt:
            raise MMSAPickleError(f"{_where(path, split, key)}: {x.shape[1]} steps but text_bert has {lt}")
        neg, pos, nan, first, affected = _scan_nonfinite(x, audio=(m == "audio"))
        if m == "audio" and neg:
            report.neg_inf_replaced += neg
        if first >= 0:
            counts_msg = f"NaN {nan}, +inf {pos}, -inf {neg}" + (" (audio -inf is replaced by 0)" if m == "audio"
                                                                   else "")
            if not zero:
                raise MMSAPickleError(f"{_where(path, split, key)}: non-finite values ({counts_msg}) in {affected} "
                                      f"sample(s), first at {_sample_desc(first, ids)}; pass nonfinite='zero' "
                                      f"to replace them by 0")
            report.nonfinite_zeroed[m] = nan + pos + (0 if m == "audio" else neg)
        if np.issubdtype(x.dtype, np.floating) and np.finfo(x.dtype).max > np.finfo(np.float32).max:
            # float64 values beyond float32's range become inf in the cast
            big = 0
            step = _block_rows(int(np.prod(x.shape[1:])) * 8)
            for a in range(0, n, step):
                blk = np.asarray(x[a:a + step])
                with np.errstate(invalid="ignore"):
                    b = np.isfinite(blk) & (np.abs(blk) > np.finfo(np.float32).max)
                if b.any():
                    i = a + int(np.flatnonzero(b.reshape(b.shape[0], -1).any(1))[0])
                    raise MMSAPickleError(f"{_where(path, split, key)}: value at {_sample_desc(i, ids)} overflows "
                                          f"float32 (|x| > 3.4e38)")
            del big
        ln = lengths.get(m) if (zero_beyond_length and m != "text") else None
        if m != "text":
            report.frames_zeroed_past_length[m] = _count_junk(x, lengths[m]) if zero_beyond_length else 0
        frames = _Frames(x, ln, fix_neg_inf=(m == "audio"), zero_nonfinite=zero)
        out["text_feat" if m == "text" else m] = frames if lazy else frames.materialize()

    for m in ("audio", "vision"):
        ln = lengths[m]
        if min_length_one:
            z = ln == 0
            if z.any():
                report.zero_lengths_raised[m] = int(z.sum())
                ln = np.maximum(ln, 1)
        out[f"{m}_lengths"] = ln
    out["id"] = ids
    order = ["text_ids", "text_mask", "text_feat", "audio", "audio_lengths", "vision", "vision_lengths",
             "regression", "regression_T", "regression_A", "regression_V", "id"]
    return {k: out[k] for k in order if k in out}


def _count_junk(x: np.ndarray, lengths: np.ndarray) -> int:
    """Samples with non-zero values past their recorded length (data.md §1.3 trap 1)."""
    n, T = x.shape[0], x.shape[1]
    t = np.arange(T)
    count = 0
    step = _block_rows(int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    for a in range(0, n, step):
        blk = np.asarray(x[a:a + step])
        past = t[None, :] >= lengths[a:a + step, None]
        with np.errstate(invalid="ignore"):
            nz = (blk != 0).any(-1) & past
        count += int(nz.any(1).sum())
    return count


# --------------------------------------------------------------------------- file level


@dataclass
class MMSAData:
    """A converted MMSA pickle: ``splits`` in the store's layout and the ``meta`` for write_store."""

    splits: dict[str, dict[str, Any]]
    meta: dict[str, Any]


def _official(sha: str) -> str | None:
    for name, (head, tail) in OFFICIAL_SHA256.items():
        if sha.startswith(head) and sha.endswith(tail):
            return name
    return None


def _top_level(obj, path: str) -> dict:
    if not isinstance(obj, dict):
        raise MMSAPickleError(f"{path}: the pickle holds a {type(obj).__name__}, expected MMSA's dict with keys "
                              f"'train', 'valid', 'test'")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise MMSAPickleError(f"{path}: missing split key(s) {missing} at the top level (keys: "
                              f"{sorted(map(str, obj))}); MMSA pickles have 'train', 'valid', 'test'")
    return obj


def _build_meta(path, sha, dataset, aligned, options, reports, ignored, text_features) -> dict:
    official = _official(sha)
    lang = "zh" if dataset == "sims" else ("en" if dataset in ("mosi", "mosei") else "unknown")
    return {
        "dataset": dataset,
        "source": f"mmsa:{os.path.basename(path)} sha256={sha}",
        "source_format": "mmsa-pickle",
        "source_file": os.path.abspath(path),
        "source_sha256": sha,
        "official_file": official,
        "aligned": bool(aligned),
        "padding_side": "right",
        "language": lang,
        "tokenizer": {"mosi": "bert-base-uncased", "mosei": "bert-base-uncased",
                      "sims": "bert-base-chinese"}.get(dataset, "unknown"),
        "text_features": bool(text_features),
        **options,
        "neg_inf_replaced": {s: r.neg_inf_replaced for s, r in reports.items()},
        "nonfinite_zeroed": {s: r.nonfinite_zeroed for s, r in reports.items()},
        "lengths_capped": {s: r.lengths_capped for s, r in reports.items()},
        "zero_lengths_raised": {s: r.zero_lengths_raised for s, r in reports.items()},
        "samples_with_frames_past_length": {s: r.frames_zeroed_past_length for s, r in reports.items()},
        "ignored_keys": ignored,
    }


def _log_reports(path: str, reports: dict[str, SplitReport], zero_beyond_length: bool) -> None:
    neg = sum(r.neg_inf_replaced for r in reports.values())
    if neg:
        log.info("%s: replaced %d audio -inf value(s) by 0 (as MMSA does): %s", path, neg,
                 {s: r.neg_inf_replaced for s, r in reports.items()})
    zl = {s: r.zero_lengths_raised for s, r in reports.items() if r.zero_lengths_raised}
    if zl:
        warnings.warn(f"{path}: raised {sum(sum(v.values()) for v in zl.values())} zero length(s) to 1 so masked "
                      f"means are defined (per split/modality: {zl})", stacklevel=3)
    cap = {s: r.lengths_capped for s, r in reports.items() if r.lengths_capped}
    if cap:
        log.info("%s: capped lengths above the padded length: %s", path, cap)
    junk = {s: r.frames_zeroed_past_length for s, r in reports.items() if any(r.frames_zeroed_past_length.values())}
    if junk and zero_beyond_length:
        log.info("%s: zeroed non-zero frames past the recorded length in %s sample(s)", path, junk)


def _prepare(path, *, dataset, expected_sha256, text_features, zero_beyond_length, nonfinite, min_length_one):
    path = os.fspath(path)
    obj, sha = load_pickle(path)
    if expected_sha256 is not None and sha != str(expected_sha256).lower():
        raise MMSAPickleError(f"{path}: SHA-256 mismatch: expected {expected_sha256}, got {sha}")
    top = _top_level(obj, path)
    ds = dataset or infer_dataset(top["train"]) if isinstance(top["train"], dict) else (dataset or "unknown")
    ignored = sorted(str(k) for k in top if k not in SPLITS)
    for s in SPLITS:
        if isinstance(top[s], dict):
            ignored += [f"{s}/{k}" for k in sorted(map(str, top[s])) if k not in
                        ("id", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths")
                        and k not in _LABEL_KEYS and not (k == "text" and text_features)]
    options = {"zero_beyond_length": bool(zero_beyond_length), "nonfinite": nonfinite,
               "min_length_one": bool(min_length_one)}
    return path, top, sha, ds, ignored, options


def read_mmsa(path: str | os.PathLike, *, dataset: str | None = None, text_features: bool = False,
              zero_beyond_length: bool = True, nonfinite: str = "raise", min_length_one: bool = True,
              expected_sha256: str | None = None) -> MMSAData:
    """Read an MMSA feature pickle into memory, converted to the store's split layout (float32).

    ``dataset`` overrides the name inferred from the dims (``infer_dataset``); ``text_features``
    keeps MMSA's ``text`` BERT features as ``text_feat``; ``zero_beyond_length``, ``nonfinite`` and
    ``min_length_one`` are the data.md §1.3 switches (defaults: zero frames past the length, raise on
    NaN/+inf, raise zero lengths to 1); ``expected_sha256`` checks the file's hash."""
    path, top, sha, ds, ignored, options = _prepare(path, dataset=dataset, expected_sha256=expected_sha256,
                                                   text_features=text_features,
                                                   zero_beyond_length=zero_beyond_length, nonfinite=nonfinite,
                                                   min_length_one=min_length_one)
    reports = {s: SplitReport() for s in SPLITS}
    splits = {}
    aligned = None
    for s in SPLITS:
        raw = top[s]
        if isinstance(raw, dict):
            aligned = "audio_lengths" not in raw if aligned is None else aligned
        splits[s] = convert_split(raw, path=path, split=s, text_features=text_features,
                                  zero_beyond_length=zero_beyond_length, nonfinite=nonfinite,
                                  min_length_one=min_length_one, report=reports[s])
        top[s] = None  # free the float64 source of this split before the next one
    _log_reports(path, reports, zero_beyond_length)
    return MMSAData(splits, _build_meta(path, sha, ds, aligned, options, reports, ignored, text_features))


def mmsa_to_store(path: str | os.PathLike, out: str | os.PathLike, *, dataset: str | None = None,
                  text_features: bool = False, zero_beyond_length: bool = True, nonfinite: str = "raise",
                  min_length_one: bool = True, expected_sha256: str | None = None, dtype: str = "float32",
                  compression: str | None = None, compression_opts: int | None = None,
                  chunk_samples: int | None = None) -> tuple[str, dict]:
    """Convert an MMSA pickle to a store file (atomically). The features are converted block by block
    while they are written; each split's source arrays are dropped once written. Returns
    ``(out, meta)``; the options are those of :func:`read_mmsa` and :func:`write_store`."""
    from msa_fast.data.store import write_store

    path, top, sha, ds, ignored, options = _prepare(path, dataset=dataset, expected_sha256=expected_sha256,
                                                   text_features=text_features,
                                                   zero_beyond_length=zero_beyond_length, nonfinite=nonfinite,
                                                   min_length_one=min_length_one)
    reports = {s: SplitReport() for s in SPLITS}
    # convert (and validate) every split before writing anything, lazily for the big arrays
    converted = {}
    for s in SPLITS:
        converted[s] = convert_split(top[s], path=path, split=s, text_features=text_features,
                                     zero_beyond_length=zero_beyond_length, nonfinite=nonfinite,
                                     min_length_one=min_length_one, report=reports[s], lazy=True)
    aligned = "audio_lengths" not in top["train"]
    top.clear()
    del top

    def take(s):
        def f():
            return converted.pop(s)  # the split's source arrays are freed once write_store is done with it
        return f

    _log_reports(path, reports, zero_beyond_length)
    meta = _build_meta(path, sha, ds, aligned, options, reports, ignored, text_features)
    write_store(out, {s: take(s) for s in SPLITS}, meta, dtype=dtype, compression=compression,
                compression_opts=compression_opts, chunk_samples=chunk_samples)
    return os.fspath(out), meta


def summarize_pickle(path: str | os.PathLike) -> str:
    """A description of an MMSA pickle's keys, dtypes and shapes (``msa-fast data info FILE.pkl``)."""
    obj, sha = load_pickle(path)
    path = os.fspath(path)
    lines = [f"MMSA pickle {path} ({os.path.getsize(path) / 2**20:.1f} MiB)", f"  sha256  {sha}"]
    off = _official(sha)
    if off:
        lines.append(f"  official MMSA file {off}")
    if not isinstance(obj, dict):
        lines.append(f"  top level: {type(obj).__name__} (not an MMSA dict)")
        return "\n".join(lines)
    lines.append(f"  top-level keys: {sorted(map(str, obj))}")
    for s in SPLITS:
        sp = obj.get(s)
        if not isinstance(sp, dict):
            lines.append(f"  [{s}] missing" if sp is None else f"  [{s}] {type(sp).__name__}")
            continue
        lines.append(f"  [{s}] inferred dataset {infer_dataset(sp)}, "
                     f"{'unaligned' if 'audio_lengths' in sp else 'aligned'}")
        for k in sorted(map(str, sp)):
            a = sp[k]
            if isinstance(a, np.ndarray):
                lines.append(f"    {k:<22} {str(a.dtype):<10} {tuple(a.shape)}")
            else:
                lines.append(f"    {k:<22} {type(a).__name__:<10} len {len(a) if hasattr(a, '__len__') else '-'}")
    return "\n".join(lines)
