"""A MobileNetV2-style CNN (Sandler et al. 2018) sized for 28x28 to 32x32 images: inverted residual blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_micro.models.mobilenet import ConvBNReLU, _scaled

# (expansion t, output channels c at width 1.0, repeats n, stride s of the first repeat) per stage; the paper's
# table 2 without its two widest stages, with strides for 28x28 input (7x7 at the end).
DEFAULT_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; the input is added back when the block keeps its shape
    (stride 1, as many channels out as in), so such a block can be skipped whole.

    ReLU rather than the paper's ReLU6: conv-BatchNorm-ReLU is the pattern int8 quantization fuses.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [ConvBNReLU(in_channels, hidden, 1)] if expansion != 1 else []
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Stem convolution, stages of inverted residual blocks, a 1x1 convolution, global pooling, a linear classifier.

    Args:
        input_shape: ``[C, H, W]``, any number of channels.
        num_classes: outputs of the classifier.
        width_multiplier: scales every layer's channels (rounded to multiples of 8).
        stages: ``[[expansion, channels, repeats, stride], ...]`` at width 1.0.
        stem_channels: channels of the 3x3 stem convolution at width 1.0.
        last_channels: channels of the last 1x1 convolution (not scaled below 1.0, as in the paper).

    Example:
        >>> net = MobileNetV2([1, 28, 28], 10, width_multiplier=0.5)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> sum(block.residual for block in net.features if isinstance(block, InvertedResidual))
        8
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 width_multiplier: float = 1.0, stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
                 stem_channels: int = 32, last_channels: int = 320) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"MobileNetV2 needs input_shape [channels, height, width], got {list(input_shape)}")
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        if not stages or any(len(s) != 4 or s[0] < 1 or s[1] < 1 or s[2] < 1 or s[3] not in (1, 2) for s in stages):
            raise ValueError("stages must be a non-empty list of [expansion >= 1, channels >= 1, repeats >= 1, "
                             f"stride 1 or 2], got {stages}")
        channels = _scaled(stem_channels, width_multiplier)
        layers: list[nn.Module] = [ConvBNReLU(int(input_shape[0]), channels, 3)]
        for expansion, out, repeats, stride in stages:
            out = _scaled(int(out), width_multiplier)
            for index in range(int(repeats)):
                layers.append(InvertedResidual(channels, out, int(stride) if index == 0 else 1, int(expansion)))
                channels = out
        last = _scaled(last_channels, max(1.0, width_multiplier))
        layers.append(ConvBNReLU(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
