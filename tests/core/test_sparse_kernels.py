"""Sparse kernels: a pruned Linear on CSR computes what the dense layer computes (float, 8-bit and 4-bit decoded
weights), its CSR copy follows the weight, and the choice is forced or timed as asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_micro.core.quantizers import FakeQuantLinear, WeightQuantSpec, to_low_bit
from lightning_micro.core.sparse_kernels import (
    MIN_TIMED_SPARSITY,
    SparseLinear,
    apply_kernels,
    candidate_layers,
    choose_kernels,
    flop_formulas,
    remove_kernels,
    to_csr,
    transposed_copy,
)


def pruned_linear(in_features: int, out_features: int, sparsity: float, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    return layer.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (64, 64), (3, 5, 64)])
def test_a_csr_layer_computes_what_the_dense_layer_computes(bias, shape):
    layer = pruned_linear(64, 48, 0.9, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        dense = layer(x)
        net = apply_kernels(nn.Sequential(layer), {"0": {"1": "csr", "64": "csr"}})
        sparse = net(x)
    assert isinstance(net[0], SparseLinear)
    assert sparse.shape == dense.shape
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_decoded_low_bit_weights_run_on_csr_with_equal_outputs(bits):
    layer = pruned_linear(64, 32, 0.8)
    fake = FakeQuantLinear(64, 32)
    fake.load_state_dict(layer.state_dict())
    deployed = to_low_bit(fake, WeightQuantSpec(bits=bits), nn.Linear).eval()
    assert float((deployed.weight == 0).float().mean()) >= 0.75  # zero stays exactly zero on the grid
    x = torch.randn(16, 64)
    with torch.no_grad():
        dense = deployed(x)
        sparse = apply_kernels(nn.Sequential(deployed), {"0": {"16": "csr"}})(x)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_each_batch_size_class_runs_its_own_kernel():
    layer = apply_kernels(nn.Sequential(pruned_linear(32, 16, 0.9)), {"0": {"1": "dense", "64": "csr"}})[0]
    assert [layer.kernel_for(b) for b in (1, 2, 7, 9, 64, 1000)] == ["dense"] * 3 + ["csr"] * 3
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with torch.no_grad(), counter:
        layer(torch.randn(64, 32))
    assert counter.get_total_flops() == 2 * 64 * int(torch.count_nonzero(layer.weight))  # one MAC per non-zero


def test_the_csr_copy_follows_a_loaded_state_dict():
    layer = apply_kernels(nn.Sequential(pruned_linear(32, 16, 0.9)), {"0": {"1": "csr"}})
    x = torch.randn(4, 32)
    with torch.no_grad():
        layer(x)  # builds the CSR copy of the first weights
    other = pruned_linear(32, 16, 0.7, seed=1)
    layer[0].load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other(x), rtol=1e-5, atol=1e-5)
        layer[0].weight.mul_(2.0)  # in place: the copy is rebuilt too
        torch.testing.assert_close(layer(x), nn.functional.linear(x, other.weight * 2, other.bias))
        layer[0].bias.add_(1.0)  # and so is the bias column
        torch.testing.assert_close(layer(x), nn.functional.linear(x, other.weight * 2, other.bias + 1))


def test_csr_layers_in_a_row_pass_transposed_activations_with_equal_outputs():
    # a CSR layer returns a transposed view; the next CSR layer reads its transpose without a copy, a dense one
    # (and a ReLU between) takes the view as it is
    net = nn.Sequential(pruned_linear(96, 64, 0.9), nn.ReLU(), pruned_linear(64, 32, 0.9, seed=1), nn.ReLU(),
                        pruned_linear(32, 10, 0.5, seed=2)).eval()
    x = torch.randn(64, 96)
    with torch.no_grad():
        dense = net(x)
        apply_kernels(net, {"0": {"64": "csr"}, "2": {"64": "csr"}})
        with torch.inference_mode():
            sparse = net(x)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: torch.randn(64, 80),  # a contiguous batch: NumPy's copy
    lambda: torch.randn(80, 64).t(),  # already transposed: no copy
    lambda: torch.randn(64, 80, dtype=torch.float64),
    lambda: torch.randn(64, 80).to(torch.bfloat16),  # a type NumPy lacks: torch's copy
    lambda: torch.randn(64, 80, requires_grad=True),  # needs its graph: torch's copy
])
def test_the_transposed_copy_is_the_contiguous_transpose(make):
    rows = make()
    columns = transposed_copy(rows)
    assert columns.is_contiguous() and columns.dtype == rows.dtype
    assert torch.equal(columns, rows.t())
    if rows.t().is_contiguous():
        assert columns.data_ptr() == rows.data_ptr()


def test_the_csr_weight_keeps_int32_indices_and_its_values():
    weight = pruned_linear(50, 20, 0.8).weight.detach()
    csr = to_csr(weight)
    assert csr.crow_indices().dtype == torch.int32 and csr.col_indices().dtype == torch.int32
    assert torch.equal(csr.to_dense(), weight)


def test_the_state_dict_is_the_dense_layers_and_removal_gives_a_plain_linear():
    net = nn.Sequential(pruned_linear(32, 16, 0.9))
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    apply_kernels(net, {"0": {"1": "csr"}})
    assert set(net.state_dict()) == set(keys)
    assert type(remove_kernels(net)[0]) is nn.Linear


def net_of_three() -> nn.Sequential:
    return nn.Sequential(pruned_linear(2048, 2048, 0.99), nn.ReLU(), pruned_linear(2048, 64, MIN_TIMED_SPARSITY / 2),
                         nn.ReLU(), nn.Linear(64, 10))


def test_never_always_and_auto():
    net = net_of_three()
    assert sorted(candidate_layers(net)) == ["0", "2"]  # the last layer has no zero
    assert choose_kernels(net, [2048], mode="never") == {}
    assert choose_kernels(net, [2048], [1, 64], mode="always") == {"0": {"1": "csr", "64": "csr"},
                                                                   "2": {"1": "csr", "64": "csr"}}
    auto = choose_kernels(net, [2048], [1, 64], mode="auto")
    # 99% zeros at batch 64: CSR does 1% of 268M multiply-adds, which no timing noise on this machine outweighs; the
    # half-sparse layer is not timed
    assert auto.get("0", {}).get("64") == "csr"
    assert "2" not in auto
    assert set(auto["0"]) == {"1", "64"} and set(auto["0"].values()) <= {"dense", "csr"}


@pytest.mark.parametrize(("choice", "message"), [
    ({"9": {"1": "csr"}}, "not an nn.Linear"),
    ({"0": {"1": "bsr"}}, "kernels one of"),
    ({"0": {"0": "csr"}}, "positive integers"),
])
def test_a_bad_choice_is_refused(choice, message):
    with pytest.raises(ValueError, match=message):
        apply_kernels(nn.Sequential(pruned_linear(8, 4, 0.5)), choice)


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="sparse_kernels must be one of"):
        choose_kernels(net_of_three(), [2048], mode="sometimes")


def test_a_network_built_under_inference_mode_runs_its_csr_layers():
    with torch.inference_mode():
        net = apply_kernels(nn.Sequential(pruned_linear(64, 32, 0.9)), {"0": {"8": "csr"}})
        x = torch.randn(8, 64)
        assert torch.allclose(net(x), nn.functional.linear(x, net[0].weight, net[0].bias), atol=1e-5)


def test_auto_times_a_layer_on_the_input_its_csr_neighbour_gives_it():
    # after a CSR layer the next one's input is a transposed view, which it reads without a copy; the chooser must
    # time the second layer on that view (the dense network's contiguous input would time a copy never made)
    net = nn.Sequential(pruned_linear(512, 256, 0.99), nn.ReLU(), pruned_linear(256, 128, 0.99))
    contiguous = []  # the hook travels into the chooser's copy of the network
    net[2].register_forward_pre_hook(lambda module, args: contiguous.append(args[0].is_contiguous()))
    choice = choose_kernels(net, [512], [64], mode="auto", rounds=1)
    assert choice["0"] == {"64": "csr"}  # 99% zeros of 8.4M multiply-adds
    assert contiguous and not any(contiguous)
    assert type(net[0]) is nn.Linear  # the network itself is not changed
