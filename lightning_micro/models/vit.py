"""A small vision transformer (Dosovitskiy et al. 2021) for 28x28 to 32x32 images: patches of the image as tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output projection ``proj``.

    The head count is read from ``qkv``'s width (``out_features / (3 * head_dim)``), never stored, so a network
    whose heads were removed (structured pruning by heads) runs as it is.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # qkv's rows are [q | k | v], each head-major: head h owns rows h*head_dim .. (h+1)*head_dim of each.
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP, each added back to its input."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Non-overlapping patches embedded by a strided convolution, a learned position embedding, pre-norm blocks,
    a final LayerNorm and a linear head on the mean token.

    Args:
        input_shape: ``[C, H, W]``; ``H`` and ``W`` multiples of ``patch_size``.
        num_classes: outputs of the head.
        patch_size: side of a square patch (one token each).
        dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block (``dim`` a multiple of it).
        mlp_dim: hidden width of each block's MLP.

    Example:
        >>> net = VisionTransformer([1, 28, 28], 10, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, patch_size: int = 4,
                 dim: int = 64, depth: int = 6, num_heads: int = 4, mlp_dim: int = 128) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"VisionTransformer needs input_shape [channels, height, width], got {list(input_shape)}")
        channels, height, width = (int(v) for v in input_shape)
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide the image's height and width ({height}x{width})")
        if depth < 1 or min(dim, num_heads, mlp_dim) < 1:
            raise ValueError(f"dim, depth, num_heads and mlp_dim must be >= 1, got {dim}, {depth}, {num_heads}, "
                             f"{mlp_dim}")
        tokens = (height // patch_size) * (width // patch_size)
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(x)).mean(1))
