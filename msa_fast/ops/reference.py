"""Pure-PyTorch references of the public ops: the specification every kernel is tested against.

Same names and signatures as :mod:`msa_fast.ops`, without ``backend=``. Each reference is defined next
to its op (``msa_fast/ops/<op>.py``) and re-exported here.
"""

from msa_fast.ops.cutoff import cutoff_reference as cutoff
from msa_fast.ops.hard_concrete import hard_concrete_l0_reference as hard_concrete_l0
from msa_fast.ops.hard_concrete import hard_concrete_reference as hard_concrete

__all__ = ["cutoff", "hard_concrete", "hard_concrete_l0"]
