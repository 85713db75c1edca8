"""Fast fused ops of msa_fast (public names and semantics: ops.md).

Every op has four backends behind one API, chosen with ``backend=`` (``'auto'``, ``'reference'``,
``'cpp'``, ``'triton'``, ``'cuda'``) or ``MSA_FAST_BACKEND``; :func:`available_backends` lists what this
install can run. The pure-PyTorch specifications are in :mod:`msa_fast.ops.reference`. The contrastive
losses take ``global_batch=True`` to contrast over the batch of all ``torch.distributed`` ranks
(:mod:`msa_fast.ops.distributed`).

Importing this module needs torch only.
"""

from msa_fast.ops._dispatch import available_backends
from msa_fast.ops.align_uniform import align_loss, uniform_loss
from msa_fast.ops.cutoff import cutoff
from msa_fast.ops.dropout import dropout
from msa_fast.ops.hard_concrete import hard_concrete, hard_concrete_l0
from msa_fast.ops.hycon import hycon_loss
from msa_fast.ops.info_nce import info_nce
from msa_fast.ops.mgcl import mgcl_contrastive_loss
from msa_fast.ops.supcon import supcon_loss
from msa_fast.ops import distributed, reference

__all__ = ["available_backends", "cutoff", "dropout", "hard_concrete", "hard_concrete_l0", "supcon_loss", "info_nce",
           "align_loss", "uniform_loss", "hycon_loss", "mgcl_contrastive_loss",
           "distributed", "reference"]
