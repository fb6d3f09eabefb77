"""Low-bit weight quantizers: the grid, zeros, the straight-through gradient, and the modules around them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_micro.core.quantizers import (
    FakeQuantConv2d,
    FakeQuantLinear,
    WeightQuantSpec,
    dequantize,
    fake_quantize,
    quantize_codes,
    to_low_bit,
)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_grid_has_2_to_the_bits_levels_and_rounds_to_nearest(bits, per_channel, symmetric):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    spec = WeightQuantSpec(bits, per_channel, symmetric)
    codes, scale, zero_point = quantize_codes(w, spec)
    assert codes.dtype == torch.int8
    for row in range(16) if per_channel else [slice(None)]:  # each scale's codes span at most 2**bits levels
        steps = codes[row].long() - zero_point.flatten()[row if per_channel else 0].long()
        assert int(steps.max() - steps.min()) <= 2**bits - 1
    assert (dequantize(codes, scale, zero_point) - w).abs().max() <= scale.max() / 2 + 1e-6
    assert scale.shape == ((16, 1) if per_channel else (1, 1))


@pytest.mark.parametrize(("bits", "symmetric"), [(1, True), (2, True), (2, False), (4, True), (4, False), (8, True),
                                                 (8, False)])
def test_zero_weights_stay_exactly_zero(bits, symmetric):
    torch.manual_seed(1)
    w = torch.randn(8, 50)
    w[torch.rand_like(w) < 0.7] = 0.0
    codes, scale, zero_point = quantize_codes(w, WeightQuantSpec(bits, True, symmetric))
    assert torch.all(dequantize(codes, scale, zero_point)[w == 0] == 0)


def test_binary_weights_are_plus_minus_mean_abs_of_the_nonzero_weights_per_channel():
    w = torch.tensor([[0.5, -1.5, 0.0, 1.0], [-0.2, 0.2, 0.4, -0.4]])
    codes, scale, zero_point = quantize_codes(w, WeightQuantSpec(1))
    assert codes.tolist() == [[1, -1, 0, 1], [-1, 1, 1, -1]]
    assert scale.flatten().tolist() == pytest.approx([1.0, 0.3])
    expected = torch.tensor([[1, -1, 0, 1], [-0.3, 0.3, 0.3, -0.3]])
    assert torch.allclose(dequantize(codes, scale, zero_point), expected)


def test_straight_through_gradient():
    w = torch.tensor([[0.3, -2.0, 0.7]], requires_grad=True)
    fake_quantize(w, WeightQuantSpec(4)).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0]]  # identity for uniform grids
    w.grad = None
    fake_quantize(w, WeightQuantSpec(1)).sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 1.0]]  # binary: BinaryConnect's window |w| <= 1


def test_fake_quantize_forward_is_exactly_the_dequantized_codes():
    w = torch.randn(10, 20)
    spec = WeightQuantSpec(4, per_channel=True, symmetric=True)
    assert torch.equal(fake_quantize(w, spec), dequantize(*quantize_codes(w, spec)))


def test_bad_specs_name_the_argument():
    with pytest.raises(ValueError, match="bits must be one of"):
        WeightQuantSpec(3)
    with pytest.raises(ValueError, match="binary"):
        WeightQuantSpec(1, symmetric=False)


@pytest.mark.parametrize(("layer", "x"), [(nn.Linear(20, 6), torch.randn(4, 20)),
                                          (nn.Conv2d(3, 5, 3, padding=1), torch.randn(2, 3, 8, 8))])
def test_fake_quant_layer_shares_parameters_and_deploys_to_the_same_outputs(layer, x):
    spec = WeightQuantSpec(2)
    weight = layer.weight
    keys = set(layer.state_dict())
    fake = {nn.Linear: FakeQuantLinear, nn.Conv2d: FakeQuantConv2d}[type(layer)].from_float(layer, spec)
    assert fake.weight is weight and set(fake.state_dict()) == keys  # optimizers and masks stay valid
    deployed = to_low_bit(fake, spec, type(layer))
    assert type(deployed) is type(layer)
    assert set(deployed.state_dict()) == (keys - {"weight"}) | {"weight_codes", "weight_scale", "weight_zero_point"}
    with torch.no_grad():
        assert torch.equal(fake(x), deployed(x))
    # Loading codes into a deployed layer decodes its weight again.
    other = to_low_bit(FakeQuantLinear.from_float(nn.Linear(20, 6), spec), spec, nn.Linear) if isinstance(
        layer, nn.Linear) else to_low_bit(FakeQuantConv2d.from_float(nn.Conv2d(3, 5, 3, padding=1), spec), spec,
                                          nn.Conv2d)
    other.load_state_dict(deployed.state_dict())
    assert torch.equal(other.weight, deployed.weight)
