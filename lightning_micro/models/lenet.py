"""LeNet-300-100 and the Caffe LeNet-5 used throughout the pruning literature (Han et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _grey_image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"{model} needs input_shape [channels, height, width], got {list(shape)}")
    if shape[0] != 1:
        raise ValueError(
            f"{model} is defined for single-channel (grey) images, but input_shape is {list(shape)} "
            f"({shape[0]} channels). Allowed: 1 channel (data=digits, mnist, fashion_mnist); "
            "for colour data use model=mobilenet or model=resnet20"
        )
    return shape  # type: ignore[return-value]


class LeNet300(nn.Module):
    """LeNet-300-100: a fully connected 784-300-100-10 network (for 28x28 input; other sizes scale fc1).

    Args:
        input_shape: ``[1, H, W]``; the network flattens the image.
        num_classes: outputs of the last layer.
        hidden: widths of the two hidden layers.

    Example:
        >>> net = LeNet300([1, 28, 28], 10)
        >>> sum(p.numel() for p in net.parameters())
        266610
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (300, 100)) -> None:
        super().__init__()
        c, h, w = _grey_image_shape("LeNet300", input_shape)
        if len(hidden) != 2 or min(hidden) < 1:
            raise ValueError(f"hidden must be two positive widths, got {list(hidden)}")
        self.fc1 = nn.Linear(c * h * w, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example: conv(20, 5x5) - maxpool - conv(50, 5x5) - maxpool - fc 800-500-10.

    Like Caffe's model (and Han et al.'s 431K-parameter LeNet-5) it has no non-linearity after the convolutions,
    only after the first fully connected layer.

    Args:
        input_shape: ``[1, H, W]`` with H, W >= 16 (28x28 gives the 800-wide fc1).
        num_classes: outputs of the last layer.

    Example:
        >>> net = LeNet5([1, 28, 28], 10)
        >>> sum(p.numel() for p in net.parameters())
        431080
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = _grey_image_shape("LeNet5", input_shape)
        out_h, out_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if min(out_h, out_w) < 1:
            raise ValueError(
                f"LeNet5 needs images of at least 16x16 (two 5x5 convolutions and two 2x2 poolings); "
                f"input_shape is {list(input_shape)}. Use data=mnist or fashion_mnist, or model=lenet300 for digits"
            )
        self.conv1 = nn.Conv2d(c, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * out_h * out_w, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
