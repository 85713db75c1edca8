"""Pure-PyTorch references of the public ops: the specification every kernel is tested against.

Same names and signatures as :mod:`msa_fast.ops`, without ``backend=``. Each reference is defined next
to its op (``msa_fast/ops/<op>.py``) and re-exported here.
"""

from msa_fast.ops.align_uniform import align_loss_reference as align_loss
from msa_fast.ops.align_uniform import uniform_loss_reference as uniform_loss
from msa_fast.ops.cutoff import cutoff_reference as cutoff
from msa_fast.ops.dropout import dropout_reference as dropout
from msa_fast.ops.hard_concrete import hard_concrete_l0_reference as hard_concrete_l0
from msa_fast.ops.hard_concrete import hard_concrete_reference as hard_concrete
from msa_fast.ops.hycon import hycon_loss_reference as hycon_loss
from msa_fast.ops.info_nce import info_nce_reference as info_nce
from msa_fast.ops.mgcl import mgcl_contrastive_loss_reference as mgcl_contrastive_loss
from msa_fast.ops.supcon import supcon_loss_reference as supcon_loss

__all__ = ["cutoff", "dropout", "hard_concrete", "hard_concrete_l0"]
__all__ += ["supcon_loss", "info_nce", "hycon_loss", "mgcl_contrastive_loss", "align_loss", "uniform_loss"]
