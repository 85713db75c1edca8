"""nn.Module wrappers of msa_fast.ops that own their parameters and draw their seeds."""

from msa_fast.nn.cutoff import Cutoff
from msa_fast.nn.hard_concrete import HardConcreteGate

__all__ = ["Cutoff", "HardConcreteGate"]
