"""The five models of ../shared/papers (models.md), built on msa_fast.ops, behind one contract (base.py)."""

from msa_fast.models.base import MSAModel, Stage

__all__ = ["MSAModel", "Stage"]
