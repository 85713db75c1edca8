"""Dataset shapes (``../shared/spec/data.md`` §1.2) and the array layout of one split of the store.

Everything here is plain Python: no numpy arrays, no h5py.

Decisions on points data.md leaves open (documented here once):

* **CH-SIMS has no aligned release** (``unaligned_39.pkl`` is the only file), so
  ``DATASETS['sims'].seq_lens(aligned=True)`` raises ``ValueError``.
* **Aligned lengths.** Aligned MMSA files carry no ``*_lengths``; their valid length for all three
  modalities is the text-mask sum (§1.3 trap 2). msa_fast's store always stores ``audio_lengths`` and
  ``vision_lengths`` (for aligned data they equal the text-mask sum), so every consumer reads lengths
  the same way.
* **MOSEI unaligned vision length** is 500 (the file reports), not the 375 some model configs list.
* **Label grids.** MOSEI/MOSI labels are float32 values on a grid of sixths in [-3, 3] (§3.4: the real
  fixture is on sixths, 99.9 % of it on thirds); CH-SIMS labels are averages of five annotators'
  {-1, 0, 1} votes, i.e. a grid of fifths (0.2) in [-1, 1] — consistent with MMSA's SIMS bin edges
  at ±0.1 and ±0.7.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SPLITS", "DatasetShape", "DATASETS", "get_shape", "ArraySpec", "split_layout",
           "REQUIRED_KEYS", "OPTIONAL_KEYS", "LABEL_KEYS", "TEXT_FEAT_DIM"]

#: Split names, in order. Every store and every synthetic dataset has exactly these three.
SPLITS = ("train", "valid", "test")

#: Width of the cached text-encoder features (BERT-base last hidden state).
TEXT_FEAT_DIM = 768


@dataclass(frozen=True)
class DatasetShape:
    """Shapes of one dataset family as released by MMSA (data.md §1.2)."""

    name: str
    split_sizes: dict[str, int]
    text_len: int                      # L_t, bert tokens including [CLS]/[SEP], padded at the end
    audio_dim: int                     # D_a
    vision_dim: int                    # D_v
    audio_len_unaligned: int           # T_a of the unaligned file
    vision_len_unaligned: int          # T_v of the unaligned file
    has_aligned: bool                  # an aligned file exists (L_a = L_v = L_t)
    label_range: tuple[float, float]   # regression label range
    label_step: float                  # spacing of the label grid
    unimodal_labels: bool              # regression_T/_A/_V present (CH-SIMS)
    language: str                      # 'en' or 'zh'
    tokenizer: str                     # the BERT the text ids come from
    text_feat_dim: int = TEXT_FEAT_DIM
    padding_side: str = "right"        # MMSA pads at the end (§1.3 trap 7)
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.split_sizes.values())

    def seq_lens(self, aligned: bool) -> dict[str, int]:
        """``{'text': L_t, 'audio': T_a, 'vision': T_v}`` for the aligned or unaligned variant."""
        if aligned:
            if not self.has_aligned:
                raise ValueError(f"dataset {self.name!r} has no aligned release (data.md §1.2: "
                                 f"the unaligned file is the only one); use aligned=False")
            return {"text": self.text_len, "audio": self.text_len, "vision": self.text_len}
        return {"text": self.text_len, "audio": self.audio_len_unaligned, "vision": self.vision_len_unaligned}

    def feature_dims(self) -> dict[str, int]:
        return {"text": self.text_feat_dim, "audio": self.audio_dim, "vision": self.vision_dim}

    def label_keys(self) -> tuple[str, ...]:
        return LABEL_KEYS if self.unimodal_labels else ("regression",)


DATASETS: dict[str, DatasetShape] = {
    "mosi": DatasetShape(
        name="mosi", split_sizes={"train": 1284, "valid": 229, "test": 686}, text_len=50,
        audio_dim=5, vision_dim=20, audio_len_unaligned=375, vision_len_unaligned=500, has_aligned=True,
        label_range=(-3.0, 3.0), label_step=1.0 / 6.0, unimodal_labels=False, language="en",
        tokenizer="bert-base-uncased",
        notes=("audio 5-d / vision 20-d are CMU's hand-selected processed_data subsets (MMSA #48)",)),
    "mosei": DatasetShape(
        name="mosei", split_sizes={"train": 16326, "valid": 1871, "test": 4659}, text_len=50,
        audio_dim=74, vision_dim=35, audio_len_unaligned=500, vision_len_unaligned=500, has_aligned=True,
        label_range=(-3.0, 3.0), label_step=1.0 / 6.0, unimodal_labels=False, language="en",
        tokenizer="bert-base-uncased",
        notes=("audio 74-d COVAREP (channel 0 = F0, 0 on unvoiced frames; channel 1 = VUV)",
               "vision 35-d FACET 4.2")),
    "sims": DatasetShape(
        name="sims", split_sizes={"train": 1368, "valid": 456, "test": 457}, text_len=39,
        audio_dim=33, vision_dim=709, audio_len_unaligned=400, vision_len_unaligned=55, has_aligned=False,
        label_range=(-1.0, 1.0), label_step=0.2, unimodal_labels=True, language="zh",
        tokenizer="bert-base-chinese",
        notes=("audio 33-d librosa ZCR 1 + MFCC 20 + chroma_cqt 12",
               "vision 709-d OpenFace 2 (gaze 288, pose 6, landmarks 340, PDM 40, AUs 35)")),
}


def get_shape(name: str) -> DatasetShape:
    """The :class:`DatasetShape` of ``'mosi' | 'mosei' | 'sims'`` (case-insensitive)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "chsims":
        key = "sims"
    try:
        return DATASETS[key]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None


# --------------------------------------------------------------------------- split layout

#: Multimodal label first, then CH-SIMS's unimodal labels.
LABEL_KEYS = ("regression", "regression_T", "regression_A", "regression_V")


@dataclass(frozen=True)
class ArraySpec:
    """One array of a split: ``shape = (N, *tail)``.

    ``kind`` is ``'int'`` (token ids, mask, lengths: stored int32), ``'float'`` (audio, vision, text
    features: stored float16 or float32, chosen at write time), ``'label'`` (float32, must be finite)
    or ``'str'`` (utf-8 ids). ``tail`` entries are ints, or ``None`` when only the store's other
    arrays fix them (e.g. the feature dims of an unknown dataset).
    """

    name: str
    kind: str
    tail: tuple[int | None, ...]
    required: bool = True
    doc: str = ""

    @property
    def ndim(self) -> int:
        return 1 + len(self.tail)


REQUIRED_KEYS = ("text_ids", "text_mask", "audio", "audio_lengths", "vision", "vision_lengths",
                 "regression", "id")
OPTIONAL_KEYS = ("text_feat", "regression_T", "regression_A", "regression_V")


def split_layout(shape: DatasetShape | str | None = None, *, aligned: bool = False) -> dict[str, ArraySpec]:
    """The arrays of one split of the store, keyed by name.

    With a dataset ``shape`` (or its name) the tails are the exact dims and lengths of data.md
    §1.2; with ``None`` they are left open (``None``) and only the ranks are fixed.
    """
    if isinstance(shape, str):
        shape = get_shape(shape)
    if shape is None:
        lt = la = lv = da = dv = df = None
        unimodal_required = False
    else:
        lens = shape.seq_lens(aligned)
        lt, la, lv = lens["text"], lens["audio"], lens["vision"]
        da, dv, df = shape.audio_dim, shape.vision_dim, shape.text_feat_dim
        unimodal_required = False  # optional even for SIMS: MMSA-FET drops them when NaN
    return {
        "text_ids": ArraySpec("text_ids", "int", (lt,), doc="BERT input ids, [CLS] ... [SEP] then [PAD]=0"),
        "text_mask": ArraySpec("text_mask", "int", (lt,), doc="attention mask, 1 on real tokens"),
        "text_feat": ArraySpec("text_feat", "float", (lt, df), required=False,
                               doc="optional cached text-encoder features (MMSA's `text`)"),
        "audio": ArraySpec("audio", "float", (la, da), doc="padded at the end"),
        "audio_lengths": ArraySpec("audio_lengths", "int", (), doc="valid audio frames per sample"),
        "vision": ArraySpec("vision", "float", (lv, dv), doc="padded at the end"),
        "vision_lengths": ArraySpec("vision_lengths", "int", (), doc="valid vision frames per sample"),
        "regression": ArraySpec("regression", "label", (), doc="multimodal sentiment label (M)"),
        "regression_T": ArraySpec("regression_T", "label", (), required=unimodal_required, doc="text label"),
        "regression_A": ArraySpec("regression_A", "label", (), required=unimodal_required, doc="audio label"),
        "regression_V": ArraySpec("regression_V", "label", (), required=unimodal_required, doc="vision label"),
        "id": ArraySpec("id", "str", (), doc="'<video_id>$_$<clip_id>'"),
    }
