"""lightning_micro: network compression as PyTorch Lightning callbacks, composed with Hydra.

``CompressionMixin`` is the one line a LightningModule adds to take every technique (see
:mod:`lightning_micro.contract`); ``export_compressed(trainer, path)`` writes the compressed network after a fit;
``load_compressed(path)`` rebuilds it and runs no code from the file (``trust`` names your own network classes).
"""

from lightning_micro.contract import CompressionMixin
from lightning_micro.export import export_compressed, load_compressed
from lightning_micro.loading import trust

__all__ = ["CompressionMixin", "export_compressed", "load_compressed", "trust"]
__version__ = "0.1.0"
