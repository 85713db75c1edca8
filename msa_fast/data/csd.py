"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5), ``../shared/spec/data.md`` §2.

* :class:`ComputationalSequence` reads one ``.csd`` file lazily (h5py): the first top-level group is
  the root whatever its name; ``data/<video>/features`` (≥ 2-D; word sequences hold byte strings
  ``[n, 1]`` with ``b"sp"`` for silence) and ``data/<video>/intervals`` (``[n, 2]`` seconds, same first
  dimension) are checked per video on access, naming the file and the video; ``metadata/<key>`` values
  are JSON-decoded with a fallback to the raw string and never make the reader fail (the SDK's fused
  ``"dimension namescomputational sequence version"`` key is accepted as well).
* :func:`build_utterances` builds utterance tensors from a set of ``.csd`` files with the SDK's
  alignment semantics (§2.3): unify video ids; align audio, vision (and word vectors) to the word
  intervals by averaging the overlapping rows clipped to each word (zero-length pieces dropped;
  words nothing overlaps are imputed with zeros); cut each video into the label segments (a segment
  holds the words overlapping its interval); pad or truncate to ``seq_len``; assign segments to
  folds by video id. The result is in msa_fast's store layout (padded **at the end**, text ids from
  a word-level vocabulary built from the words, ``text_feat`` = the word vectors when given).
  ``keep='last'`` keeps the last ``seq_len`` words as the SDK's ``get_tensors`` does (it also pads at
  the front, which the store never does: lengths/masks count from the start).
* :func:`csd_to_store` writes that to a store file plus ``<out>.vocab.txt`` (line k = the word of id
  k + 1; id 0 is padding).

Non-finite features: audio ``-inf`` -> 0 (counted, as for MMSA pickles); any other NaN/inf raises
naming the file and the video, unless ``nonfinite='zero'``. NaN labels raise. Segments without any
word, videos missing from some sequence, and videos in no fold are not silently lost: they are
counted in the meta and reported in one warning.

The standard MOSI/MOSEI folds (52/10/31 and 2249/300/678 video ids, ``cmu_mosi_std_folds.py``,
``cmu_mosei_std_folds.py`` of the SDK) are *not* bundled: pass them as lists or as a JSON file
``{"train": [...], "valid": [...], "test": [...]}`` (:func:`load_folds`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from msa_fast.data.schema import SPLITS

__all__ = ["CSDError", "ComputationalSequence", "read_csd", "write_csd", "build_utterances", "csd_to_store",
           "load_folds", "CSDData", "align_to_reference", "FUSED_METADATA_KEY", "STANDARD_FOLD_SIZES"]

EPS = 1e-5
FUSED_METADATA_KEY = "dimension namescomputational sequence version"
STANDARD_FOLD_SIZES = {"mosi": (52, 10, 31), "mosei": (2249, 300, 678)}


class CSDError(ValueError):
    """A ``.csd`` file is unreadable or violates the SDK's layout (message names the file and video)."""


# --------------------------------------------------------------------------- reading


def _decode(v):
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else ""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, np.generic):
        return v.item()
    return v


class ComputationalSequence:
    """One ``.csd`` file, read lazily. ``cs.root``, ``cs.metadata``, ``cs.videos``, ``cs[video]`` ->
    ``(features, intervals)``, ``cs.is_words``, ``cs.dim``. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"computational sequence not found: {self.path}")
        try:
            ok = h5py.is_hdf5(self.path)
        except OSError as e:
            raise CSDError(f"{self.path}: cannot read file: {e}") from e
        if not ok:
            raise CSDError(f"{self.path}: not an HDF5 file; a CMU-SDK computational sequence (.csd) is HDF5")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise CSDError(f"{self.path}: cannot open as HDF5 (truncated or corrupt?): {e}") from e
        groups = [k for k in self._f.keys() if isinstance(self._f[k], h5py.Group)]
        if not groups:
            self.close()
            raise CSDError(f"{self.path}: no top-level group; expected /<root>/data and /<root>/metadata")
        self.root = groups[0]
        g = self._f[self.root]
        if "data" not in g or not isinstance(g["data"], h5py.Group):
            self.close()
            raise CSDError(f"{self.path}: root group {self.root!r} has no 'data' group")
        self._data = g["data"]
        self.videos = sorted(self._data.keys())
        self.metadata = self._read_metadata(g)

    def _read_metadata(self, g) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if "metadata" not in g:
            return meta
        try:
            for k in g["metadata"].keys():
                try:
                    meta[k] = _decode(g["metadata"][k][()])
                except Exception as e:  # never fail on metadata
                    meta[k] = f"<unreadable: {e}>"
        except Exception as e:  # pragma: no cover
            warnings.warn(f"{self.path}: unreadable metadata ({e}); ignored", stacklevel=3)
        if FUSED_METADATA_KEY in meta:  # the SDK template's missing comma
            meta.setdefault("dimension names", meta[FUSED_METADATA_KEY])
        return meta

    @property
    def dimension_names(self):
        return self.metadata.get("dimension names")

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.videos)

    def __contains__(self, vid: str) -> bool:
        return vid in self._data

    def __getitem__(self, vid: str) -> tuple[np.ndarray, np.ndarray]:
        if vid not in self._data:
            raise KeyError(f"{self.path}: no video {vid!r}")
        v = self._data[vid]
        for k in ("features", "intervals"):
            if k not in v:
                raise CSDError(f"{self.path}: video {vid!r} has no {k!r} dataset")
        try:
            feats = v["features"][()]
            iv = v["intervals"][()]
        except OSError as e:
            raise CSDError(f"{self.path}: video {vid!r}: unreadable data (corrupt or truncated file): {e}") from e
        if iv.ndim != 2 or iv.shape[1] != 2:
            raise CSDError(f"{self.path}: video {vid!r}: 'intervals' must be [n, 2] (start, end), got shape "
                           f"{iv.shape}")
        if feats.ndim < 2:
            raise CSDError(f"{self.path}: video {vid!r}: 'features' must be at least 2-D, got shape {feats.shape}")
        if feats.shape[0] != iv.shape[0]:
            raise CSDError(f"{self.path}: video {vid!r}: 'features' has {feats.shape[0]} rows but 'intervals' has "
                           f"{iv.shape[0]}; they must match")
        iv = iv.astype(np.float64, copy=False)
        if not np.isfinite(iv).all():
            i = int(np.flatnonzero(~np.isfinite(iv).all(1))[0])
            raise CSDError(f"{self.path}: video {vid!r}: non-finite interval at row {i}")
        return feats, iv

    @property
    def is_words(self) -> bool:
        """True for word sequences (byte-string features)."""
        if not self.videos:
            return False
        return self._data[self.videos[0]]["features"].dtype.kind in "SOU"

    @property
    def dim(self) -> int | None:
        if not self.videos:
            return None
        return int(np.prod(self._data[self.videos[0]]["features"].shape[1:]))

    def validate(self) -> None:
        """Check every video (raises :class:`CSDError` on the first violation)."""
        for vid in self.videos:
            self[vid]

    def load(self) -> dict[str, dict[str, np.ndarray]]:
        """All videos in memory: ``{video: {'features': ..., 'intervals': ...}}``."""
        out = {}
        for vid in self.videos:
            f, iv = self[vid]
            out[vid] = {"features": f, "intervals": iv}
        return out

    def describe(self) -> str:
        lines = [f"CMU-SDK computational sequence {self.path} ({os.path.getsize(self.path) / 2**20:.1f} MiB)",
                 f"  root           {self.root!r}", f"  videos         {len(self.videos)}"]
        if self.videos:
            f, iv = self[self.videos[0]]
            kind = "words (byte strings)" if self.is_words else f"{f.dtype} features, dim {self.dim}"
            lines.append(f"  features       {kind}; first video {self.videos[0]!r}: {f.shape[0]} rows, "
                         f"{iv[0, 0]:.2f}-{iv[-1, 1]:.2f} s")
        for k, v in sorted(self.metadata.items()):
            s = json.dumps(v) if not isinstance(v, str) else v
            lines.append(f"  meta {k}: {s[:100]}{'...' if len(s) > 100 else ''}")
        return "\n".join(lines)


def read_csd(path: str | os.PathLike) -> ComputationalSequence:
    """Open a ``.csd`` file (:class:`ComputationalSequence`)."""
    return ComputationalSequence(path)


def write_csd(path: str | os.PathLike, root: str, data: Mapping[str, Mapping[str, np.ndarray]],
              metadata: Mapping[str, Any] | None = None) -> str:
    """Write a computational sequence in the SDK's layout (gzip 9 on features and intervals, metadata as
    JSON strings of shape (1,)). For fixtures and for exporting."""
    import h5py

    path = os.fspath(path)
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        d = g.create_group("data")
        for vid, e in data.items():
            v = d.create_group(vid)
            v.create_dataset("features", data=np.asarray(e["features"]), compression="gzip", compression_opts=9)
            v.create_dataset("intervals", data=np.asarray(e["intervals"], dtype=np.float64), compression="gzip",
                             compression_opts=9)
        m = g.create_group("metadata")
        for k, val in (metadata or {"root name": root}).items():
            ds = m.create_dataset(k, (1,), dtype=h5py.string_dtype("utf-8"))
            ds[0] = json.dumps(val)
    return path


# --------------------------------------------------------------------------- alignment


def align_to_reference(ref: np.ndarray, intervals: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average, for each reference interval, the rows of ``features`` whose intervals overlap it once
    clipped to its bounds by at least ``EPS`` seconds (the SDK's intersect + ``avg`` collapse).

    Returns ``(out [n_ref, d] float64, found [n_ref] bool)``; rows with nothing overlapping are zero
    (the SDK's zero imputation)."""
    feats = features.reshape(features.shape[0], -1).astype(np.float64, copy=False)
    out = np.zeros((ref.shape[0], feats.shape[1]), dtype=np.float64)
    found = np.zeros(ref.shape[0], dtype=bool)
    if feats.shape[0] == 0:
        return out, found
    s, e = intervals[:, 0], intervals[:, 1]
    monotone = bool(np.all(np.diff(s) >= 0) and np.all(np.diff(e) >= 0) and np.all(e - s >= EPS))
    for i, (rs, re) in enumerate(ref):
        if monotone:
            j0 = int(np.searchsorted(e, rs + EPS, side="left"))
            j1 = int(np.searchsorted(s, re - EPS, side="right"))
            idx = np.arange(j0, max(j0, j1))
            if idx.size:
                clipped = np.minimum(e[idx], re) - np.maximum(s[idx], rs)
                idx = idx[clipped >= EPS]
        else:
            clipped = np.minimum(e, re) - np.maximum(s, rs)
            idx = np.flatnonzero(clipped >= EPS)
        if idx.size:
            out[i] = feats[idx].mean(axis=0)
            found[i] = True
    return out, found


def _fix_nonfinite(x: np.ndarray, *, audio: bool, mode: str, path: str, vid: str, counts: dict) -> np.ndarray:
    if x.dtype.kind not in "fc":
        return x.astype(np.float64)
    fin = np.isfinite(x)
    if fin.all():
        return x
    neg = np.isneginf(x)
    if audio and neg.any():
        counts["neg_inf_replaced"] = counts.get("neg_inf_replaced", 0) + int(neg.sum())
        x = np.where(neg, 0.0, x)
        fin = np.isfinite(x)
        if fin.all():
            return x
    bad = ~fin
    if mode != "zero":
        row = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(1))[0])
        raise CSDError(f"{path}: video {vid!r}: non-finite features (NaN {int(np.isnan(x).sum())}, +inf "
                       f"{int(np.isposinf(x).sum())}, -inf {int(np.isneginf(x).sum())}), first at row {row}; "
                       f"pass nonfinite='zero' to replace them by 0")
    counts["nonfinite_zeroed"] = counts.get("nonfinite_zeroed", 0) + int(bad.sum())
    return np.where(bad, 0.0, x)


def _words(feats: np.ndarray) -> list[str]:
    flat = feats.reshape(feats.shape[0], -1)[:, 0]
    return [w.decode("utf-8", "replace") if isinstance(w, bytes) else str(w) for w in flat.tolist()]


def load_folds(src) -> dict[str, list[str]]:
    """Folds from a dict ``{'train': [...], 'valid': [...], 'test': [...]}`` or a JSON file holding one."""
    if isinstance(src, (str, os.PathLike)):
        with open(src) as fh:
            try:
                src = json.load(fh)
            except ValueError as e:
                raise CSDError(f"{os.fspath(src)}: folds file is not JSON: {e}") from e
    if not isinstance(src, Mapping):
        raise CSDError(f"folds must be a dict of split -> list of video ids, got {type(src).__name__}")
    missing = [s for s in SPLITS if s not in src]
    if missing:
        raise CSDError(f"folds: missing split(s) {missing}; expected {list(SPLITS)}")
    folds = {s: [str(v) for v in src[s]] for s in SPLITS}
    seen: dict[str, str] = {}
    for s in SPLITS:
        for v in folds[s]:
            if v in seen and seen[v] != s:
                raise CSDError(f"folds: video {v!r} is in both {seen[v]!r} and {s!r}")
            seen[v] = s
    return folds


@dataclass
class CSDData:
    """Built utterances: ``splits`` in the store layout, ``meta`` for write_store, ``vocab`` (id k+1 ->
    word ``vocab[k]``)."""

    splits: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any]
    vocab: list[str]


def _open(x) -> tuple[ComputationalSequence, bool]:
    if isinstance(x, ComputationalSequence):
        return x, False
    return ComputationalSequence(x), True


def build_utterances(words, audio, vision, labels, folds, *, word_vectors=None, seq_len: int = 50,
                     label_column: int = 0, keep: str = "first", drop_silence: bool = False,
                     nonfinite: str = "raise", dataset: str = "unknown", vocab: Sequence[str] | None = None
                     ) -> CSDData:
    """Utterance tensors from ``.csd`` sequences (paths or :class:`ComputationalSequence`), see the
    module docstring. ``labels`` is a label sequence (one row per segment; ``label_column`` is the
    sentiment, column 0 in ``CMU_MOSEI_Labels.csd`` and ``CMU_MOSI_Opinion_Labels.csd``); ``folds``
    maps split -> video ids (or a JSON path); ``vocab`` fixes the word vocabulary (words not in it get
    id 1 = its first entry should be an unknown token; by default it is built from the words)."""
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    if nonfinite not in ("raise", "zero"):
        raise ValueError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
    if int(seq_len) < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    folds = load_folds(folds)
    opened = []
    try:
        seqs = {}
        for name, x in (("words", words), ("audio", audio), ("vision", vision), ("labels", labels),
                        ("word_vectors", word_vectors)):
            if x is None:
                continue
            cs, own = _open(x)
            if own:
                opened.append(cs)
            seqs[name] = cs
        if not seqs["words"].is_words:
            raise CSDError(f"{seqs['words'].path}: expected a word sequence (byte-string features such as "
                           f"CMU_*_TimestampedWords.csd), got numeric features")
        for name in ("audio", "vision", "labels", "word_vectors"):
            if name in seqs and seqs[name].is_words:
                raise CSDError(f"{seqs[name].path}: {name} sequence holds strings, expected numeric features")
        # unify: videos present in every sequence
        common = set(seqs["words"].videos)
        for cs in seqs.values():
            common &= set(cs.videos)
        not_in_all = sorted(set().union(*[set(cs.videos) for cs in seqs.values()]) - common)
        fold_of = {v: s for s in SPLITS for v in folds[s]}
        no_fold = sorted(v for v in common if v not in fold_of)
        missing_fold_videos = sorted(v for v in fold_of if v not in common)
        counts: dict[str, int] = {}
        per_split: dict[str, list] = {s: [] for s in SPLITS}
        empty_segments = []
        for vid in sorted(common):
            split = fold_of.get(vid)
            if split is None:
                continue
            wf, wiv = seqs["words"][vid]
            toks = _words(wf)
            keep_w = np.abs(wiv[:, 1] - wiv[:, 0]) >= EPS  # zero-length reference intervals are skipped
            if drop_silence:
                keep_w &= np.array([t != "sp" for t in toks], dtype=bool)
            wiv = wiv[keep_w]
            toks = [t for t, k in zip(toks, keep_w) if k]
            aligned = {}
            for name in ("audio", "vision", "word_vectors"):
                if name not in seqs:
                    continue
                f, iv = seqs[name][vid]
                f = _fix_nonfinite(f, audio=(name == "audio"), mode=nonfinite, path=seqs[name].path, vid=vid,
                                   counts=counts)
                a, found = align_to_reference(wiv, iv, f)
                counts[f"{name}_imputed_words"] = counts.get(f"{name}_imputed_words", 0) + int((~found).sum())
                aligned[name] = a
            lf, liv = seqs["labels"][vid]
            lf = lf.reshape(lf.shape[0], -1)
            if not 0 <= label_column < lf.shape[1]:
                raise CSDError(f"{seqs['labels'].path}: video {vid!r}: label_column {label_column} out of range "
                               f"(labels have {lf.shape[1]} column(s))")
            for k, (ls, le) in enumerate(liv):
                if abs(le - ls) < EPS:
                    continue
                y = float(lf[k, label_column])
                if not np.isfinite(y):
                    raise CSDError(f"{seqs['labels'].path}: video {vid!r}, segment {k}: NaN/inf label")
                clipped = np.minimum(wiv[:, 1], le) - np.maximum(wiv[:, 0], ls)
                sel = np.flatnonzero(clipped >= EPS)
                if sel.size == 0:
                    empty_segments.append(f"{vid}[{k}]")
                    continue
                per_split[split].append((f"{vid}$_${k}", [toks[i] for i in sel],
                                         {n: a[sel] for n, a in aligned.items()}, y))
        if vocab is None:
            vocab = sorted({t for s in SPLITS for item in per_split[s] for t in item[1]})
        word_id = {w: i + 1 for i, w in enumerate(vocab)}
        oov = 0
        splits: dict[str, dict[str, np.ndarray]] = {}
        L = int(seq_len)
        dims = {n: seqs[n].dim for n in ("audio", "vision", "word_vectors") if n in seqs}
        for s in SPLITS:
            items = per_split[s]
            n = len(items)
            if n == 0:
                raise CSDError(f"no segments for split {s!r}: none of its {len(folds[s])} fold video(s) is present "
                               f"in every sequence ({', '.join(cs.path for cs in seqs.values())})")
            ids = np.zeros((n, L), np.int64)
            mask = np.zeros((n, L), np.int64)
            feats = {name: np.zeros((n, L, d), np.float32) for name, d in dims.items()}
            lengths = np.zeros(n, np.int64)
            y = np.zeros(n, np.float32)
            for i, (uid, toks, al, lab) in enumerate(items):
                k = len(toks)
                sl = slice(0, min(k, L)) if keep == "first" else slice(max(0, k - L), k)
                t = toks[sl]
                m = len(t)
                wid = [word_id.get(w, 0) for w in t]
                oov += sum(1 for w in wid if w == 0)
                ids[i, :m] = [w if w else 1 for w in wid]
                mask[i, :m] = 1
                lengths[i] = m
                for name, a in al.items():
                    feats[name][i, :m] = a[sl].astype(np.float32)
                y[i] = lab
            out = {"text_ids": ids, "text_mask": mask}
            if "word_vectors" in feats:
                out["text_feat"] = feats["word_vectors"]
            out.update(audio=feats["audio"], audio_lengths=lengths.copy(), vision=feats["vision"],
                       vision_lengths=lengths.copy(), regression=y, id=np.array([it[0] for it in items]))
            splits[s] = out
        paths = {n: os.path.abspath(cs.path) for n, cs in seqs.items()}
        meta = {
            "dataset": dataset,
            "source": "csd:" + ",".join(f"{n}={os.path.basename(p)}" for n, p in paths.items()),
            "source_format": "cmu-sdk-csd",
            "source_files": paths,
            "aligned": True, "aligned_to": "words", "padding_side": "right", "keep": keep,
            "seq_len": L, "label_column": int(label_column), "drop_silence": bool(drop_silence),
            "nonfinite": nonfinite, "text_ids": "word-level vocabulary (see vocab file), 0 = padding",
            "vocab_size": len(vocab),
            "vocab_sha256": hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest(),
            "videos_not_in_every_sequence": len(not_in_all), "videos_in_no_fold": len(no_fold),
            "fold_videos_missing": len(missing_fold_videos), "segments_without_words": len(empty_segments),
            "out_of_vocabulary_words": oov, **{k: v for k, v in counts.items()},
            "num_videos": {s: len({it[0].split("$_$")[0] for it in per_split[s]}) for s in SPLITS},
        }
        dropped = {"videos not in every sequence": not_in_all, "videos in no fold": no_fold,
                   "fold videos missing from the data": missing_fold_videos,
                   "label segments without words": empty_segments}
        dropped = {k: v for k, v in dropped.items() if v}
        if dropped:
            warnings.warn("csd build: " + "; ".join(f"{len(v)} {k} (e.g. {', '.join(v[:3])})"
                                                     for k, v in dropped.items()), stacklevel=2)
        return CSDData(splits, meta, list(vocab))
    finally:
        for cs in opened:
            cs.close()


def csd_to_store(out: str | os.PathLike, words, audio, vision, labels, folds, *, dtype: str = "float32",
                 compression: str | None = None, compression_opts: int | None = None, **build_kw) -> tuple[str, dict]:
    """:func:`build_utterances` then :func:`write_store` to ``out``, and the vocabulary to
    ``<out>.vocab.txt``. Returns ``(out, meta)``."""
    from msa_fast.data.store import write_store

    d = build_utterances(words, audio, vision, labels, folds, **build_kw)
    out = os.fspath(out)
    vocab_path = out + ".vocab.txt"
    d.meta["vocab_file"] = os.path.basename(vocab_path)
    write_store(out, d.splits, d.meta, dtype=dtype, compression=compression, compression_opts=compression_opts)
    tmp = vocab_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(w + "\n" for w in d.vocab))
    os.replace(tmp, vocab_path)
    return out, d.meta
