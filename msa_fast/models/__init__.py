"""The five models of ../shared/papers (models.md), built on msa_fast.ops, behind one contract (base.py)."""

from msa_fast.models.base import MSAModel, Stage
from msa_fast.models.configs import CONFIGS, DataDims, available_models, build, default_config
from msa_fast.models.hycon import HyCon, export_predictor, predictor_args
from msa_fast.models.mgcl import MGCL

__all__ = ["MSAModel", "Stage", "build", "available_models", "default_config", "CONFIGS", "DataDims", "HyCon",
           "MGCL", "export_predictor", "predictor_args"]
