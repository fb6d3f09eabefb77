"""lightning_micro: network compression as PyTorch Lightning callbacks, composed with Hydra."""

__version__ = "0.1.0"
