"""msa_fast: fast fused ops and a training engine for contrastive multimodal sentiment analysis.

``import msa_fast`` is light: it imports torch and nothing else heavy. The ops live in
:mod:`msa_fast.ops` (also light); models, data and the engine import their heavier dependencies
(transformers, h5py, tqdm) only where they are used.
"""

__version__ = "0.1.0"
