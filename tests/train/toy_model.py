"""A small MSAModel for the engine tests: two stages (unimodal pre-training of the audio branch, then
all modules) and several loss terms (regression, auxiliary unimodal regression, a feature penalty)."""

from __future__ import annotations

import torch
from torch import nn

from msa_fast.models.base import MSAModel, Stage


class ToyModel(MSAModel):
    name = "toy"

    def __init__(self, dims: dict, hidden: int = 8, dropout: float = 0.1, vocab: int = 512,
                 pretrain_epochs: int = 1, nan_at_step: int | None = None, updates: bool = False,
                 nan_grad: bool = False, use_bank: bool = True):
        super().__init__()
        self.dims = {"audio": dims["audio"], "vision": dims["vision"]}
        self.vocab = vocab
        self.text = nn.Embedding(vocab, hidden)
        self.audio = nn.Linear(dims["audio"], hidden)
        self.vision = nn.Linear(dims["vision"], hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(3 * hidden, 1)
        self.aux = nn.Linear(hidden, 1)
        self.pretrain_epochs = pretrain_epochs
        self.nan_at_step = nan_at_step
        self.updates = updates
        self.nan_grad = nan_grad
        self.use_bank = use_bank
        self.step_sleep = 0.0
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        # SUGRM-like state: a per-sample feature bank filled after each backward (on_batch_end) and
        # auxiliary labels regenerated from it with momentum at each epoch end (on_epoch_end)
        self.register_buffer("bank", torch.zeros(256))
        self.register_buffer("y_seen", torch.zeros(256))
        self.register_buffer("seen", torch.zeros(256, dtype=torch.bool))
        self.register_buffer("aux_labels", torch.zeros(256))
        self.register_buffer("has_label", torch.zeros(256, dtype=torch.bool))
        self.grad_at_batch_end = []
        self.epoch_ends = []

    @staticmethod
    def _pool(x, mask):
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, batch):
        t = self._pool(self.text(batch.text_ids % self.vocab), batch.text_mask)
        a = self._pool(torch.tanh(self.audio(batch.audio)), batch.audio_mask)
        v = self._pool(torch.tanh(self.vision(batch.vision)), batch.vision_mask)
        h = self.drop(torch.cat([t, a, v], -1))
        return {"pred": self.head(h).squeeze(-1).float(), "uni_pred": self.aux(a).squeeze(-1).float(),
                "feat": h}

    def loss_terms(self, batch, out, stage):
        y = batch.y
        reg = (out["pred"] - y).abs().mean()
        idx = batch.index % 256
        aux = (out["uni_pred"] - torch.where(self.has_label[idx], self.aux_labels[idx], y)).abs().mean()
        pen = out["feat"].pow(2).mean()
        terms = {"reg": reg, "aux": aux, "pen": pen, "total": reg + 0.1 * aux + 0.01 * pen, "pretrain": aux}
        if self.nan_at_step is not None and self.training:
            self.calls += 1
            if self.nan_grad:  # finite loss, NaN gradient (the torch.where trap)
                terms["pen"] = torch.where(self.calls >= self.nan_at_step, pen * float("nan"), pen)
            else:
                terms["pen"] = pen * torch.where(self.calls >= self.nan_at_step, float("nan"), 1.0)
            terms["total"] = reg + 0.1 * aux + 0.01 * terms["pen"]
        return terms

    def stages(self, cfg):
        multi = Stage("multimodal", epochs=cfg.get("epochs"))
        if self.updates:  # M3SA-style: the audio branch with its own loss, then everything with the total
            multi.extra["updates"] = [{"name": "audio", "loss": "aux", "modules": ["audio", "aux"]},
                                      {"name": "all", "loss": "total", "modules": None}]
        if not self.pretrain_epochs:
            return [multi]
        return [Stage("unimodal", epochs=self.pretrain_epochs, trainable=["audio", "aux"], loss="pretrain",
                      extra={"pred_key": "uni_pred"}), multi]

    def on_epoch_end(self, epoch, stage):
        self.epoch_ends.append((stage.name, epoch))
        with torch.no_grad():
            old = torch.where(self.has_label, self.aux_labels, self.y_seen)
            mom = (epoch - 1) / (epoch + 1)
            new = mom * old + (1 - mom) * (0.5 * self.y_seen + 0.5 * self.bank)
            self.aux_labels.copy_(torch.where(self.seen, new, self.aux_labels))
            if self.use_bank:
                self.has_label |= self.seen

    def on_batch_end(self, batch, out, stage, epoch):
        self.grad_at_batch_end.append(any(p.grad is not None for p in self.parameters()))
        with torch.no_grad():
            idx = batch.index % 256
            self.bank[idx] = out["uni_pred"].detach().float()
            self.y_seen[idx] = batch.y.float()
            self.seen[idx] = True
        if self.step_sleep:  # slow steps for the SIGINT test; the line tells the test training is under way
            import time

            print(f"batch done: stage {stage.name} epoch {epoch}", flush=True)
            time.sleep(self.step_sleep)


def tiny_store(path, like="mosi", scale=0.05, seed=0):
    from msa_fast.data.synthetic import write_synthetic_store

    return write_synthetic_store(path, like, scale=scale, seed=seed, aligned=True, tokenizer="builtin")


def toy_for(store, **kw):
    from msa_fast.data.store import StoreReader

    with StoreReader(store) as r:
        return ToyModel(r.meta["feature_dims"], **kw)


def build(cfg, dims):
    """Factory for ``msa-fast train --model tests.train.toy_model:build`` (``dims``: a DataDims mapping)."""
    m = ToyModel({"audio": dims["d_a"], "vision": dims["d_v"]}, hidden=int(cfg.get("hidden", 8)),
                 dropout=float(cfg.get("dropout", 0.1)), pretrain_epochs=int(cfg.get("pretrain_epochs", 1)))
    m.step_sleep = float(cfg.get("step_sleep", 0.0))
    return m


build.default_config = {"hidden": 8, "dropout": 0.1, "pretrain_epochs": 1, "batch_size": 16, "lr": 1e-2,
                        "step_sleep": 0.0}
