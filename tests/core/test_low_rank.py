"""Low-rank layers: exact at full rank, better with rank, same geometry as the layer they replace, bad ranks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_micro.core.low_rank import CPConv2d, LowRankLinear, TuckerConv2d


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_svd_pair_is_exact_at_full_rank_and_improves_with_rank():
    torch.manual_seed(0)
    layer, x = nn.Linear(50, 30), torch.randn(8, 50)
    errors = [_relative_error(LowRankLinear.from_linear(layer, r)(x), layer(x)) for r in (2, 8, 20, 30)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < 1e-5
    low = LowRankLinear.from_linear(layer, 5)
    assert [type(m) for m in low] == [nn.Linear, nn.Linear] and low.rank == 5
    assert sum(p.numel() for p in low.parameters()) == 5 * (50 + 30) + 30
    assert low.dense_parameter_count() == 50 * 30 + 30


@pytest.mark.parametrize("geometry", [{"kernel_size": 5}, {"kernel_size": 3, "stride": 2, "padding": 1},
                                      {"kernel_size": (3, 5), "padding": (1, 2), "dilation": 2}],
                         ids=["valid", "strided", "rectangular-dilated"])
def test_tucker2_is_exact_at_full_rank_and_keeps_the_geometry(geometry):
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 10, **geometry), torch.randn(2, 6, 13, 13)
    errors = [_relative_error(TuckerConv2d.from_conv(conv, r)(x), conv(x)) for r in ([2, 1], [5, 3], [10, 6])]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < 1e-5
    assert TuckerConv2d.from_conv(conv, 4).ranks == [4, 4]


def test_tucker2_of_a_pointwise_conv_is_exact_at_the_ranks_its_unfoldings_allow():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(8, 16, 1), torch.randn(2, 8, 5, 5)
    tucker = TuckerConv2d.from_conv(conv, 16)  # one number: capped at [min(16, 8), min(8, 16)]
    assert tucker.ranks == [8, 8]
    assert _relative_error(tucker(x), conv(x)) < 1e-5


def test_cp_recovers_a_kernel_of_that_cp_rank_and_keeps_the_geometry():
    torch.manual_seed(0)
    rank, (o, i, kh, kw) = 4, (10, 6, 3, 5)
    factors = [torch.randn(n, rank) for n in (o, i, kh, kw)]
    kernel = torch.einsum("ar,br,cr,dr->abcd", *factors)
    conv = nn.Conv2d(i, o, (kh, kw), stride=(2, 1), padding=(1, 2))
    with torch.no_grad():
        conv.weight.copy_(kernel)
    x = torch.randn(2, i, 11, 11)
    cp = CPConv2d.from_conv(conv, rank)
    assert cp(x).shape == conv(x).shape
    assert _relative_error(cp(x), conv(x)) < 1e-2  # CP-ALS finds it (less a little ridge, see below)
    assert _relative_error(CPConv2d.from_conv(conv, 1)(x), conv(x)) > 0.05
    assert cp.dense_parameter_count() == o * i * kh * kw + o


def test_cp_components_do_not_cancel_out():
    # Unregularized CP-ALS of this kernel returns components whose norms sum to 2.5x the kernel's, cancelling
    # each other (on LeNet-5's trained conv2: 7x, and SGD diverged right after the swap); ours stay near 1x.
    torch.manual_seed(0)
    conv = nn.Conv2d(20, 50, 5)
    cp = CPConv2d.from_conv(conv, 16)
    first, vertical, horizontal, last = (m.weight.detach() for m in cp)
    components = (first.flatten(1).norm(dim=1) * vertical.flatten(1).norm(dim=1)
                  * horizontal.flatten(1).norm(dim=1) * last.flatten(1).norm(dim=0))
    assert components.sum() < 2 * conv.weight.norm()
    norms = torch.stack([first.flatten(1).norm(dim=1), vertical.flatten(1).norm(dim=1),
                         horizontal.flatten(1).norm(dim=1), last.flatten(1).norm(dim=0)])
    torch.testing.assert_close(norms, norms[:1].expand_as(norms))  # each component's scale spread evenly


def test_gradients_reach_every_factor():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3)
    for layer in (TuckerConv2d.from_conv(conv, [4, 3]), CPConv2d.from_conv(conv, 5)):
        layer(torch.randn(2, 6, 8, 8)).square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize(("call", "message"), [
    (lambda: LowRankLinear(50, 30, 0), "rank must be a positive integer"),
    (lambda: LowRankLinear(50, 30, 31), "rank=31 is larger than a 30x50 matrix allows \\(at most 30\\)"),
    (lambda: TuckerConv2d(nn.Conv2d(6, 10, 3), [11, 2]), "r_out\\)=11 is larger than a kernel of 10 output"),
    (lambda: TuckerConv2d(nn.Conv2d(6, 10, 3), [2, 7]), "r_in\\)=7 is larger than a kernel of 6 input"),
    (lambda: TuckerConv2d(nn.Conv2d(8, 16, 1), [9, 2]), "r_out\\)=9 .* and 8 inputs per output allows \\(at most 8\\)"),
    (lambda: TuckerConv2d(nn.Conv2d(6, 10, 3), [1, 2, 3]), "Tucker-2 ranks are \\[r_out, r_in\\]"),
    (lambda: CPConv2d(nn.Conv2d(6, 10, 3), -1), "rank must be a positive integer"),
    (lambda: CPConv2d(nn.Conv2d(6, 10, 3), 1000), "larger than a \\[10, 6, 3, 3\\] kernel allows"),
    (lambda: TuckerConv2d(nn.Conv2d(6, 6, 3, groups=6), 2), "ordinary convolutions \\(groups=1"),
    (lambda: TuckerConv2d(nn.Conv2d(8, 16, 1), [6, 3]), "\\[6, 3\\] do not fit a \\[1, 1\\] core"),
])
def test_bad_ranks_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_decompositions_work_whatever_tensorly_backend_is_global():
    import tensorly

    conv = nn.Conv2d(6, 10, 3)
    with tensorly.backend_context("pytorch"):  # what importing TensorLy-Torch does, globally
        assert TuckerConv2d.from_conv(conv, 3).ranks == [3, 3]
        assert CPConv2d.from_conv(conv, 3).rank == 3
