"""The Hydra run of ``train.py``: :func:`~lightning_micro.run.training.train` composes a run from its config (the
one instantiate site, :mod:`~lightning_micro.run.instantiate`), checks it first (:mod:`~lightning_micro.run.
preflight`), trains :class:`~lightning_micro.run.classifier.ClassifierModule`, exports and reports.

``train`` and ``ClassifierModule`` load lazily, so importing one module of this package does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "train": "lightning_micro.run.training",
    "ClassifierModule": "lightning_micro.run.classifier",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_micro.run' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
