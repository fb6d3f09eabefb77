"""A ShuffleNet-style CNN (Zhang et al. 2018, ShuffleNet v1) sized for 28x28 to 32x32 images: grouped pointwise
convolutions, a channel shuffle between them so that information crosses the groups, depthwise 3x3 convolutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: channel ``g * n + i`` moves to ``i * groups + g``."""
    batch, channels, height, width = x.shape
    return x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(
        batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 convolution, channel shuffle, depthwise 3x3 (the unit's stride), grouped 1x1 convolution.

    Stride 1 adds the input back; stride 2 concatenates the 3x3-average-pooled input instead, so the unit's
    own branch writes ``out_channels - in_channels`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = out_channels - in_channels if stride == 2 else out_channels
        mid = out_channels // 4
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False),
                                    nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, branch, 1, groups=groups, bias=False), nn.BatchNorm2d(branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


class ShuffleNet(nn.Module):
    """A 3x3 stem, three stages of shuffle units (the first of each at stride 2), global pooling, a linear
    classifier.

    Args:
        input_shape: ``[C, H, W]``, any number of channels.
        num_classes: outputs of the classifier.
        groups: groups of the pointwise convolutions (the first unit's first one stays ungrouped: its input is
            the narrow stem).
        stage_channels: output channels of the three stages (multiples of ``4 * groups``).
        stage_repeats: units per stage.
        stem_channels: channels of the stem convolution.

    Example:
        >>> net = ShuffleNet([1, 28, 28], 10, groups=2, stage_channels=[48, 96, 192], stage_repeats=[1, 1, 1])
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, groups: int = 3,
                 stage_channels: Sequence[int] = (120, 240, 480), stage_repeats: Sequence[int] = (2, 4, 2),
                 stem_channels: int = 24) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ShuffleNet needs input_shape [channels, height, width], got {list(input_shape)}")
        if groups < 1 or len(stage_channels) != len(stage_repeats) or not stage_channels:
            raise ValueError(f"groups must be >= 1 and stage_channels / stage_repeats lists of one length, got "
                             f"groups={groups}, {list(stage_channels)}, {list(stage_repeats)}")
        if any(c % (4 * groups) for c in stage_channels) or min(stage_repeats) < 1:
            raise ValueError(f"stage_channels must be multiples of 4 * groups ({4 * groups}) and stage_repeats >= 1, "
                             f"got {list(stage_channels)}, {list(stage_repeats)}")
        self.stem = nn.Sequential(nn.Conv2d(int(input_shape[0]), stem_channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        units: list[nn.Module] = []
        channels = stem_channels
        for stage, (out, repeats) in enumerate(zip(stage_channels, stage_repeats, strict=True)):
            for i in range(repeats):
                first_groups = 1 if stage == 0 and i == 0 else groups
                units.append(ShuffleUnit(channels, int(out), 2 if i == 0 else 1, groups, first_groups))
                channels = int(out)
        self.units = nn.Sequential(*units)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.units(self.stem(x)).mean((2, 3)))
