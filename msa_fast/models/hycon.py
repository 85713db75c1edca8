"""HyCon — Hybrid Contrastive Learning (arXiv v1, 2109.01797), models.md §2.

Pipeline: BERT-family text encoder + temporal conv; conv + MulT-style Transformer encoder ("MTE",
models.md B3) for audio and vision; last-step representations ``x_l, x_a, x_v [B, d]``; fusion
(element-wise addition by default; concatenation, tensor and graph fusion as in the paper's Table 4);
regressor; MAE plus ``λ1 IAMCL + λ2 IEMCL + λ3 SCL`` from :func:`msa_fast.ops.hycon_loss`.

This module also holds the building blocks shared with :mod:`msa_fast.models.mgcl`: the text encoder
wrapper (:class:`TextEncoder`), the sinusoidal table (B2), the MTE (B3), field access/validation of a
batch, and the torch.export wrapper (:class:`Predictor`, :func:`export_predictor`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F

from msa_fast.models.base import MSAModel, Stage
from msa_fast.models.configs import DataDims, resolve_config
from msa_fast.models.dropout import apply_dropout_impl

__all__ = ["HyCon", "TextEncoder", "MTE", "sinusoidal_table", "Predictor", "export_predictor",
           "hycon_refinement", "global_rows", "grad_scaled"]


# =========================================================================== shared building blocks


def field(batch, name: str):
    """``batch.<name>`` for a :class:`~msa_fast.data.loader.Batch` or a mapping; None if absent."""
    if isinstance(batch, Mapping):
        return batch.get(name)
    return getattr(batch, name, None)


def check_dim(modality: str, x: torch.Tensor, expected: int | None, ndim: int = 3) -> None:
    """ValueError naming the modality, the expected and the actual feature dim (models.md §0.2)."""
    if x is None:
        raise ValueError(f"{modality}: the batch has no {modality!r} tensor")
    if x.dim() != ndim:
        raise ValueError(f"{modality}: expected a {ndim}-d tensor [B, L, D], got shape {tuple(x.shape)}")
    if expected is not None and x.shape[-1] != expected:
        raise ValueError(f"{modality}: expected feature dim {expected} (from the data dims), got {x.shape[-1]} "
                         f"(shape {tuple(x.shape)})")


def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, T]`` bool, ``t < length``."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


def lengths_of(batch, name: str, T: int, device) -> torch.Tensor:
    """``<name>_len`` (int64), or the full length T if the batch has none."""
    n = field(batch, f"{name}_len")
    if n is None:
        n = field(batch, f"{name}_lengths")
    if n is None:
        return torch.full((1,), T, dtype=torch.long, device=device)
    return n.to(device=device, dtype=torch.long)


def global_rows(enabled: bool, *tensors: torch.Tensor):
    """``(tensors, w)``: with ``enabled`` under torch.distributed, the rows of every rank concatenated
    (:func:`msa_fast.ops.distributed.gather_rows`, gradient flowing back to this rank's rows) and the
    world size ``w``; otherwise the tensors unchanged and ``w = 1``."""
    if not enabled:
        return tensors, 1
    from msa_fast.ops.distributed import ddp_loss_scale, gather_rows

    w = ddp_loss_scale()
    return (gather_rows(*tensors) if w > 1 else tensors), w


def grad_scaled(loss: torch.Tensor, w: int) -> torch.Tensor:
    """``loss`` with its gradient multiplied by ``w`` and its value unchanged: every rank computes the
    same global-batch loss and the engine averages gradients over ``w`` ranks, so ``w``·gradient makes
    the average the single-process full-batch gradient while logs show the loss itself."""
    return loss if w == 1 else loss + (w - 1) * (loss - loss.detach())


def sinusoidal_table(pos: torch.Tensor, D: int) -> torch.Tensor:
    """models.md B2: fairseq-style ``PE_D`` rows for integer positions ``pos [...]`` → ``[..., D]``.

    ``half = ⌊D/2⌋``, ``ω_k = exp(−k ln(10000)/(half − 1))``, sines then cosines concatenated, one zero
    column for odd D, position 0 is the all-zero padding row; ``half = 1`` uses ``ω_0 = 1``, ``D = 1`` gives
    zeros. No parameters, recomputed on the fly."""
    half = D // 2
    out_shape = tuple(pos.shape) + (D,)
    if half == 0:
        return torch.zeros(out_shape, device=pos.device)
    k = torch.arange(half, device=pos.device, dtype=torch.float32)
    omega = torch.exp(-k * (math.log(10000.0) / (half - 1))) if half > 1 else torch.ones(1, device=pos.device)
    ang = pos.to(torch.float32)[..., None] * omega
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if D % 2:
        table = torch.cat([table, torch.zeros_like(table[..., :1])], dim=-1)
    return table * (pos > 0).to(table.dtype)[..., None]


class _MTELayer(nn.Module):
    def __init__(self, d, heads, attn_dropout, relu_dropout, res_dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.relu_dropout = nn.Dropout(relu_dropout)
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(self, h):
        x = self.ln1(h)
        # key/value as a view (not the query object): eval mode never takes PyTorch's fused MHA fast path
        # (different rounding from the exported graph), so exported predictions are bit-identical
        kv = x.view_as(x)
        h = h + self.res_dropout(self.attn(x, kv, kv, need_weights=False)[0])
        x = self.ln2(h)
        return h + self.res_dropout(self.fc2(self.relu_dropout(F.relu(self.fc1(x)))))


class MTE(nn.Module):
    """models.md B3: ``h = Dropout(√d·X + PE_d(pos(X)))``, pre-LN blocks (MHA; ReLU FFN 4d), final LN.

    No attention or padding mask (as in the MulT/MIB code); ``pos[b, t] = t + 1`` where ``X[b, t, 0] ≠ 0``."""

    def __init__(self, d, heads=5, layers=3, attn_dropout=0.5, relu_dropout=0.3, res_dropout=0.3, emb_dropout=0.2):
        super().__init__()
        self.d = d
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList([_MTELayer(d, heads, attn_dropout, relu_dropout, res_dropout)
                                     for _ in range(layers)])
        self.ln = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x):
        T = x.shape[1]
        pos = torch.arange(1, T + 1, device=x.device)[None, :] * (x[:, :, 0] != 0).to(torch.long)
        h = self.emb_dropout(math.sqrt(self.d) * x + sinusoidal_table(pos, self.d).to(x.dtype))
        for layer in self.layers:
            h = layer(h)
        return self.ln(h)


class TextEncoder(nn.Module):
    """The BERT-family encoder (models.md B1) or the cached ``text_feat``: ``forward(batch) → (H [B, L, W], mask)``.

    ``text_model``: None (the packaged default), a local directory, or ``'random'`` (a small random BERT,
    ``random_config`` overrides its config). ``use_features=True`` builds no encoder and reads
    ``batch.text_feat`` (width ``d_t`` from the data). ``freeze``: no gradient into the encoder, which
    then runs under ``torch.no_grad`` in eval mode.

    ``impl``: ``'packed'`` runs the encoder only on the positions the model reads (``reads(mask) → bool
    [B, L]``, set by the model; :mod:`msa_fast.models.text_packing`), zero at the others; ``'hf'`` runs
    Hugging Face's forward on every position. With ``reads=None`` both return every position."""

    def __init__(self, text_model=None, *, use_features=False, d_t=None, random_config=None, freeze=False,
                 impl="packed", reads=None):
        super().__init__()
        from msa_fast.models import text_packing

        if impl not in text_packing.IMPLS:
            raise ValueError(f"text_impl must be one of {text_packing.IMPLS}, got {impl!r}")
        self.use_features = bool(use_features)
        self.freeze = bool(freeze)
        self.impl = impl
        self.reads = reads
        if self.use_features:
            if d_t is None:
                raise ValueError("text_features=True needs the width of the cached text features: the data dims "
                                 "have no d_t (the data has no 'text_feat' array)")
            self.encoder = None
            self.width = int(d_t)
        else:
            from msa_fast import text as _text
            if text_model == "random":
                self.encoder = _text.random_text_encoder(warn=False, **dict(random_config or {}))
            else:
                self.encoder = _text.load_text_encoder(text_model)
            self.width = int(self.encoder.config.hidden_size)
            if impl == "packed":
                text_packing.check_packable(self.encoder)
            if self.freeze:
                for p in self.encoder.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and self.freeze:
            self.encoder.eval()
        return self

    def forward(self, batch):
        mask = field(batch, "text_mask")
        if self.use_features:
            H = field(batch, "text_feat")
            check_dim("text_feat", H, self.width)
            if mask is None:
                mask = torch.ones(H.shape[:2], dtype=torch.long, device=H.device)
            return H.float(), mask.to(H.device).bool()
        ids = field(batch, "text_ids")
        if ids is None:
            raise ValueError("text: the batch has no 'text_ids' (or use text_features=True with 'text_feat')")
        if ids.dim() != 2:
            raise ValueError(f"text: expected text_ids [B, L_t], got shape {tuple(ids.shape)}")
        ids = ids.long()
        mask = torch.ones_like(ids) if mask is None else mask.long()
        tt = field(batch, "text_type")
        tt = torch.zeros_like(ids) if tt is None else tt.long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if self.impl == "packed" and self.reads is not None:
                from msa_fast.models.text_packing import packed_hidden

                H = packed_hidden(self.encoder, ids, mask, tt, self.reads(mask.bool()))
            else:
                H = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        return H, mask.bool()


def conv_last_step_reads(valid: torch.Tensor, *, kernel: int, padding: int, mode: str) -> torch.Tensor:
    """The text positions HyCon reads (bool ``[B, L]``): ``x_l`` is the conv output at the last step only
    (:func:`last_step` of ``mask.sum(1)``), and that output's window is ``kernel`` inputs from ``step − padding``."""
    B, L = valid.shape
    steps = L + 2 * padding - kernel + 1
    if mode == "padded":
        t = torch.full((B,), steps - 1, dtype=torch.long, device=valid.device)
    else:
        t = (valid.sum(1) - 1).clamp(min=0, max=steps - 1)
    start = (t - padding)[:, None]
    pos = torch.arange(L, device=valid.device)[None, :]
    return (pos >= start) & (pos < start + kernel)


def last_step(X: torch.Tensor, lengths: torch.Tensor | None, mode: str) -> torch.Tensor:
    """``X[:, T−1]`` (``'padded'``, models.md §2.1) or ``X[b, len_b − 1]`` (``'valid'``; length 0 → step 0)."""
    if mode == "padded" or lengths is None:
        return X[:, -1]
    idx = (lengths.to(torch.long) - 1).clamp(min=0, max=X.shape[1] - 1).expand(X.shape[0])
    return X[torch.arange(X.shape[0], device=X.device), idx]


class Predictor(nn.Module):
    """A tensor-only inference wrapper for ``torch.export``:
    ``forward(text_ids, text_mask, audio, audio_len, vision, vision_len[, text_feat]) → pred [B]``."""

    def __init__(self, model: MSAModel):
        super().__init__()
        self.model = model

    def forward(self, text_ids, text_mask, audio, audio_len, vision, vision_len, text_feat=None):
        batch = {"text_ids": text_ids, "text_mask": text_mask, "text_type": torch.zeros_like(text_ids),
                 "audio": audio, "audio_len": audio_len, "vision": vision, "vision_len": vision_len,
                 "text_feat": text_feat}
        return self.model.predict(batch)


def predictor_args(batch, with_text_feat: bool = False) -> tuple:
    """The positional arguments of :class:`Predictor` taken from a batch."""
    args = (field(batch, "text_ids").long(), field(batch, "text_mask").long(), field(batch, "audio").float(),
            field(batch, "audio_len").long(), field(batch, "vision").float(), field(batch, "vision_len").long())
    if with_text_feat:
        args = args + (field(batch, "text_feat").float(),)
    return args


def export_predictor(model: MSAModel, batch, *, dynamic_batch: bool = False):
    """``torch.export.export`` of the model's inference path (eval mode) on the example ``batch``.

    Returns the ``ExportedProgram``; ``ep.module()(*predictor_args(batch))`` gives ``model.predict(batch)``.
    Save/load with ``torch.export.save`` / ``torch.export.load``."""
    model.eval()
    with_tf = bool(getattr(model, "uses_text_features", False))
    args = predictor_args(batch, with_tf)
    dyn = None
    if dynamic_batch:
        b = torch.export.Dim("batch", min=2, max=4096)
        dyn = tuple({0: b} for _ in args)
    return torch.export.export(Predictor(model), args, dynamic_shapes=dyn)


def param_names_under(model: nn.Module, prefixes) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in prefixes)]


def apply_stage(model: nn.Module, stage: Stage) -> None:
    """Set ``requires_grad`` from ``stage.trainable`` (submodule names; None = all), for callers that do
    not do it themselves (the engine owns this; tests use it)."""
    if stage.trainable is None:
        names = None
    else:
        names = set(param_names_under(model, stage.trainable))
    frozen = set(getattr(model, "_always_frozen", lambda: [])())
    for n, p in model.named_parameters():
        p.requires_grad_((names is None or n in names) and n not in frozen)


# =========================================================================== HyCon


class GraphFusion(nn.Module):
    """The Graph Fusion Network of Mai et al. 2020 (ARGF), as used in HyCon's Table 4: unimodal nodes
    weighted by ``tanh(w·x_m)``; bimodal nodes ``tanh(e_ij · G[x_i; x_j])`` and trimodal nodes
    ``tanh(e · G[b_p; b_q])`` from one shared ``G: 2d → d``, with edge weights from the node scores and
    the similarity of the softmax-normalised node embeddings (softmax over the three edges of a layer);
    the three layer embeddings (unimodal mean, bimodal sum, trimodal sum) are averaged → ``[B, d]``."""

    def __init__(self, d):
        super().__init__()
        self.attention = nn.Linear(d, 1)
        self.graph = nn.Linear(2 * d, d)

    @staticmethod
    def _edge(p, q, sp, sq):
        sim = (F.softmax(p, dim=-1) * F.softmax(q, dim=-1)).sum(-1, keepdim=True)
        return (sp + sq) / (sim + 0.5)

    def forward(self, l, a, v):
        sl, sa, sv = (torch.tanh(self.attention(x)) for x in (l, a, v))
        unimodal = (sl * l + sa * a + sv * v) / 3
        e = F.softmax(torch.cat([self._edge(a, v, sa, sv), self._edge(a, l, sa, sl), self._edge(v, l, sv, sl)], -1), -1)
        g_av, g_al, g_vl = self.graph(torch.cat([a, v], -1)), self.graph(torch.cat([a, l], -1)), \
            self.graph(torch.cat([v, l], -1))
        b_av, b_al, b_vl = torch.tanh(e[:, 0:1] * g_av), torch.tanh(e[:, 1:2] * g_al), torch.tanh(e[:, 2:3] * g_vl)
        s_av, s_al, s_vl = e[:, 0:1], e[:, 1:2], e[:, 2:3]
        e2 = F.softmax(torch.cat([self._edge(g_av, g_vl, s_av, s_vl), self._edge(g_al, g_vl, s_al, s_vl),
                                  self._edge(g_av, g_al, s_av, s_al)], -1), -1)
        t1 = torch.tanh(e2[:, 0:1] * self.graph(torch.cat([b_av, b_vl], -1)))
        t2 = torch.tanh(e2[:, 1:2] * self.graph(torch.cat([b_al, b_vl], -1)))
        t3 = torch.tanh(e2[:, 2:3] * self.graph(torch.cat([b_av, b_al], -1)))
        return (unimodal + (b_av + b_al + b_vl) + (t1 + t2 + t3)) / 3


class TensorFusion(nn.Module):
    """TFN: ``FC((d+1)³ → d)`` on the outer product of ``[x_l, 1] ⊗ [x_a, 1] ⊗ [x_v, 1]``."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear((d + 1) ** 3, d)

    def forward(self, l, a, v):
        one = torch.ones_like(l[:, :1])
        l1, a1, v1 = torch.cat([l, one], -1), torch.cat([a, one], -1), torch.cat([v, one], -1)
        z = torch.einsum("bi,bj,bk->bijk", l1, a1, v1).flatten(1)
        return self.fc(z)


def hycon_refinement(x_l, x_a, x_v, y, alpha=0.8, *, reduction="mean", drop_zero=False):
    """The two refinement parts of IAMCL and IEMCL (ops.md §4): ``mean_V (1/N_k) Σ_Pos1 (s − 1)²`` and
    ``mean_V (1/2N_k) Σ_Pos (s − α)²`` (dense, no host sync). Used by the "w/o refinement" ablation,
    which subtracts them from the fused op's terms."""
    from msa_fast.ops.hycon import hycon_classes

    K = x_l.shape[0]
    dev = x_l.device
    z = torch.cat([F.normalize(x.float(), dim=-1) for x in (x_l, x_a, x_v)], 0)
    s = z @ z.T
    modality = torch.arange(3, device=dev).repeat_interleave(K)
    sample = torch.arange(K, device=dev).repeat(3)
    cls = hycon_classes(y)[sample]
    keep = (y != 0)[sample] if drop_zero else torch.ones(3 * K, dtype=torch.bool, device=dev)
    same_view = modality[:, None] == modality[None, :]
    cand = keep[None, :] & keep[:, None] & (sample[:, None] != sample[None, :]) & (cls[:, None] == cls[None, :])
    pos_intra, pos_inter = cand & same_view, cand & ~same_view
    n_k = pos_intra.sum(1)
    valid = keep & (n_k >= 1)
    denom = n_k.clamp_min(1).to(s.dtype)
    ref_intra = torch.where(pos_intra, (s - 1.0) ** 2, 0).sum(1) / denom
    ref_inter = torch.where(pos_inter, (s - alpha) ** 2, 0).sum(1) / (2 * denom)

    def red(v):
        tot = torch.where(valid, v, 0).sum()
        return tot if reduction == "sum" else tot / valid.sum().clamp_min(1).to(tot.dtype)

    return red(ref_intra), red(ref_inter)


class HyCon(MSAModel):
    """HyCon (models.md §2). ``HyCon(dims, cfg)``: ``dims`` a :class:`DataDims` (or mapping), ``cfg`` a
    (partial) config (see ``configs.CONFIGS[('hycon', dataset)]``)."""

    name = "hycon"

    def __init__(self, dims, cfg: Mapping | None = None):
        super().__init__()
        cfg = resolve_config("hycon", cfg)
        self.cfg = cfg
        self.dims = dims = DataDims.coerce(dims)
        d = int(cfg["d"])
        k = int(cfg["conv_kernel"])
        self.text = TextEncoder(cfg["text_model"], use_features=cfg["text_features"], d_t=dims.d_t,
                                random_config=cfg["text_random_config"], freeze=cfg["freeze_text"],
                                impl=cfg["text_impl"],
                                reads=functools.partial(conv_last_step_reads, kernel=k, padding=k // 2,
                                                        mode=cfg["last_step"]))
        self.uses_text_features = bool(cfg["text_features"])
        self.conv_l = nn.Conv1d(self.text.width, d, k, padding=k // 2, bias=False)
        self.conv_a = nn.Conv1d(dims.d_a, d, k, padding=k // 2, bias=False)
        self.conv_v = nn.Conv1d(dims.d_v, d, k, padding=k // 2, bias=False)
        mte = dict(heads=cfg["mte_heads"], layers=cfg["mte_layers"], attn_dropout=cfg["attn_dropout"],
                   relu_dropout=cfg["relu_dropout"], res_dropout=cfg["res_dropout"], emb_dropout=cfg["emb_dropout"])
        self.mte_a = MTE(d, **mte)
        self.mte_v = MTE(d, **mte)
        fusion = cfg["fusion"]
        if fusion == "add":
            self.fusion = None
        elif fusion == "concat":
            self.fusion = nn.Linear(3 * d, d)
        elif fusion == "tensor":
            self.fusion = TensorFusion(d)
        else:
            self.fusion = GraphFusion(d)
        if cfg["regressor"] == "linear":
            self.regressor = nn.Linear(d, 1)
        else:
            self.regressor = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(cfg["regressor_dropout"]),
                                           nn.Linear(d, 1))
        ab = set(cfg["ablate"])
        self.use_term = {"iamcl": not ({"cl", "iamcl"} & ab), "iemcl": not ({"cl", "iemcl"} & ab),
                         "scl": not ({"cl", "scl"} & ab)}
        self.refinement = "refinement" not in ab
        self.alpha = 1.0 if "margin" in ab else float(cfg["alpha"])
        apply_dropout_impl(self, cfg["dropout_impl"])

    def _always_frozen(self):
        return param_names_under(self, ["text.encoder"]) if self.cfg["freeze_text"] else []

    # ------------------------------------------------------------------ forward

    def _modality(self, batch, name, expected, conv, mte):
        x = field(batch, name)
        check_dim(name, x, expected)
        x = x.float()
        T = x.shape[1]
        n = lengths_of(batch, name, T, x.device)
        x = x * length_mask(n, T).to(x.dtype)[..., None]      # frames past the length never count
        X = mte(conv(x.transpose(1, 2)).transpose(1, 2))
        return last_step(X, n, self.cfg["last_step"])

    def forward(self, batch) -> dict[str, torch.Tensor]:
        H, mask = self.text(batch)
        X_l = self.conv_l(H.transpose(1, 2)).transpose(1, 2)
        x_l = last_step(X_l, mask.sum(1), self.cfg["last_step"])
        x_a = self._modality(batch, "audio", self.dims.d_a, self.conv_a, self.mte_a)
        x_v = self._modality(batch, "vision", self.dims.d_v, self.conv_v, self.mte_v)
        if self.fusion is None:
            x_m = x_l + x_a + x_v
        elif isinstance(self.fusion, nn.Linear):
            x_m = self.fusion(torch.cat([x_l, x_a, x_v], -1))
        else:
            x_m = self.fusion(x_l, x_a, x_v)
        pred = self.regressor(x_m).squeeze(-1)
        return {"pred": pred, "x_l": x_l, "x_a": x_a, "x_v": x_v, "fused": x_m}

    def predict(self, batch) -> torch.Tensor:
        """The inference path: ``forward(batch)['pred']`` (fp32 ``[B]``)."""
        return self.forward(batch)["pred"]

    # ------------------------------------------------------------------ losses

    def contrastive_terms(self, out, y):
        """``(iamcl, iemcl, scl)`` as they enter the total (refinement removed for "w/o refinement")."""
        from msa_fast.ops import hycon_loss

        c = self.cfg
        (*feats, y), w = global_rows(c["global_batch"], out["x_l"], out["x_a"], out["x_v"], y)
        iamcl, iemcl, scl = hycon_loss(*feats, y, self.alpha, use_log=c["use_log"], sim_transform=c["sim_transform"],
                                       tau=c["tau"], den_guard=c["den_guard"], reduction=c["reduction"],
                                       drop_zero=c["drop_zero_pairs"], backend=c["backend"])
        extra = {}
        if not self.refinement:
            ref_a, ref_e = hycon_refinement(*feats, y, self.alpha, reduction=c["reduction"],
                                            drop_zero=c["drop_zero_pairs"])
            iamcl, iemcl = iamcl - ref_a, iemcl - ref_e
            extra = {"iamcl_ref": ref_a.detach(), "iemcl_ref": ref_e.detach()}
        return grad_scaled(iamcl, w), grad_scaled(iemcl, w), grad_scaled(scl, w), extra

    def loss_terms(self, batch, out, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        y = field(batch, "y").to(out["pred"].device).float()
        mae = (out["pred"] - y).abs().mean()
        terms = {"mae": mae}
        lam = {"iamcl": self.cfg["lambda1"], "iemcl": self.cfg["lambda2"], "scl": self.cfg["lambda3"]}
        total = mae
        if any(self.use_term.values()):
            iamcl, iemcl, scl, extra = self.contrastive_terms(out, y)
        else:  # "w/o contrastive learning": logged only
            with torch.no_grad():
                iamcl, iemcl, scl, extra = self.contrastive_terms(out, y)
        for key, value in (("iamcl", iamcl), ("iemcl", iemcl), ("scl", scl)):
            if self.use_term[key]:
                total = total + lam[key] * value
                terms[key] = value
            else:
                terms[key] = value.detach()
        terms.update(extra)
        terms["total"] = total
        return terms

    # ------------------------------------------------------------------ schedule

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        cfg = {**self.cfg, **(cfg or {})}
        wd = cfg.get("weight_decay", 0.0)
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if cfg.get("optim", "one") == "one":
            return [{"params": [p for _, p in trainable], "lr": cfg["lr"], "weight_decay": wd}]
        text = set(param_names_under(self, ["text", "conv_l"]))
        return [{"params": [p for n, p in trainable if n in text], "lr": cfg["lr"], "weight_decay": wd},
                {"params": [p for n, p in trainable if n not in text], "lr": cfg.get("lr_other", cfg["lr"]),
                 "weight_decay": wd}]

    def stages(self, cfg: dict | None = None) -> list[Stage]:
        cfg = {**self.cfg, **(cfg or {})}
        trainable = None
        if self.cfg["freeze_text"]:
            trainable = [n for n, _ in self.named_children() if n != "text"]
        return [Stage("multimodal", epochs=cfg.get("epochs"), trainable=trainable, loss="total",
                      extra={"lr": cfg["lr"], "batch_size": cfg["batch_size"]})]
