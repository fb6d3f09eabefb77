"""lightning_micro: network compression as PyTorch Lightning callbacks, composed with Hydra.

``CompressionMixin`` is the one line a LightningModule adds to take every technique (see
:mod:`lightning_micro.contract`); ``export_compressed(trainer, path)`` writes the compressed network after a fit.
"""

from lightning_micro.contract import CompressionMixin
from lightning_micro.export import export_compressed, load_compressed

__all__ = ["CompressionMixin", "export_compressed", "load_compressed"]
__version__ = "0.1.0"
