"""Compression techniques as Lightning callbacks, one module each. Selected with ``compression=[...]``.

Beside them, callbacks that keep a run honest: :class:`DivergenceGuard` stops a run whose loss is NaN;
:class:`InterruptionCheckpoint` leaves a resumable checkpoint when SIGTERM or Ctrl-C stops training.
"""

from lightning_micro.callbacks.divergence_guard import DivergenceGuard
from lightning_micro.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning
from lightning_micro.callbacks.interruption import InterruptionCheckpoint
from lightning_micro.callbacks.knowledge_distillation import KnowledgeDistillation
from lightning_micro.callbacks.layer_dropping import LayerDropping
from lightning_micro.callbacks.layer_swap import LayerSwap
from lightning_micro.callbacks.low_rank_decomposition import LowRankDecomposition
from lightning_micro.callbacks.quantization_aware_training import QuantizationAwareTraining
from lightning_micro.callbacks.structured_pruning import StructuredPruning
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.callbacks.tt_layer_swap import TTLayerSwap

__all__ = ["CompressionTechnique", "DivergenceGuard", "GradualMagnitudePruning", "InterruptionCheckpoint",
           "KnowledgeDistillation", "LayerDropping", "LayerSwap", "LowRankDecomposition", "QuantizationAwareTraining",
           "StructuredPruning", "TTLayerSwap"]
