"""A small network for 8x8 digits in which every technique finds something to take, as a spec, and its optimizer."""

from __future__ import annotations

import torch
from torch import nn


class SmallConvNet(nn.Module):
    """Convolutions and linear layers for 8x8 digits: every technique finds something to take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


NET = {"_target_": f"{__name__}.SmallConvNet"}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}
