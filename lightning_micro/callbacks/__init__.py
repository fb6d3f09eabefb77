"""Compression techniques as Lightning callbacks, one module each. Selected with ``compression=[...]``."""

from lightning_micro.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning
from lightning_micro.callbacks.quantization_aware_training import QuantizationAwareTraining

__all__ = ["GradualMagnitudePruning", "QuantizationAwareTraining"]
