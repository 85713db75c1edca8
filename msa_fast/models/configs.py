"""Per-model × per-dataset hyper-parameters (models.md §2.4, §5.4, §6), the data dims, and the registry.

One place per model × dataset: :data:`CONFIGS` ``[(model, dataset)]`` is a plain dict holding every
config key of the model (the papers' values, and for each open choice of models.md §6 the spec's
default). :func:`default_config` returns a copy; :func:`build` validates a user config against it
(unknown key → ``ValueError`` naming the key and listing the valid ones) and builds the model.

Feature dims and lengths never live here: they come from the data as :class:`DataDims`
(``DataDims.from_batch`` / ``from_arrays`` / a mapping), models.md §0.2.

Keys of the form ``'<model>.<key>'`` (the spelling of models.md §6, e.g. ``'hycon.fusion'``) are accepted
and mean ``'<key>'``. Keys read by the engine: ``lr``, ``epochs``, ``batch_size``, ``weight_decay``
(and each :class:`~msa_fast.models.base.Stage`'s ``extra`` holds the stage's ``lr`` / ``batch_size``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DATASETS", "CONFIGS", "PRESETS", "PRESET_DATA", "preset_config", "DataDims", "available_models",
           "default_config", "resolve_config", "build"]

DATASETS = ("mosi", "mosei", "sims")

# --------------------------------------------------------------------------- shared text-encoder keys

_TEXT = dict(
    # None: the packaged default (resolve_text_model); a local directory (e.g. bert-base-uncased saved with
    # save_pretrained, bert-base-chinese for CH-SIMS); 'random': a small randomly initialised BERT
    # (tests, smoke runs; overridden by text_random_config).
    text_model=None,
    text_random_config={},
    # True: use the cached token features batch.text_feat [B, L_t, D_t] instead of running the encoder.
    text_features=False,
    # backend of the fused contrastive op ('auto', 'reference', 'cpp', 'triton', 'cuda')
    backend="auto",
    # under DDP: the contrastive loss pairs every sample of the global batch (rows gathered across
    # ranks, gradients scaled so the engine's averaging gives the single-process full-batch gradient);
    # False: each rank pairs only its own shard. No effect in one process.
    global_batch=False,
    # how dropout masks are drawn: 'philox' (msa_fast.ops.dropout: counter-based, vectorised C++ on CPU,
    # mask regenerated in backward; msa_fast/models/dropout.py) | 'torch' (torch.nn.Dropout and
    # nn.MultiheadAttention's own dropout, as built). Same distribution, different random stream.
    dropout_impl="philox",
    # how a fine-tuned text encoder runs: 'packed' (only the token positions the model reads and the valid
    # keys they attend to; the same values there; msa_fast/models/text_packing.py) | 'hf' (Hugging Face's
    # forward on all L positions, padding included)
    text_impl="packed",
    weight_decay=0.0,
)

# --------------------------------------------------------------------------- HyCon (models.md §2)

_HYCON = dict(
    _TEXT,
    d=50,                        # unimodal representation width [paper]
    conv_kernel=3,               # temporal conv k 3, padding 1, no bias [code: MIB]
    mte_heads=5, mte_layers=3,   # MTE (models.md B3) [code: MIB]
    attn_dropout=0.5, relu_dropout=0.3, res_dropout=0.3, emb_dropout=0.2,
    last_step="padded",          # 'padded' X[:, T-1] [paper + code: MIB] | 'valid' X[:, len-1]
    fusion="add",                # 'add' | 'concat' | 'tensor' | 'graph' [paper Table 4]
    regressor="linear",          # 'linear' Linear(d,1) | 'mlp' Linear(d,d)-ReLU-Dropout-Linear(d,1)
    regressor_dropout=0.1,
    alpha=0.8,                   # modality margin [paper]
    lambda1=1.0, lambda2=1.0, lambda3=1.0,   # IAMCL, IEMCL, SCL weights [paper]
    use_log=False, sim_transform="cos", tau=0.1,   # hycon.use_log / hycon.sim_transform
    reduction="mean",            # hycon.reduction: 'mean' | 'sum'
    drop_zero_pairs=False,       # hycon.binarise: y >= 0 (False) | drop y == 0 from pair generation (True)
    den_guard="skip",            # hycon.den_guard: 'skip' | 'clamp' | 'none'
    # paper Table 3 ablations: any of 'cl' (all three terms), 'refinement', 'margin' (alpha = 1),
    # 'iamcl', 'iemcl', 'scl'
    ablate=[],
    freeze_text=False,
    optim="one",                 # hycon.optim: 'one' Adam at lr | 'two_groups' BERT + its conv at lr, rest lr_other
    lr=1e-5, lr_other=2e-5,
    batch_size=32, epochs=50,    # [code: MIB]
)

# --------------------------------------------------------------------------- MGCL (models.md §5)

_MGCL = dict(
    _TEXT,
    d_p=384,                     # projector width [spec] (alternative 768)
    proj_dropout=0.5,            # [spec] (alternative 0.1)
    av_dim=768, av_heads=8, av_ffn=2048, av_dropout=0.1,  # stage-1 A/V Transformer, post-LN [spec]
    av_layers=1,                 # 1 (MOSI, CH-SIMS) | 3 (MOSEI) [paper Table 2]
    attn_pool_dim=128,           # attention pooling W: width -> 128, v: 128 -> 1 [spec]
    pool_kernel=3,               # AvgPool_k of the enhanced micro sequence [spec]
    micro="sequence",            # mgcl.micro: 'sequence' (project per step + masked mean) | 'pooled_first'
    fusion_heads=8,              # CMGF nn.MultiheadAttention(d_p, 8) [spec]
    fusion_dropout=0.0,
    # how CMGF's one-query attention runs: 'folded' (the key / value projections moved to the query side,
    # equal up to rounding and ~30x fewer multiply-adds; msa_fast/models/single_query_attention.py) |
    # 'mha' (nn.MultiheadAttention's forward, every key and value row projected)
    cmgf_impl="folded",
    predictor_hidden=[384, 96], predictor_dropout=0.1,    # three-layer MLP [spec]
    aux_hidden=96,               # six auxiliary heads Linear(d_p, 96)-ReLU-Linear(96, 1) [spec]
    stage1_head_hidden=[384, 192, 96],                    # stage-1 heads, GELU [code: ConFEDE]
    alpha=0.1, beta=0.01,        # L_all = L_pred + alpha L_con + beta L_uni [spec]
    delta=0.4, gain=1.5, tau=0.03,
    label_scale=3.0,             # 3 on MOSI/MOSEI, 1 on CH-SIMS
    pos_weight="mgcl", neg_weight="mgcl",   # 'mgcl' | 'clgsi' | 'none'
    reduction="mean",            # 'mean' | 'sum'
    same_sample_c2="literal3",   # 'literal3' | 'ordered6'
    # paper Tables 5-6 ablations: any of 'cl', 'c3', 'uni', 'fusion' (concatenation), 'weight'
    ablate=[],
    freeze_bert=False,           # mgcl.freeze_bert (stage 2)
    pretrain_unimodal=True,      # stage 1 (False: the multimodal stage only)
    stage1_target="unimodal",    # 'unimodal' (y_T/y_A/y_V where present, else y) | 'y'
    stage1_text_lr=1e-5, stage1_text_epochs=150, stage1_text_batch_size=64,
    stage1_av_lr=1e-4, stage1_av_epochs=200, stage1_av_batch_size=128,
    early_stop_patience=None,    # stage 1: None = keep the best of the stated epochs
    lr=1e-4, epochs=50, batch_size=64,   # stage 2
)

CONFIGS: dict[tuple[str, str], dict] = {
    ("hycon", "mosi"): dict(_HYCON),
    ("hycon", "mosei"): dict(_HYCON),
    ("hycon", "sims"): dict(_HYCON),  # [spec]: CH-SIMS values are HyCon's MOSI/MOSEI ones
    ("mgcl", "mosi"): dict(_MGCL),
    ("mgcl", "mosei"): dict(_MGCL, av_layers=3, epochs=25, batch_size=8),
    ("mgcl", "sims"): dict(_MGCL, label_scale=1.0),
}

# --------------------------------------------------------------------------- training presets

#: ``msa-fast train --preset``: ``'paper'`` trains with :data:`CONFIGS` as they are (the papers' epochs,
#: fine-tuned text encoder, full-width encoders); ``'quick'`` is the main job on the embedded synthetic
#: default and must finish in a few minutes on 2 CPU cores, so it changes what costs the time and says so
#: in the run's config: the word-aligned default set with cached 768-d text features
#: (:data:`QUICK_DATA`; the text encoder is not run, as with MMSA's feature pickles), a higher learning
#: rate for the few epochs, three seeds instead of five, eager steps (compiling costs minutes per seed on
#: 2 busy cores, more than it saves in a run this short; ``--set compile=true`` turns it on), and for
#: MGCL narrower stage-1 A/V Transformers (768-d x 3 layers cost ~20 s per batch of 64 here) with 2
#: pretraining epochs instead of 200. HyCon's ratio terms use the spec's ``sim_transform='cos01'``
#: ((1 + s)/2, a positive denominator): with the paper's raw-cosine ratio ('cos', the config default and
#: ``--preset paper``) the denominator Σ_pos s + Σ_neg s crosses zero on small batches and the IAMCL/IEMCL
#: terms jump between −40 and +30 (measured, seed 1111, 6 epochs: epoch means of IAMCL −0.21, −0.42,
#: +0.86, +0.85, −0.24, −1.82), while with 'cos01' every term decreases (IAMCL −0.526 → −0.570, IEMCL
#: −0.541 → −0.575, SCL 0.033 → 0.002) and test Corr rises from 0.81 to 0.85.
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"hycon": {}, "mgcl": {}},
    "quick": {
        "hycon": dict(text_features=True, lr=1e-3, epochs=6, seeds=[1111, 1112, 1113], compile=False,
                      sim_transform="cos01"),
        "mgcl": dict(text_features=True, av_dim=128, av_heads=4, av_ffn=512, av_layers=1,
                     stage1_av_epochs=2, stage1_av_batch_size=128, epochs=5, lr=5e-4,
                     seeds=[1111, 1112, 1113], compile=False),
    },
}

#: ``default_dataset`` arguments of the data each preset trains on when no data is given.
PRESET_DATA: dict[str, dict] = {"paper": {}, "quick": dict(aligned=True, text_features=True)}


def preset_config(preset: str, name: str) -> dict:
    """The config values preset ``preset`` sets for model ``name`` (engine keys such as ``seeds``
    included); ``ValueError`` naming the valid presets for an unknown one."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[preset].get(str(name).lower(), {}))


_ALIASES = {"ch-sims": "sims", "chsims": "sims", "ch_sims": "sims", "cmu-mosi": "mosi", "cmu-mosei": "mosei"}

_ABLATIONS = {"hycon": ("cl", "refinement", "margin", "iamcl", "iemcl", "scl"),
              "mgcl": ("cl", "c3", "uni", "fusion", "weight")}

_CHOICES = {
    ("hycon", "last_step"): ("padded", "valid"),
    ("hycon", "fusion"): ("add", "concat", "tensor", "graph"),
    ("hycon", "regressor"): ("linear", "mlp"),
    ("hycon", "sim_transform"): ("cos", "cos01", "exp_tau"),
    ("hycon", "reduction"): ("mean", "sum"),
    ("hycon", "den_guard"): ("skip", "clamp", "none"),
    ("hycon", "optim"): ("one", "two_groups"),
    ("mgcl", "micro"): ("sequence", "pooled_first"),
    ("mgcl", "cmgf_impl"): ("folded", "mha"),
    ("mgcl", "pos_weight"): ("mgcl", "clgsi", "none"),
    ("mgcl", "neg_weight"): ("mgcl", "clgsi", "none"),
    ("mgcl", "reduction"): ("mean", "sum"),
    ("mgcl", "same_sample_c2"): ("literal3", "ordered6"),
    ("mgcl", "stage1_target"): ("unimodal", "y"),
}


# --------------------------------------------------------------------------- data dims


@dataclass
class DataDims:
    """What a model needs to know about the data (models.md §0.2), read from the data, never hard-coded.

    ``d_a``, ``d_v``: audio / visual feature dims; ``d_t``: width of cached ``text_feat`` (None if the
    data has none); ``l_t``, ``l_a``, ``l_v``: padded lengths (informational: every length-dependent
    quantity is computed from the tensors at forward time); ``y_range``; ``unimodal_labels`` (CH-SIMS);
    ``language`` ('en' / 'zh')."""

    d_a: int
    d_v: int
    d_t: int | None = None
    l_t: int | None = None
    l_a: int | None = None
    l_v: int | None = None
    y_range: tuple[float, float] = (-3.0, 3.0)
    unimodal_labels: bool = False
    language: str = "en"
    aligned: bool | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping, **extra) -> "DataDims":
        """From one split's arrays in the store layout (``audio [N, L, D]``, ``vision``, ``text_ids``, ...)."""
        tf = arrays.get("text_feat")
        return cls(d_a=int(arrays["audio"].shape[-1]), d_v=int(arrays["vision"].shape[-1]),
                   d_t=None if tf is None else int(tf.shape[-1]),
                   l_t=int(arrays["text_ids"].shape[-1]) if "text_ids" in arrays else None,
                   l_a=int(arrays["audio"].shape[1]), l_v=int(arrays["vision"].shape[1]),
                   unimodal_labels="regression_T" in arrays, **extra)

    @classmethod
    def from_batch(cls, batch, **extra) -> "DataDims":
        """From a :class:`~msa_fast.data.loader.Batch` (or a mapping with the same fields)."""
        g = (lambda k: batch.get(k)) if isinstance(batch, Mapping) else (lambda k: getattr(batch, k, None))
        tf = g("text_feat")
        return cls(d_a=int(g("audio").shape[-1]), d_v=int(g("vision").shape[-1]),
                   d_t=None if tf is None else int(tf.shape[-1]),
                   l_t=int(g("text_ids").shape[-1]) if g("text_ids") is not None else None,
                   l_a=int(g("audio").shape[1]), l_v=int(g("vision").shape[1]),
                   unimodal_labels=g("y_T") is not None, **extra)

    @classmethod
    def coerce(cls, dims) -> "DataDims":
        """A :class:`DataDims`, or one made from a mapping (keys as the fields; ``audio``/``vision``/``text``
        are accepted for ``d_a``/``d_v``/``d_t``) or from any object with ``d_a``/``d_v`` attributes."""
        if isinstance(dims, cls):
            return dims
        if dims is None:
            raise ValueError("dims is required: the feature dims come from the data (DataDims.from_arrays / "
                             "DataDims.from_batch, or a mapping with d_a and d_v)")
        if isinstance(dims, Mapping):
            d = dict(dims)
            for alias, key in (("audio", "d_a"), ("vision", "d_v"), ("text", "d_t")):
                if alias in d:
                    d.setdefault(key, d.pop(alias))
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - names)
            if unknown:
                raise ValueError(f"unknown dims key {unknown[0]!r}; valid keys: {sorted(names)}")
            return cls(**d)
        return cls(**{f.name: getattr(dims, f.name) for f in dataclasses.fields(cls) if hasattr(dims, f.name)})


# --------------------------------------------------------------------------- configs and registry


def _dataset(dataset: str | None) -> str:
    ds = "mosei" if dataset is None else str(dataset).lower()
    ds = _ALIASES.get(ds, ds)
    if ds not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {list(DATASETS)}")
    return ds


def available_models() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted({m for m, _ in CONFIGS})


def default_config(name: str, dataset: str | None = "mosei") -> dict:
    """A copy of the config of model ``name`` on ``dataset`` (``'mosi' | 'mosei' | 'sims'``)."""
    name = str(name).lower()
    if name not in available_models():
        raise ValueError(f"unknown model {name!r}; available models: {available_models()}")
    return copy.deepcopy(CONFIGS[(name, _dataset(dataset))])


def resolve_config(name: str, cfg: Mapping | None = None, dataset: str | None = None) -> dict:
    """``default_config(name, dataset)`` updated with ``cfg``, validated.

    ``cfg`` may carry ``'dataset'`` (used when ``dataset`` is None) and keys spelled ``'<name>.<key>'``.
    Unknown keys → ``ValueError`` naming the key and listing the valid ones; a value outside a key's
    choices → ``ValueError`` listing them."""
    name = str(name).lower()
    cfg = dict(cfg or {})
    dataset = dataset if dataset is not None else cfg.pop("dataset", None)
    cfg.pop("dataset", None)
    cfg.pop("model", None)
    out = default_config(name, dataset)
    for key, value in cfg.items():
        k = key[len(name) + 1:] if isinstance(key, str) and key.startswith(name + ".") else key
        if k not in out:
            raise ValueError(f"unknown config key {key!r} for model {name!r}; valid keys: {sorted(out)}")
        out[k] = value
    for (m, k), choices in _CHOICES.items():
        if m == name and out[k] not in choices:
            raise ValueError(f"config key {k!r} of model {name!r} must be one of {list(choices)}, got {out[k]!r}")
    ablate = out["ablate"]
    ablate = [ablate] if isinstance(ablate, str) else list(ablate or [])
    for a in ablate:
        a2 = str(a).lower().removeprefix("wo_").removeprefix("w/o ")
        if a2 not in _ABLATIONS[name]:
            raise ValueError(f"unknown ablation {a!r} for model {name!r}; valid: {list(_ABLATIONS[name])}")
    out["ablate"] = sorted({str(a).lower().removeprefix("wo_").removeprefix("w/o ") for a in ablate})
    return out


def build(name: str, cfg: Mapping | None = None, dims=None, *, dataset: str | None = None):
    """Build model ``name`` (see :func:`available_models`) from a config (merged over the dataset's
    defaults, :func:`resolve_config`) and the data dims (:class:`DataDims` or a mapping)."""
    name = str(name).lower()
    if name not in available_models():
        raise ValueError(f"unknown model {name!r}; available models: {available_models()}")
    full = resolve_config(name, cfg, dataset)
    dims = DataDims.coerce(dims)
    if name == "hycon":
        from msa_fast.models.hycon import HyCon
        return HyCon(dims, full)
    from msa_fast.models.mgcl import MGCL
    return MGCL(dims, full)
