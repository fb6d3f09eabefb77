"""lightning_micro: network compression as PyTorch Lightning callbacks, composed with Hydra.

``CompressionMixin`` is the one line a LightningModule adds to take every technique (see
:mod:`lightning_micro.contract`); ``export_compressed(trainer, path)`` writes the compressed network after a fit;
``load_compressed(path)`` rebuilds it and runs no code from the file (``trust`` names your own network classes);
``export_onnx(path)`` derives an ONNX model from it for ONNX Runtime.
"""

from lightning_micro.contract import CompressionMixin
from lightning_micro.export import export_compressed, load_compressed
from lightning_micro.loading import trust
from lightning_micro.onnx_export import export_onnx

__all__ = ["CompressionMixin", "export_compressed", "export_onnx", "load_compressed", "trust"]
__version__ = "0.1.0"
