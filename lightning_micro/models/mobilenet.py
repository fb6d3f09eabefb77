"""A MobileNet-style CNN (Howard et al. 2017) sized for 28x28 to 32x32 images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# (output channels at width 1.0, stride) of each depthwise-separable block.
DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))


def _scaled(channels: int, width_multiplier: float) -> int:
    return max(8, int(round(channels * width_multiplier / 8)) * 8)  # multiples of 8 suit vectorized kernels


class ConvBNReLU(nn.Sequential):
    """Convolution, BatchNorm, ReLU: the unit every block is made of (and the pattern quantizers fuse)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Sequential):
    """A 3x3 depthwise convolution followed by a 1x1 pointwise convolution, each with BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, stride, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


class MobileNet(nn.Module):
    """Stem convolution, depthwise-separable blocks, global average pooling, one linear classifier.

    Args:
        input_shape: ``[C, H, W]``, any number of channels.
        num_classes: outputs of the classifier.
        width_multiplier: scales every layer's channels (MobileNet's alpha), rounded to multiples of 8.
        blocks: ``[[channels, stride], ...]`` of the depthwise-separable blocks at width 1.0.
        stem_channels: channels of the 3x3 stem convolution at width 1.0.

    Example:
        >>> net = MobileNet([1, 28, 28], 10, width_multiplier=0.5)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 width_multiplier: float = 1.0, blocks: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
                 stem_channels: int = 32) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"MobileNet needs input_shape [channels, height, width], got {list(input_shape)}")
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        if not blocks or any(len(b) != 2 or b[0] < 1 or b[1] not in (1, 2) for b in blocks):
            raise ValueError(f"blocks must be a non-empty list of [channels >= 1, stride 1 or 2], got {blocks}")
        channels = _scaled(stem_channels, width_multiplier)
        layers: list[nn.Module] = [ConvBNReLU(int(input_shape[0]), channels, 3)]
        for out, stride in blocks:
            out = _scaled(int(out), width_multiplier)
            layers.append(DepthwiseSeparable(channels, out, int(stride)))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
