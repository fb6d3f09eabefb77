"""Compression techniques as Lightning callbacks, one module each. Selected with ``compression=[...]``."""

from lightning_micro.callbacks.gradual_magnitude_pruning import GradualMagnitudePruning

__all__ = ["GradualMagnitudePruning"]
