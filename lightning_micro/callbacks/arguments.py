"""Argument checks and helpers shared by the compression callbacks."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn


def target_net(pl_module: L.LightningModule) -> nn.Module:
    """The network a technique works on: the module's ``net`` (ClassifierModule), or the module itself."""
    return pl_module.net if isinstance(getattr(pl_module, "net", None), nn.Module) else pl_module


def check_fraction(name: str, value: Any, upper_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    ):
        allowed = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    return float(value)


def check_when(name: str, value: Any) -> int | float:
    """An epoch (int >= 0) or a fraction of the run (float in [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be an epoch (int >= 0) or a fraction of the run (float in [0, 1]), got {value!r}"
        )
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be an epoch >= 0, got {value}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name}={value} is a float outside [0, 1]: floats are fractions of the run; write epochs as integers"
        )
    return value
