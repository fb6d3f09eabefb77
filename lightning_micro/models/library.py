"""Networks of torchvision, untrained, fitted to the data's channels and classes, for the zoo's configs."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import nn


def torchvision_mobilenet_v3_small(input_shape: Sequence[int] = (1, 32, 32), num_classes: int = 10,
                                   width_mult: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV3-Small (Howard et al. 2019: squeeze-and-excitation, hardswish), untrained, its stem
    taking ``input_shape[0]`` channels.

    Example:
        >>> import torch
        >>> torchvision_mobilenet_v3_small([1, 32, 32], 10)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width_mult)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(int(input_shape[0]), stem.out_channels, stem.kernel_size, stem.stride,
                                   stem.padding, bias=False)
    return net
