"""A user's own plain networks (torch alone, no Lightning): an artifact whose spec names one of them loads in a
process that has only torch and safetensors."""

from __future__ import annotations

import torch
from torch import nn


class ResidualDepthwiseNet(nn.Module):
    """stem conv-bn-relu, a residual block of depthwise 3x3 and pointwise 1x1 convolutions, two linear layers."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.pointwise = nn.Conv2d(width, width, 1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * 16, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.pointwise(self.relu(self.depthwise(x))))  # the residual addition
        x = self.pool(x)
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class ResidualBlock(nn.Module):
    """A user's pre-activation residual block: ``x + body(x)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualStack(nn.Module):
    """A stem convolution, ``depth`` residual blocks, pooling to 4x4 and a linear classifier."""

    def __init__(self, width: int = 16, depth: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(depth)))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(width * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class TokenAttentionNet(nn.Module):
    """An 8x8 image as 8 tokens of 8 pixels: an embedding Linear, torch's MultiheadAttention (which reads its
    out_proj's weight directly instead of calling it), a Linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1).view(-1, 8, 8))
        mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.head((tokens + mixed).flatten(1))


class TokenTransformer(nn.Module):
    """A user's text classifier: token ids through an ``nn.Embedding``, torch's ``nn.TransformerEncoder`` (pre-norm
    layers) and a linear head on the mean token."""

    def __init__(self, vocab: int = 50, width: int = 32, depth: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))
