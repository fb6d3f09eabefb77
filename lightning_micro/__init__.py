"""lightning_micro: network compression as PyTorch Lightning callbacks, composed with Hydra.

``CompressionMixin`` is the one line a LightningModule adds to take every technique (see
:mod:`lightning_micro.contract`); ``export_compressed(trainer, path)`` writes the compressed network after a fit;
``load_compressed(path)`` rebuilds it and runs no code from the file (``trust`` names your own network classes);
``export_onnx(path)`` derives an ONNX model from it for ONNX Runtime.

The names load lazily: ``import lightning_micro`` imports nothing else, and ``load_compressed`` brings in the
artifact layer alone (torch and safetensors, no Lightning or Hydra).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it, imported on first use
_PUBLIC = {
    "CompressionMixin": "lightning_micro.contract",
    "export_compressed": "lightning_micro.contract",
    "load_compressed": "lightning_micro.artifact.format",
    "trust": "lightning_micro.artifact.trust",
    "export_onnx": "lightning_micro.artifact.onnx",
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_micro' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
