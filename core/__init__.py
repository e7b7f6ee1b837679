"""AFA Explorer core: the method of "Learning Affinity from Attention" as a library.

The public contract: ``core.load_model(path)``, ``core.analyze(model, image, ...)``.
"""

from core.analyze import Analysis, BlockAttention, add_crf, analyze
from core.checkpoint import CheckpointError
from core.loading import best_device, load_model

__all__ = ["Analysis", "BlockAttention", "add_crf", "CheckpointError", "analyze", "best_device", "load_model"]
