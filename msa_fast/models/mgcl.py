"""MGCL — Modality-Granularity Collaborative Contrastive Learning, models.md §5.

Encoders: the BERT-family text encoder; for audio and vision ``Linear(D_m → 768)`` + a post-LN
Transformer encoder (8 heads, FFN 2048, dropout 0.1, key-padding mask from the lengths; 1 layer, 3 on
MOSEI). Features per modality: a macro vector (text [CLS]; audio/visual attention pooling) and an
enhanced micro sequence ``[H ; AvgPool_3(H) ; ΔH]`` (zeros past the length), projected to ``d_p``
(macro: LN-Linear-Tanh-Dropout; micro per step: LN-Linear-ReLU-Linear-Tanh-Dropout, micro vector =
masked mean). CMGF fusion: each macro vector queries the other two modalities' micro sequences
(``nn.MultiheadAttention(d_p, 8)`` with a key-padding mask and a residual on the query); the three
outputs are concatenated into the three-layer regressor. Six auxiliary heads on the macro and micro
vectors. ``L_all = L_pred + α L_con + β L_uni`` with ``L_con`` from
:func:`msa_fast.ops.mgcl_contrastive_loss`.

Schedule (:meth:`MGCL.stages`): stage 1 trains each unimodal encoder alone with its own regression
head (``unimodal_text``, ``unimodal_audio``, ``unimodal_vision``; loss keys ``uni_text`` /
``uni_audio`` / ``uni_vision``), then stage 2 (``multimodal``, loss ``total``) trains MGCL initialised
from them. ``forward`` computes only the branch a unimodal stage needs when the engine has frozen the
rest (``requires_grad`` from ``Stage.trainable``): then ``out['pred']`` is that branch's head, so the
stage's validation MAE selects the unimodal checkpoint; otherwise (and always in :meth:`predict`) the
full model runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F

from msa_fast.models.base import MSAModel, Stage
from msa_fast.models.configs import DataDims, resolve_config
from msa_fast.models.dropout import apply_dropout_impl
from msa_fast.models.hycon import TextEncoder, check_dim, field, global_rows, grad_scaled, length_mask, lengths_of
from msa_fast.models.single_query_attention import single_query_attention

__all__ = ["MGCL", "enhanced_micro", "masked_mean", "mgcl_loss_without_c3"]


# --------------------------------------------------------------------------- feature helpers


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of ``x [B, T, D]`` on the valid steps of ``mask [B, T]`` (0 for an empty row)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def valid_and_first_reads(valid: torch.Tensor) -> torch.Tensor:
    """The text positions MGCL reads (bool ``[B, L]``): every valid one (masked means, the micro sequence,
    the fusion's keys) and position 0 (the macro vector ``H_t[:, 0]``, read even when the sample is empty)."""
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return valid | first


def enhanced_micro(H: torch.Tensor, mask: torch.Tensor, k: int = 3) -> torch.Tensor:
    """``[H ; AvgPool_k(H) ; ΔH]`` ``[B, T, 3W]`` (models.md §5.2): the average has stride 1 and same
    padding and counts only valid positions; ``ΔH[:, τ] = H[:, τ] − H[:, τ−1]``, ``ΔH[:, 0] = 0``; all
    values at invalid positions are zero."""
    m = mask.to(H.dtype)[..., None]
    Hm = H * m
    T = H.shape[1]
    pad = k // 2
    s = F.avg_pool1d(Hm.transpose(1, 2), k, stride=1, padding=pad, count_include_pad=True).transpose(1, 2)[:, :T]
    c = F.avg_pool1d(m.transpose(1, 2), k, stride=1, padding=pad, count_include_pad=True).transpose(1, 2)[:, :T]
    avg = s / c.clamp_min(1e-6 / k) * (c > 0).to(H.dtype)
    delta = torch.cat([torch.zeros_like(Hm[:, :1]), Hm[:, 1:] - Hm[:, :-1]], dim=1)
    return torch.cat([Hm, avg * m, delta * m], dim=-1)


class AttentionPool(nn.Module):
    """``α = masked_softmax_τ(vᵀ tanh(W h_τ))``, ``Σ_τ α_τ h_τ`` (W: width → 128, v: 128 → 1)."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        self.W = nn.Linear(width, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, H, mask):
        score = self.v(torch.tanh(self.W(H))).squeeze(-1)
        score = score.masked_fill(~mask, float("-inf"))
        a = torch.softmax(score, dim=-1)
        a = torch.nan_to_num(a, nan=0.0)   # an all-masked row pools to 0
        return torch.einsum("bt,btd->bd", a, H)


class PostLNLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (post-LN, ReLU FFN) written out: the key-padding mask is passed
    as an additive float mask, so eval mode never takes PyTorch's fused "fast path", whose rounding
    differs from the exported (decomposed) graph — the exported predictor then matches bit for bit."""

    def __init__(self, width, heads, ffn, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(width, ffn)
        self.linear2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, pad_bias):
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, key_padding_mask=pad_bias, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class AVEncoder(nn.Module):
    """``Linear(D_m → width)`` + a post-LN Transformer encoder with a key-padding mask (models.md §5.1)."""

    def __init__(self, d_in, width, heads, ffn, dropout, layers):
        super().__init__()
        self.proj = nn.Linear(d_in, width)
        self.layers = nn.ModuleList([PostLNLayer(width, heads, ffn, dropout) for _ in range(layers)])

    def forward(self, x, mask):
        h = self.proj(x)
        pad_bias = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill(~mask, float("-inf"))
        for layer in self.layers:
            h = layer(h, pad_bias)
        return h


def _mlp(dims, act):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def mgcl_loss_without_c3(macro, y, delta=0.4, tau=0.03, label_scale=3.0, pos_weight="mgcl", *, neg_weight="mgcl",
                         gain=1.5, reduction="mean", same_sample_c2="literal3"):
    """The collaborative contrastive loss with the C3 pairs removed (the "w/o C3" ablation): C1 and C2
    exactly as ops.md §5 (weights inside the exp, ``ℓ_i = LSE_{P_i∪N_i} − LSE_{P_i}``, 0 without
    negatives), dense over the ``3B × 3B`` macro Gram matrix, no host sync."""
    from msa_fast.ops.mgcl import label_distances, pair_weights

    B = y.shape[0]
    dev = macro[0].device
    Z = F.normalize(torch.cat([m.float() for m in macro], 0), dim=-1)
    sim = Z @ Z.T
    view = torch.arange(3, device=dev).repeat_interleave(B)
    sample = torch.arange(B, device=dev).repeat(3)
    E = label_distances(y, label_scale)[sample][:, sample]
    same = sample[:, None] == sample[None, :]
    pairs = {(0, 2), (0, 1), (1, 2)} if same_sample_c2 == "literal3" else \
        {(0, 2), (0, 1), (1, 2), (2, 0), (1, 0), (2, 1)}
    ss = torch.zeros(3, 3, dtype=torch.bool, device=dev)
    for a, b in pairs:
        ss[a, b] = True
    include = ~same | (same & ss[view][:, view])
    positive = same | (E <= torch.tensor(delta, dtype=torch.float32, device=dev))
    w = pair_weights(E, positive, delta, gain, pos_weight, neg_weight)
    logits = w * sim / tau
    neg_inf = torch.tensor(float("-inf"), device=dev)
    all_l = torch.where(include, logits, neg_inf)
    pos_l = torch.where(include & positive, logits, neg_inf)
    # merge the three rows of each sample (row = view·B + i)
    lse_all = torch.logsumexp(all_l.view(3, B, 3 * B).permute(1, 0, 2).reshape(B, -1), dim=-1)
    lse_pos = torch.logsumexp(pos_l.view(3, B, 3 * B).permute(1, 0, 2).reshape(B, -1), dim=-1)
    has_neg = ((~positive) & include).view(3, B, 3 * B).any(-1).any(0)
    per = torch.where(has_neg, lse_all - torch.where(has_neg, lse_pos, 0.0), 0.0)
    return per.sum() if reduction == "sum" else per.mean()


# --------------------------------------------------------------------------- the model

_STAGE1 = {"unimodal_text": ("T", "text", "head_T", "uni_text", "pred_T", "y_T"),
           "unimodal_audio": ("A", "audio_enc", "head_A", "uni_audio", "pred_A", "y_A"),
           "unimodal_vision": ("V", "vision_enc", "head_V", "uni_vision", "pred_V", "y_V")}


class MGCL(MSAModel):
    """MGCL (models.md §5). ``MGCL(dims, cfg)``: ``dims`` a :class:`DataDims` (or mapping), ``cfg`` a
    (partial) config (see ``configs.CONFIGS[('mgcl', dataset)]``)."""

    name = "mgcl"
    MULTIMODAL = ["text", "audio_enc", "vision_enc", "pool_a", "pool_v", "proj_macro", "proj_micro", "cmgf",
                  "predictor", "aux"]

    def __init__(self, dims, cfg: Mapping | None = None):
        super().__init__()
        cfg = resolve_config("mgcl", cfg)
        self.cfg = cfg
        self.dims = dims = DataDims.coerce(dims)
        ab = set(cfg["ablate"])
        self.use_cl, self.use_c3, self.use_uni = "cl" not in ab, "c3" not in ab, "uni" not in ab
        self.use_fusion = "fusion" not in ab
        self.pos_weight = "none" if "weight" in ab else cfg["pos_weight"]
        self.neg_weight = "none" if "weight" in ab else cfg["neg_weight"]
        dp = int(cfg["d_p"])
        self.text = TextEncoder(cfg["text_model"], use_features=cfg["text_features"], d_t=dims.d_t,
                                random_config=cfg["text_random_config"], impl=cfg["text_impl"],
                                reads=valid_and_first_reads)
        self.uses_text_features = bool(cfg["text_features"])
        wt, wav = self.text.width, int(cfg["av_dim"])
        av = dict(width=wav, heads=cfg["av_heads"], ffn=cfg["av_ffn"], dropout=cfg["av_dropout"],
                  layers=cfg["av_layers"])
        self.audio_enc = AVEncoder(dims.d_a, **av)
        self.vision_enc = AVEncoder(dims.d_v, **av)
        # stage-1 heads: masked mean, then width → 384 → 192 → 96 → 1 with GELU [code: ConFEDE]
        hh = list(cfg["stage1_head_hidden"])
        self.head_T = _mlp([wt] + hh + [1], nn.GELU)
        self.head_A = _mlp([wav] + hh + [1], nn.GELU)
        self.head_V = _mlp([wav] + hh + [1], nn.GELU)
        self.pool_a = AttentionPool(wav, cfg["attn_pool_dim"])
        self.pool_v = AttentionPool(wav, cfg["attn_pool_dim"])
        pdrop = cfg["proj_dropout"]

        def macro_proj(w):
            return nn.Sequential(nn.LayerNorm(w), nn.Linear(w, dp), nn.Tanh(), nn.Dropout(pdrop))

        def micro_proj(w):
            return nn.Sequential(nn.LayerNorm(3 * w), nn.Linear(3 * w, dp), nn.ReLU(), nn.Linear(dp, dp), nn.Tanh(),
                                 nn.Dropout(pdrop))

        self.proj_macro = nn.ModuleDict({"T": macro_proj(wt), "V": macro_proj(wav), "A": macro_proj(wav)})
        self.proj_micro = nn.ModuleDict({"T": micro_proj(wt), "V": micro_proj(wav), "A": micro_proj(wav)})
        if self.use_fusion:
            self.cmgf = nn.ModuleDict({m: nn.MultiheadAttention(dp, cfg["fusion_heads"], dropout=cfg["fusion_dropout"],
                                                                batch_first=True) for m in "TVA"})
            fused = 3 * dp
        else:  # "w/o fusion": concatenation of the six macro and micro vectors
            self.cmgf = nn.ModuleDict()
            fused = 6 * dp
        ph = list(cfg["predictor_hidden"])
        self.predictor = nn.Sequential(nn.Linear(fused, ph[0]), nn.ReLU(), nn.Dropout(cfg["predictor_dropout"]),
                                       *[m for i in range(1, len(ph)) for m in (nn.Linear(ph[i - 1], ph[i]), nn.ReLU())],
                                       nn.Linear(ph[-1], 1))
        self.aux = nn.ModuleList([_mlp([dp, cfg["aux_hidden"], 1], nn.ReLU) for _ in range(6)])
        apply_dropout_impl(self, cfg["dropout_impl"])

    # ------------------------------------------------------------------ encoders

    def _av(self, batch, name, expected, enc):
        x = field(batch, name)
        check_dim(name, x, expected)
        x = x.float()
        T = x.shape[1]
        n = lengths_of(batch, name, T, x.device).clamp(min=1)   # length 0 → one (zero) frame, no all-masked row
        mask = length_mask(n, T).expand(x.shape[0], T)
        x = x * mask.to(x.dtype)[..., None]
        return enc(x, mask), mask

    def _active_branch(self) -> str | None:
        """The unimodal stage in progress, read from ``requires_grad`` (None: the full model)."""
        if next(self.predictor.parameters()).requires_grad:
            return None
        for stage, (_, _, head, *_rest) in _STAGE1.items():
            if next(getattr(self, head).parameters()).requires_grad:
                return stage
        return None

    def forward(self, batch, *, full: bool = False) -> dict[str, torch.Tensor]:
        branch = None if full else self._active_branch()
        out = {}
        if branch in (None, "unimodal_text"):
            H_t, m_t = self.text(batch)
            out["pred_T"] = self.head_T(masked_mean(H_t, m_t)).squeeze(-1)
        if branch in (None, "unimodal_audio"):
            H_a, m_a = self._av(batch, "audio", self.dims.d_a, self.audio_enc)
            out["pred_A"] = self.head_A(masked_mean(H_a, m_a)).squeeze(-1)
        if branch in (None, "unimodal_vision"):
            H_v, m_v = self._av(batch, "vision", self.dims.d_v, self.vision_enc)
            out["pred_V"] = self.head_V(masked_mean(H_v, m_v)).squeeze(-1)
        if branch is not None:
            out["pred"] = out[_STAGE1[branch][4]]
            return out

        k = int(self.cfg["pool_kernel"])
        macro_raw = {"T": H_t[:, 0], "V": self.pool_v(H_v, m_v), "A": self.pool_a(H_a, m_a)}
        Hs, Ms = {"T": H_t, "V": H_v, "A": H_a}, {"T": m_t, "V": m_v, "A": m_a}
        macro = {m: self.proj_macro[m](macro_raw[m]) for m in "TVA"}
        micro_seq, micro_mask, micro = {}, {}, {}
        for m in "TVA":
            enh = enhanced_micro(Hs[m], Ms[m], k)
            if self.cfg["micro"] == "pooled_first":
                v = self.proj_micro[m](masked_mean(enh, Ms[m]))
                micro[m], micro_seq[m] = v, v[:, None]
                micro_mask[m] = torch.ones_like(Ms[m][:, :1])
            else:
                seq = self.proj_micro[m](enh)
                micro_seq[m], micro_mask[m], micro[m] = seq, Ms[m], masked_mean(seq, Ms[m])
        if self.use_fusion:
            fused = []
            for q, (o1, o2) in (("T", ("V", "A")), ("V", ("T", "A")), ("A", ("T", "V"))):
                kv = torch.cat([micro_seq[o1], micro_seq[o2]], 1)
                keep = torch.cat([micro_mask[o1], micro_mask[o2]], 1)
                kpm = torch.zeros(keep.shape, dtype=kv.dtype, device=kv.device).masked_fill(~keep, float("-inf"))
                att = single_query_attention(self.cmgf[q], macro[q], kv, kpm, self.cfg["cmgf_impl"])
                fused.append(macro[q] + att)
            F_ = torch.cat(fused, -1)
        else:
            F_ = torch.cat([macro[m] for m in "TVA"] + [micro[m] for m in "TVA"], -1)
        out["pred"] = self.predictor(F_).squeeze(-1)
        feats = [macro["T"], macro["V"], macro["A"], micro["T"], micro["V"], micro["A"]]
        out["aux"] = torch.stack([h(f).squeeze(-1) for h, f in zip(self.aux, feats)], -1)   # [B, 6]
        out.update(T_a=macro["T"], V_a=macro["V"], A_a=macro["A"], T_i=micro["T"], V_i=micro["V"], A_i=micro["A"])
        return out

    def predict(self, batch) -> torch.Tensor:
        """The multimodal inference path (always the full model): ``pred`` fp32 ``[B]``."""
        return self.forward(batch, full=True)["pred"]

    # ------------------------------------------------------------------ losses

    def _label(self, batch, name, device):
        y = field(batch, "y").to(device).float()
        if self.cfg["stage1_target"] == "unimodal" and name != "y":
            u = field(batch, name)
            if u is not None:
                return u.to(device).float()
        return y

    def contrastive(self, out, y):
        """``L_con`` as it enters the total (C1/C2 only for "w/o C3"; weights 'none' for "w/o weight")."""
        c = self.cfg
        rows, w = global_rows(c["global_batch"], out["T_a"], out["V_a"], out["A_a"], out["T_i"], out["V_i"],
                              out["A_i"], y)
        macro, micro, y = tuple(rows[:3]), tuple(rows[3:6]), rows[6]
        kw = dict(delta=c["delta"], tau=c["tau"], label_scale=c["label_scale"], pos_weight=self.pos_weight,
                  neg_weight=self.neg_weight, gain=c["gain"], reduction=c["reduction"],
                  same_sample_c2=c["same_sample_c2"])
        if not self.use_c3:
            return grad_scaled(mgcl_loss_without_c3(macro, y, **kw), w)
        from msa_fast.ops import mgcl_contrastive_loss
        return grad_scaled(mgcl_contrastive_loss(macro, micro, y, backend=c["backend"], **kw), w)

    def loss_terms(self, batch, out, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        key = "total" if stage is None else stage.loss
        dev = out["pred"].device
        s1 = {v[3]: v for v in _STAGE1.values()}
        if key in s1:
            _, _, _, loss_key, pred_key, label = s1[key]
            mse = ((out[pred_key] - self._label(batch, label, dev)) ** 2).mean()
            return {loss_key: mse, "mae": (out[pred_key] - field(batch, "y").to(dev).float()).abs().mean()}
        y = field(batch, "y").to(dev).float()
        pred_mse = ((out["pred"] - y) ** 2).mean()
        targets = torch.stack([y, y, y, self._uni_target(batch, "y_T", y), self._uni_target(batch, "y_V", y),
                               self._uni_target(batch, "y_A", y)], -1)
        uni = ((out["aux"] - targets) ** 2).sum(-1).mean()
        if self.use_cl:
            con = self.contrastive(out, y)
        else:
            with torch.no_grad():
                con = self.contrastive(out, y)
        alpha = self.cfg["alpha"] if self.use_cl else 0.0
        beta = self.cfg["beta"] if self.use_uni else 0.0
        total = pred_mse
        if self.use_cl:
            total = total + alpha * con
        if self.use_uni:
            total = total + beta * uni
        return {"total": total, "pred_mse": pred_mse, "con": con if self.use_cl else con.detach(),
                "uni": uni if self.use_uni else uni.detach(), "mae": (out["pred"] - y).abs().detach().mean()}

    def _uni_target(self, batch, name, y):
        u = field(batch, name)
        return y if u is None else u.to(y.device).float()

    # ------------------------------------------------------------------ schedule

    def param_groups(self, cfg: dict | None = None) -> list[dict]:
        cfg = {**self.cfg, **(cfg or {})}
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": cfg["lr"],
                 "weight_decay": cfg.get("weight_decay", 0.0)}]

    def stages(self, cfg: dict | None = None) -> list[Stage]:
        """Stage 1 (models.md §5.1): each unimodal encoder trained alone with its head (text: lr 1e-5,
        150 epochs, batch 64; audio, vision: lr 1e-4, 200 epochs, batch 128; best validation MAE kept);
        stage 2: every MGCL module (the text encoder frozen with ``freeze_bert``) at lr 1e-4."""
        c = {**self.cfg, **(cfg or {})}
        out = []
        if c["pretrain_unimodal"]:
            for name, (m, enc, head, loss, pred, _label) in _STAGE1.items():
                if m == "T":
                    if self.uses_text_features:
                        continue  # cached features: no text encoder to pretrain
                    lr, ep, bs = c["stage1_text_lr"], c["stage1_text_epochs"], c["stage1_text_batch_size"]
                else:
                    lr, ep, bs = c["stage1_av_lr"], c["stage1_av_epochs"], c["stage1_av_batch_size"]
                out.append(Stage(name, epochs=ep, trainable=[enc, head], loss=loss, select_on_valid=True,
                                 extra={"lr": lr, "batch_size": bs, "pred": pred, "phase": 1,
                                        "early_stop_patience": c["early_stop_patience"]}))
        trainable = [n for n in self.MULTIMODAL if not (n == "text" and c["freeze_bert"])]
        out.append(Stage("multimodal", epochs=c["epochs"], trainable=trainable, loss="total", select_on_valid=True,
                         extra={"lr": c["lr"], "batch_size": c["batch_size"], "pred": "pred", "phase": 2}))
        return out
