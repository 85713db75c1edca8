"""``msa-fast data ...``: convert, info, verify, synth.

    msa-fast data convert SRC OUT [--format auto|mmsa|csd] [--dtype float32|float16]
                                  [--compression none|gzip|lzf] [--compression-level N] ...
    msa-fast data info FILE          # an msa_fast store, an MMSA pickle or a .csd file
    msa-fast data verify FILE        # store: checksums + structure; pickle/.csd: a full read with every check
    msa-fast data synth --like mosi|mosei|sims OUT [--seed S] [--scale X] [--aligned] [--dtype ...]

``convert`` of an MMSA pickle: SRC is the ``.pkl``. ``convert`` of CMU-SDK files: SRC is a directory
(or any ``.csd`` in it); the words, audio, vision, labels (and optional word-vector) sequences are
found by their standard file names (``*TimestampedWords.csd``, ``*COVAREP.csd``, ``*Facet*42*.csd``,
``*Labels.csd``, ``*TimestampedWordVectors.csd``) or given with ``--words/--audio/...``; the folds come
from ``--folds FILE.json`` (or ``SRC/folds.json``).

Errors in the input print one line naming the file (and split, key, sample) and exit with status 1.
Only the registration (:func:`add_parser`) is imported by ``msa_fast.cli``; the work is done lazily.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

__all__ = ["add_parser", "main"]


def _fail(msg: str) -> int:
    print(f"msa-fast data: error: {msg}", file=sys.stderr)
    return 1


def _kind(path: str) -> str:
    """'store' | 'csd' | 'pickle' | 'dir' by content (not by name)."""
    if os.path.isdir(path):
        return "dir"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
        except OSError:
            return "store" if path.endswith((".h5", ".hdf5")) else "csd"
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        return "store" if fmt == "msa_fast-store" else "csd"
    return "pickle"


# --------------------------------------------------------------------------- convert


_CSD_PATTERNS = {
    "words": ("*TimestampedWords.csd",),
    "word_vectors": ("*TimestampedWordVectors.csd",),
    "audio": ("*COVAREP*.csd",),
    "vision": ("*Facet*42*.csd", "*FACET*42*.csd", "*Facet*.csd", "*OpenFace*.csd"),
    "labels": ("*Labels.csd",),
}


def _find_csd(src_dir: str, role: str, given: str | None) -> str | None:
    if given:
        p = given if os.path.isabs(given) or os.path.exists(given) else os.path.join(src_dir, given)
        if not os.path.exists(p):
            raise FileNotFoundError(f"--{role.replace('_', '-')} file not found: {p}")
        return p
    for pat in _CSD_PATTERNS[role]:
        hits = sorted(glob.glob(os.path.join(src_dir, pat)))
        if len(hits) > 1:
            raise ValueError(f"{src_dir}: several candidate {role} sequences {hits}; choose one with "
                             f"--{role.replace('_', '-')}")
        if hits:
            return hits[0]
    return None


def _convert(args) -> int:
    src, out = args.src, args.out
    fmt = args.format
    if fmt == "auto":
        kind = _kind(src)
        fmt = "csd" if kind in ("dir", "csd") else ("mmsa" if kind == "pickle" else None)
        if fmt is None:
            return _fail(f"{src} is already an msa_fast store; nothing to convert")
    compression = None if args.compression == "none" else args.compression
    if fmt == "mmsa":
        from msa_fast.data.mmsa_pickle import mmsa_to_store

        out, meta = mmsa_to_store(src, out, dataset=args.dataset, text_features=args.text_features,
                                  zero_beyond_length=not args.keep_frames_past_length, nonfinite=args.nonfinite,
                                  min_length_one=not args.keep_zero_lengths, expected_sha256=args.sha256,
                                  dtype=args.dtype, compression=compression, compression_opts=args.compression_level)
    else:
        from msa_fast.data.csd import csd_to_store

        src_dir = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
        roles = {r: _find_csd(src_dir, r, getattr(args, r)) for r in _CSD_PATTERNS}
        missing = [r for r in ("words", "audio", "vision", "labels") if roles[r] is None]
        if missing:
            return _fail(f"{src_dir}: no {', '.join(missing)} sequence found; give them with "
                         + " ".join(f"--{m.replace('_', '-')} FILE" for m in missing))
        folds = args.folds or os.path.join(src_dir, "folds.json")
        if not os.path.exists(folds):
            return _fail(f"no folds: pass --folds FILE.json with {{\"train\": [...], \"valid\": [...], "
                         f"\"test\": [...]}} video ids (the SDK's standard folds are not bundled)")
        out, meta = csd_to_store(out, roles["words"], roles["audio"], roles["vision"], roles["labels"], folds,
                                 word_vectors=roles["word_vectors"], seq_len=args.seq_len,
                                 label_column=args.label_column, keep=args.keep, drop_silence=args.drop_silence,
                                 nonfinite=args.nonfinite, dataset=args.dataset or "unknown", dtype=args.dtype,
                                 compression=compression, compression_opts=args.compression_level)
    from msa_fast.data.store import StoreReader

    with StoreReader(out) as r:
        sizes = ", ".join(f"{s} {r.num_samples(s)}" for s in r.splits)
        print(f"wrote {out}: {r.meta['dataset']} ({sizes}), {args.dtype}, compression {args.compression}; "
              f"source {meta['source']}")
    for key, what in (("neg_inf_replaced", "audio -inf replaced by 0"), ("nonfinite_zeroed", "non-finite zeroed"),
                      ("lengths_capped", "lengths capped at the padded length"),
                      ("zero_lengths_raised", "zero lengths raised to 1"),
                      ("samples_with_frames_past_length", "samples with non-zero frames past their length"
                       + (" (zeroed)" if meta.get("zero_beyond_length") else " (kept)"))):
        v = meta.get(key)
        total = sum(x if isinstance(x, int) else sum(x.values()) for x in v.values()) if isinstance(v, dict) else v
        if total:
            print(f"  {what}: {v}")
    if meta.get("ignored_keys"):
        shown = sorted({k.split("/")[-1] for k in meta["ignored_keys"]})
        print(f"  not stored: {', '.join(shown)}" + ("" if args.text_features else
                                                     " (--text-features keeps MMSA's `text` BERT features)"))
    for key in ("videos_not_in_every_sequence", "videos_in_no_fold", "fold_videos_missing", "segments_without_words",
                "neg_inf_replaced", "nonfinite_zeroed"):
        if meta.get("source_format") == "cmu-sdk-csd" and meta.get(key):
            print(f"  {key.replace('_', ' ')}: {meta[key]}")
    return 0


# --------------------------------------------------------------------------- info / verify / synth


def _info(args) -> int:
    kind = _kind(args.file)
    if kind == "store":
        from msa_fast.data.store import describe

        print(describe(args.file))
    elif kind == "csd":
        from msa_fast.data.csd import ComputationalSequence

        with ComputationalSequence(args.file) as cs:
            print(cs.describe())
    elif kind == "pickle":
        from msa_fast.data.mmsa_pickle import summarize_pickle

        print(summarize_pickle(args.file))
    else:
        return _fail(f"{args.file} is a directory; give a store, an MMSA pickle or a .csd file")
    return 0


def _verify(args) -> int:
    kind = _kind(args.file)
    if kind == "store":
        from msa_fast.data.store import verify

        report = verify(args.file)
        print(report)
        return 0 if report.ok else 1
    if kind == "csd":
        from msa_fast.data.csd import ComputationalSequence

        with ComputationalSequence(args.file) as cs:
            cs.validate()
            print(f"{args.file}: OK ({len(cs.videos)} video(s), root {cs.root!r})")
        return 0
    if kind == "pickle":
        import warnings

        from msa_fast.data.mmsa_pickle import read_mmsa

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = read_mmsa(args.file)
        sizes = ", ".join(f"{s} {len(v['id'])}" for s, v in d.splits.items())
        print(f"{args.file}: OK (MMSA pickle, {d.meta['dataset']}, {'aligned' if d.meta['aligned'] else 'unaligned'}, "
              f"{sizes}; sha256 {d.meta['source_sha256']})")
        for w in caught:
            print(f"  note: {w.message}")
        return 0
    return _fail(f"{args.file} is a directory")


def _synth(args) -> int:
    from msa_fast.data.synthetic import write_synthetic_store

    compression = None if args.compression == "none" else args.compression
    out = write_synthetic_store(args.out, args.like, seed=args.seed, scale=args.scale, aligned=args.aligned,
                                text_features=args.text_features, dtype=args.dtype, compression=compression)
    from msa_fast.data.store import StoreReader

    with StoreReader(out) as r:
        sizes = ", ".join(f"{s} {r.num_samples(s)}" for s in r.splits)
    print(f"wrote {out}: synthetic {args.like} ({sizes}), seed {args.seed}, scale {args.scale}, "
          f"{'aligned' if args.aligned else 'unaligned'}, {args.dtype}")
    return 0


def _run(fn):
    def wrapped(args) -> int:
        from msa_fast.data.csd import CSDError
        from msa_fast.data.mmsa_pickle import MMSAPickleError
        from msa_fast.data.store import StoreError

        try:
            return fn(args)
        except (StoreError, MMSAPickleError, CSDError, FileNotFoundError, ValueError, OSError, KeyError) as e:
            return _fail(str(e) if not isinstance(e, KeyError) else str(e.args[0]))
    return wrapped


# --------------------------------------------------------------------------- registration


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage dtype of audio/vision/text features (default float32)")
    p.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                   help="HDF5 compression of the store (default none: fastest reads)")
    p.add_argument("--compression-level", type=int, default=None, help="gzip level (default 4)")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``data`` and its subcommands on ``sub`` (the top-level subparsers object)."""
    data = sub.add_parser("data", help="convert, describe, verify datasets; make the synthetic dataset",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = data.add_subparsers(dest="data_command", required=True)

    c = dsub.add_parser("convert", help="MMSA pickle or CMU-SDK .csd set -> msa_fast store")
    c.add_argument("src", help="MMSA .pkl file, or a directory (or a .csd file) of CMU-SDK sequences")
    c.add_argument("out", help="output store file (.h5)")
    c.add_argument("--format", choices=("auto", "mmsa", "csd"), default="auto")
    _storage_args(c)
    c.add_argument("--dataset", default=None, help="dataset name (default: inferred from the dims for MMSA)")
    c.add_argument("--nonfinite", choices=("raise", "zero"), default="raise",
                   help="NaN/inf other than audio -inf: raise (default) or replace by 0")
    g = c.add_argument_group("MMSA pickles")
    g.add_argument("--text-features", action="store_true", help="keep MMSA's `text` BERT features as text_feat")
    g.add_argument("--keep-frames-past-length", action="store_true",
                   help="do not zero frames past the recorded lengths (MMSA bit-compatibility)")
    g.add_argument("--keep-zero-lengths", action="store_true", help="do not raise zero lengths to 1")
    g.add_argument("--sha256", default=None, help="expected SHA-256 of the pickle")
    g = c.add_argument_group("CMU-SDK .csd")
    for role in ("words", "audio", "vision", "labels", "word_vectors"):
        g.add_argument(f"--{role.replace('_', '-')}", dest=role, default=None, help=f"{role} sequence (.csd)")
    g.add_argument("--folds", default=None, help="JSON {train: [...], valid: [...], test: [...]} of video ids")
    g.add_argument("--seq-len", type=int, default=50)
    g.add_argument("--label-column", type=int, default=0, help="label column (0 = sentiment)")
    g.add_argument("--keep", choices=("first", "last"), default="first", help="words kept when truncating")
    g.add_argument("--drop-silence", action="store_true", help='drop "sp" (silence) words')
    c.set_defaults(func=_run(_convert))

    i = dsub.add_parser("info", help="describe a store, an MMSA pickle or a .csd file")
    i.add_argument("file")
    i.set_defaults(func=_run(_info))

    v = dsub.add_parser("verify", help="check a store's checksums and structure (or fully read a pickle/.csd)")
    v.add_argument("file")
    v.set_defaults(func=_run(_verify))

    s = dsub.add_parser("synth", help="write the synthetic MOSI/MOSEI/SIMS-shaped dataset to a store")
    s.add_argument("--like", choices=("mosi", "mosei", "sims"), required=True)
    s.add_argument("out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes (default 1)")
    s.add_argument("--aligned", action="store_true", help="aligned variant (MOSI/MOSEI only)")
    s.add_argument("--text-features", action="store_true", help="add 768-d text features")
    _storage_args(s)
    s.set_defaults(func=_run(_synth))
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="msa-fast")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
