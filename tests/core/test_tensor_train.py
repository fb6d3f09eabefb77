"""TT-matrices: dimensions, ranks, TT-SVD, the contraction plans and their multiply-add counts, the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorly.tt_matrix import tt_matrix_to_tensor
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_micro.core import tensor_train as tt


def test_factorize_is_balanced_and_exact():
    assert tt.factorize(784, 4) == [7, 7, 4, 4]
    assert tt.factorize(4096, 4) == [8, 8, 8, 8]
    assert tt.factorize(300, 3) == [10, 6, 5]
    assert tt.factorize(10, 4) == [5, 2, 1, 1]  # fewer prime factors than cores: ones


def test_found_dimensions_multiply_back_and_pair_big_ends():
    ins, outs = tt.tt_dims(784, 300, cores=4)
    assert np.prod(ins) == 784 and np.prod(outs) == 300
    sizes = [m * n for m, n in zip(outs, ins, strict=True)]
    assert max(sizes[0], sizes[-1]) == max(sizes)  # the biggest core sits at an end (rank 1 on one side)
    assert tt.tt_dims(784, 300, in_factors=[4, 7, 4, 7], out_factors=[5, 3, 4, 5]) == ([4, 7, 4, 7], [5, 3, 4, 5])


def _random_linear(in_features=60, out_features=48, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


def test_tt_svd_error_falls_with_rank_and_vanishes_at_full_rank():
    layer = _random_linear()
    ins, outs = tt.tt_dims(60, 48, cores=3)
    bounds = tt.rank_bounds(ins, outs)
    errors = []
    for rank in sorted({1, 2, 4, 8, max(bounds)}):
        cores = tt.tt_svd(layer.weight, ins, outs, tt.full_ranks(rank, ins, outs))
        errors.append(((tt.to_matrix(cores) - layer.weight).norm() / layer.weight.norm()).item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.5 and errors[-1] < 1e-5


def test_rebuilt_matrix_matches_tensorly():
    layer = tt.TTLinear.from_linear(_random_linear(), ranks=3, cores=3)
    ours = layer.weight_matrix().detach().double().numpy()
    theirs = tt_matrix_to_tensor([c.detach().double().numpy() for c in layer.cores]).reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(("shape", "ranks"), [((784, 300), 8), ((60, 48), [3, 5]), ((4096, 64), 4)],
                         ids=["lenet300-fc1", "uneven-ranks", "wide"])
def test_every_plan_equals_the_rebuilt_matrix_and_counts_its_macs(shape, ranks):
    cores_count = 3 if isinstance(ranks, list) else 4
    layer = tt.TTLinear.from_linear(_random_linear(*shape), ranks=ranks, cores=cores_count)
    cores = [c.detach() for c in layer.cores]
    x = torch.randn(16, shape[0])
    expected = x @ tt.to_matrix(cores).t()
    for plan in tt.plans(len(cores)):
        counter = FlopCounterMode(display=False)
        with counter:
            y = tt.run_plan(x, cores, plan)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
        # the FLOP model the layer chooses by is what the contraction really executes
        assert counter.get_total_flops() // 2 == tt.plan_macs([c.shape for c in cores], plan, 16), plan


def test_layer_forward_equals_the_dense_layer_rebuilt_from_its_cores_with_and_without_gradients():
    layer = tt.TTLinear.from_linear(_random_linear(784, 300), ranks=8)
    dense = nn.Linear(784, 300)
    with torch.no_grad():
        dense.weight.copy_(layer.weight_matrix())
        dense.bias.copy_(layer.bias)
    for batch in (1, 64, 512):
        x = torch.randn(batch, 784)
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)  # with autograd: a plan
        with torch.no_grad():
            torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)  # rebuilt or a plan, by MACs
    x3 = torch.randn(2, 5, 784)  # leading dimensions are kept, as nn.Linear does
    torch.testing.assert_close(layer(x3), dense(x3), rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_core_and_equal_the_dense_chain_rule():
    layer = tt.TTLinear.from_linear(_random_linear(784, 300), ranks=8)
    x, target = torch.randn(32, 784), torch.randn(32, 300)
    nn.functional.mse_loss(layer(x), target).backward()
    contracted = [c.grad.clone() for c in layer.cores]
    layer.zero_grad()
    nn.functional.mse_loss(x @ layer.weight_matrix().t() + layer.bias, target).backward()
    for k, (a, b) in enumerate(zip(contracted, (c.grad for c in layer.cores), strict=True)):
        assert a.abs().sum() > 0, f"core {k} got no gradient"
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    assert layer.bias.grad is not None


def test_without_gradients_the_cheaper_of_rebuilt_matrix_and_contraction_is_used_and_tracks_updates():
    small = tt.TTLinear.from_linear(_random_linear(784, 300), ranks=13)  # LeNet-300's fc1 at 30x
    shapes = [c.shape for c in small.cores]
    assert min(tt.plan_macs(shapes, p, 64) for p in tt.plans(4)) > 64 * 784 * 300
    assert small.plan(64) is None  # so the rebuilt matrix is used
    big = tt.TTLinear.from_linear(_random_linear(4096, 4096), ranks=8)
    assert big.plan(64) == ((0, 1), (2, 3))  # a contraction is 4x cheaper than the dense product here
    x = torch.randn(64, 784)
    with torch.no_grad():
        before = small(x)
        small.cores[1].mul_(2.0)  # an in-place update, as an optimizer step makes
        after = small(x)
    torch.testing.assert_close(after - small.bias, 2.0 * (before - small.bias), rtol=1e-4, atol=1e-4)


def test_ranks_from_a_compression_ratio_and_from_energy():
    ins, outs = [7, 4, 4, 7], [4, 5, 5, 3]
    ranks = tt.ranks_for_ratio(ins, outs, 30)
    assert 784 * 300 / tt.parameter_count(ins, outs, ranks) >= 30
    assert 784 * 300 / tt.parameter_count(ins, outs, [1, *(r + 1 for r in ranks[1:-1]), 1]) < 30  # the largest
    weight = _random_linear(784, 300).weight
    assert tt.ranks_for_energy(weight, ins, outs, 1.0) == [1, *tt.rank_bounds(ins, outs), 1]
    low = tt.ranks_for_energy(weight, ins, outs, 0.3)
    assert all(a <= b for a, b in zip(low, tt.ranks_for_energy(weight, ins, outs, 0.9), strict=True))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tt.full_ranks(0, [4, 4], [4, 4]), "ranks must be a positive integer"),
    (lambda: tt.full_ranks([2, 2], [4, 4], [4, 4]), "list of 1 positive integers"),
    (lambda: tt.full_ranks(17, [4, 4], [4, 4]), "r_1=17 is larger than this TT-matrix allows \\(16"),
    (lambda: tt.full_ranks([3, 500, 3], [7, 4, 4, 7], [4, 5, 5, 3]), "r_2=500 is larger .*\\[28, 420, 21\\]"),
    (lambda: tt.tt_dims(784, 300, in_factors=[4, 7, 4, 8]), "in_factors=\\[4, 7, 4, 8\\] .*product is 784"),
    (lambda: tt.tt_dims(784, 300, in_factors=[28, 28], out_factors=[3, 10, 10]), "same length"),
    (lambda: tt.tt_dims(784, 300, cores=1), "cores must be an integer >= 2"),
    (lambda: tt.ranks_for_ratio([7, 4, 4, 7], [4, 5, 5, 3], 5000), "compression_ratio=5000 is out of reach"),
    (lambda: tt.ranks_for_energy(torch.ones(4, 4), [2, 2], [2, 2], 1.5), "energy must be a number in \\(0, 1\\]"),
])
def test_bad_arguments_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_decomposition_works_whatever_tensorly_backend_is_global():
    import tensorly

    layer = _random_linear()
    with tensorly.backend_context("pytorch"):  # what importing TensorLy-Torch does, globally
        swapped = tt.TTLinear.from_linear(layer, ranks=2, cores=3)
    assert swapped.ranks == [1, 2, 2, 1]


def test_rebuilt_matrix_follows_a_dtype_change_and_a_state_dict_load():
    layer = tt.TTLinear.from_linear(_random_linear(784, 300), ranks=13).eval()
    x = torch.randn(64, 784)
    with torch.no_grad():
        layer(x)  # builds the cached matrix
        other = tt.TTLinear.from_linear(_random_linear(784, 300, seed=1), ranks=13)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))
        layer.double()
        assert layer(x.double()).dtype == torch.float64


def test_rebuilt_matrix_cache_follows_a_core_replaced_by_another_tensor():
    layer = tt.TTLinear(784, 300, [7, 4, 4, 7], [4, 5, 5, 3], ranks=13).eval()
    x = torch.randn(64, 784)
    with torch.no_grad():
        before = layer(x)  # batch 64 at rank 13 runs on the rebuilt matrix (cached)
        old = layer.cores[0]
        new = nn.Parameter(torch.empty_like(old))
        new.copy_(old * 2)  # a new tensor whose version count equals the old one's
        assert new._version == old._version
        layer.cores[0] = new
        after = layer(x)
    assert layer.plan(64) is None
    assert torch.allclose(after - layer.bias, 2 * (before - layer.bias), atol=1e-5)
