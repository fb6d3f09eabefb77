"""Compression techniques as Lightning callbacks, one module each. Selected with ``compression=[...]``."""

from lightning_micro.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning
from lightning_micro.callbacks.layer_swap import LayerSwap
from lightning_micro.callbacks.low_rank_decomposition import LowRankDecomposition
from lightning_micro.callbacks.quantization_aware_training import QuantizationAwareTraining
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.callbacks.tt_layer_swap import TTLayerSwap

__all__ = ["CompressionTechnique", "GradualMagnitudePruning", "LayerSwap", "LowRankDecomposition",
           "QuantizationAwareTraining", "TTLayerSwap"]
