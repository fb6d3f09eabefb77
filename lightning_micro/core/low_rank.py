"""Low-rank layers: a trained linear or convolution layer re-expressed as a short chain of smaller standard ones.

- :class:`LowRankLinear`: truncated SVD, ``W ~ U_r S_r V_r^T`` -> ``Linear(in, r)`` then ``Linear(r, out)``.
- :class:`TuckerConv2d`: Tucker-2 of the kernel along its output and input channels (HOSVD-initialized HOOI,
  Kim et al. 2016) -> 1x1 conv ``in -> r_in``, the ``k x k`` core conv ``r_in -> r_out``, 1x1 conv
  ``r_out -> out``.
- :class:`CPConv2d`: rank-``r`` CP of the kernel (CP-ALS, Lebedev et al. 2015) -> 1x1 conv ``in -> r``, a
  ``k_h x 1`` and a ``1 x k_w`` depthwise conv, 1x1 conv ``r -> out``.

The decompositions are TensorLy's; the layers are plain ``nn.Linear`` / ``nn.Conv2d`` in an ``nn.Sequential``
(so they train, export and run with PyTorch's own kernels). Every ``from_*`` keeps the original bias on the
last layer and the original stride, padding and dilation on the spatial layer(s).

Example:
    >>> layer = TuckerConv2d.from_conv(nn.Conv2d(20, 50, 5), ranks=[16, 8])
    >>> [tuple(m.weight.shape) for m in layer]
    [(8, 20, 1, 1), (16, 8, 5, 5), (50, 16, 1, 1)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def _numpy(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().cpu().double().numpy()


def _tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=like.dtype, device=like.device)


def _check_rank(name: str, rank: object, bound: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"{name} must be a positive integer, got {rank!r}")
    if rank > bound:
        raise ValueError(f"{name}={rank} is larger than {what} allows (at most {bound})")
    return rank


def _check_plain_conv(conv: nn.Conv2d, method: str) -> None:
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{method} handles ordinary convolutions (groups=1, numeric zero padding); this one has "
                         f"groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")


class LowRankLinear(nn.Sequential):
    """``Linear(in, r, bias=False)`` followed by ``Linear(r, out)``: a rank-``r`` weight."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        rank = _check_rank("rank", rank, min(in_features, out_features), f"a {out_features}x{in_features} matrix")
        super().__init__(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias))
        self.rank = rank

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        return rank * (in_features + out_features)

    def dense_parameter_count(self) -> int:
        """Weight and bias of the ``nn.Linear`` this layer replaces."""
        last = self[1]
        return self[0].in_features * last.out_features + (last.out_features if last.bias is not None else 0)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int) -> LowRankLinear:
        """Truncated SVD of ``layer``'s weight; the singular values are split evenly between the two factors."""
        low = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        u, s, vt = np.linalg.svd(_numpy(layer.weight), full_matrices=False)
        root = np.sqrt(s[: low.rank])
        with torch.no_grad():
            low[0].weight.copy_(_tensor(root[:, None] * vt[: low.rank], layer.weight))
            low[1].weight.copy_(_tensor(u[:, : low.rank] * root[None, :], layer.weight))
            if layer.bias is not None:
                low[1].bias.copy_(layer.bias)
        return low


class TuckerConv2d(nn.Sequential):
    """1x1 conv ``in -> r_in``, ``k x k`` conv ``r_in -> r_out`` (the original geometry), 1x1 conv ``r_out -> out``."""

    def __init__(self, conv: nn.Conv2d, ranks: Sequence[int]) -> None:
        _check_plain_conv(conv, "Tucker-2")
        # A mode's rank is at most the rank of its unfolding: channels, or the product of the other modes.
        kernel = math.prod(conv.kernel_size)
        out_bound = min(conv.out_channels, conv.in_channels * kernel)
        in_bound = min(conv.in_channels, conv.out_channels * kernel)
        if isinstance(ranks, int) and not isinstance(ranks, bool):
            ranks = [min(ranks, out_bound), min(ranks, in_bound)]
        if len(ranks) != 2:
            raise ValueError(f"Tucker-2 ranks are [r_out, r_in] (or one number for both), got {ranks!r}")
        r_out = _check_rank("ranks[0] (r_out)", ranks[0], out_bound,
                            f"a kernel of {conv.out_channels} output channels and {conv.in_channels * kernel} "
                            f"inputs per output")
        r_in = _check_rank("ranks[1] (r_in)", ranks[1], in_bound,
                           f"a kernel of {conv.in_channels} input channels and {conv.out_channels * kernel} "
                           f"outputs per input")
        if r_out > r_in * kernel or r_in > r_out * kernel:  # the core (r_out, r_in, kh, kw) bounds them too
            raise ValueError(f"Tucker-2 ranks [{r_out}, {r_in}] do not fit a {list(conv.kernel_size)} core: each "
                             f"rank can be at most the other times {kernel} (kernel height x width)")
        super().__init__(
            nn.Conv2d(conv.in_channels, r_in, 1, bias=False),
            nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False),
            nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None),
        )
        self.ranks = [r_out, r_in]

    @staticmethod
    def parameter_count(conv: nn.Conv2d, ranks: Sequence[int]) -> int:
        r_out, r_in = ranks
        return conv.in_channels * r_in + r_in * r_out * math.prod(conv.kernel_size) + r_out * conv.out_channels

    def dense_parameter_count(self) -> int:
        """Weight and bias of the ``nn.Conv2d`` this layer replaces."""
        first, core, last = self
        bias = last.out_channels if last.bias is not None else 0
        return last.out_channels * first.in_channels * math.prod(core.kernel_size) + bias

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: int | Sequence[int]) -> TuckerConv2d:
        """Tucker-2 (TensorLy's ``partial_tucker`` on the channel modes, HOSVD init) of ``conv``'s kernel."""
        import tensorly
        from tensorly.decomposition import partial_tucker

        tucker = cls(conv, ranks)
        with tensorly.backend_context("numpy"):  # whatever backend another import made global
            (core, (u_out, u_in)), _ = partial_tucker(_numpy(conv.weight), rank=tucker.ranks, modes=[0, 1],
                                                      init="svd", n_iter_max=100, random_state=0)
        with torch.no_grad():
            tucker[0].weight.copy_(_tensor(u_in.T[:, :, None, None], conv.weight))
            tucker[1].weight.copy_(_tensor(core, conv.weight))
            tucker[2].weight.copy_(_tensor(u_out[:, :, None, None], conv.weight))
            if conv.bias is not None:
                tucker[2].bias.copy_(conv.bias)
        return tucker.to(conv.weight.device)


class CPConv2d(nn.Sequential):
    """1x1 conv ``in -> r``, depthwise ``k_h x 1`` and ``1 x k_w`` convs, 1x1 conv ``r -> out``."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        _check_plain_conv(conv, "CP")
        dims = (conv.out_channels, conv.in_channels, *conv.kernel_size)
        rank = _check_rank("rank", rank, math.prod(dims) // max(dims), f"a {list(dims)} kernel")
        (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
        kh, kw = conv.kernel_size
        super().__init__(
            nn.Conv2d(conv.in_channels, rank, 1, bias=False),
            nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False),
            nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False),
            nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None),
        )
        self.rank = rank

    @staticmethod
    def parameter_count(conv: nn.Conv2d, rank: int) -> int:
        return rank * (conv.in_channels + sum(conv.kernel_size) + conv.out_channels)

    def dense_parameter_count(self) -> int:
        """Weight and bias of the ``nn.Conv2d`` this layer replaces."""
        first, vertical, horizontal, last = self
        bias = last.out_channels if last.bias is not None else 0
        kernel = vertical.kernel_size[0] * horizontal.kernel_size[1]
        return last.out_channels * first.in_channels * kernel + bias

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> CPConv2d:
        """CP-ALS (TensorLy's ``parafac``, SVD init) of ``conv``'s kernel."""
        import tensorly
        from tensorly.decomposition import parafac

        cp = cls(conv, rank)
        kernel = _numpy(conv.weight)
        norm = float(np.linalg.norm(kernel)) or 1.0
        init = "svd" if cp.rank <= min(kernel.shape) else "random"  # SVD init needs rank <= every mode's size
        with tensorly.backend_context("numpy"):  # whatever backend another import made global
            # A little ridge on the unit-norm kernel keeps CP-ALS away from degenerate solutions (components
            # far larger than the kernel that cancel out): on LeNet-5's conv2 at rank 16 their norms summed to 7x
            # the kernel's and SGD diverged to NaN within 10 steps after the swap; with it 0.8x, same error.
            weights, factors = parafac(kernel / norm, rank=cp.rank, init=init, n_iter_max=300, tol=1e-8,
                                       random_state=0, l2_reg=1e-3)
        # Every component's scale spread evenly over its four factors (ALS leaves them arbitrary), so that no
        # factor is much larger than another: gradient steps are then on a common scale.
        column_norms = [np.linalg.norm(f, axis=0) + 1e-12 for f in factors]
        scale = (np.abs(weights) * norm * np.prod(column_norms, axis=0)) ** 0.25
        f_out, f_in, f_h, f_w = (f / n * scale for f, n in zip(factors, column_norms, strict=True))
        f_out = f_out * np.sign(weights)
        with torch.no_grad():
            cp[0].weight.copy_(_tensor(f_in.T[:, :, None, None], conv.weight))
            cp[1].weight.copy_(_tensor(f_h.T[:, None, :, None], conv.weight))
            cp[2].weight.copy_(_tensor(f_w.T[:, None, None, :], conv.weight))
            cp[3].weight.copy_(_tensor(f_out[:, :, None, None], conv.weight))
            if conv.bias is not None:
                cp[3].bias.copy_(conv.bias)
        return cp.to(conv.weight.device)
