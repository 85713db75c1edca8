"""The contract between a model and the training engine (msa_fast.train).

A model is an ``nn.Module`` with four methods. The engine never looks inside it: schedules, optimiser
groups and loss terms all come from here, so the five papers' different training recipes
(models.md) are expressed by the models, not by special cases in the loop.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
import torch
from torch import nn


@dataclass
class Stage:
    """One phase of a model's schedule (models.md: MGCL pretrains unimodal encoders, then trains jointly).

    * ``name``: shown in logs and checkpoints.
    * ``epochs``: how many epochs the stage runs (``None``: until early stopping on validation MAE).
    * ``trainable``: names of the submodules whose parameters are updated (``None``: all).
    * ``loss``: key of ``loss_terms`` that is minimised in this stage (default ``'total'``).
    * ``select_on_valid``: whether the stage's epochs are evaluated and the best checkpoint kept.
    """

    name: str
    epochs: int | None = None
    trainable: list[str] | None = None
    loss: str = "total"
    select_on_valid: bool = True
    extra: dict = field(default_factory=dict)


class MSAModel(nn.Module, abc.ABC):
    """Base class of the five models. Subclasses implement :meth:`forward` and :meth:`loss_terms`."""

    #: registry name, e.g. 'hycon'
    name: str = ""

    @abc.abstractmethod
    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Run on a :class:`msa_fast.data.loader.Batch`; return at least ``'pred'`` (fp32 ``[B]`` sentiment)."""

    @abc.abstractmethod
    def loss_terms(self, batch, out: dict[str, torch.Tensor], stage: Stage) -> dict[str, torch.Tensor]:
        """Scalar loss terms for logging, including the one the stage minimises (``stage.loss``)."""

    def param_groups(self, cfg: dict) -> list[dict]:
        """Optimiser parameter groups (``{'params': [...], 'lr': ..., 'weight_decay': ...}``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": cfg.get("lr", 1e-3),
                 "weight_decay": cfg.get("weight_decay", 0.0)}]

    def stages(self, cfg: dict) -> list[Stage]:
        """The training schedule; one multimodal stage unless the paper says otherwise."""
        return [Stage("multimodal", epochs=cfg.get("epochs"))]

    def on_epoch_end(self, epoch: int, stage: Stage) -> None:
        """Per-epoch hook with state (e.g. SUGRM's label bank)."""

