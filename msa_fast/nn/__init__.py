"""nn.Module wrappers of msa_fast.ops: modules that own their parameters and draw their seeds, and the
contrastive losses holding their options."""

from msa_fast.nn.contrastive import (AlignLoss, HyConLoss, InfoNCE, MGCLContrastiveLoss, SupConLoss,
                                     UniformLoss)
from msa_fast.nn.cutoff import Cutoff
from msa_fast.nn.dropout import Dropout
from msa_fast.nn.hard_concrete import HardConcreteGate

__all__ = ["Cutoff", "Dropout", "HardConcreteGate", "SupConLoss", "InfoNCE", "HyConLoss", "MGCLContrastiveLoss", "AlignLoss",
           "UniformLoss"]
