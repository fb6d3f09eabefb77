"""Low-bit TT layers: fake-quantized cores, their gradients and caches, the integer-code form and its replay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_micro.core import transforms
from lightning_micro.core.quantized_tt import FakeQuantTTLinear, LowBitTTLinear, quantize_core, to_low_bit_tt
from lightning_micro.core.quantizers import FAKE_QUANT_TYPES, WeightQuantSpec, dequantize, quantize_codes
from lightning_micro.core.tensor_train import TTLinear
from lightning_micro.models import LeNet300
from lightning_micro.report import measure as report

SPECS = [WeightQuantSpec(1), WeightQuantSpec(2, per_channel=False), WeightQuantSpec(4, symmetric=False),
         WeightQuantSpec(8)]
GRIDS = [(1, True), (2, True), (2, False), (4, True), (4, False), (8, True), (8, False)]  # binary is symmetric
TT_FC1 = {"name": "fc1", "in_factors": [4, 4, 2, 2], "out_factors": [3, 5, 5, 4], "ranks": [4, 4, 4]}


def _small(seed: int = 0) -> TTLinear:
    """64 -> 300: without gradients it multiplies by the rebuilt matrix."""
    torch.manual_seed(seed)
    return TTLinear(64, 300, [4, 4, 2, 2], [3, 5, 5, 4], ranks=4)


def _chain(seed: int = 0) -> TTLinear:
    """64 -> 64 at rank 2: without gradients it contracts core by core."""
    torch.manual_seed(seed)
    return TTLinear(64, 64, [4, 4, 4], [4, 4, 4], ranks=2)


LAYERS = {"rebuilt_matrix": _small, "core_by_core": _chain}


def _uses_rebuilt_matrix(layer: TTLinear, batch: int) -> bool:
    return layer.plan(batch) is None


def _with_cores(layer: TTLinear, cores: list[torch.Tensor]) -> TTLinear:
    """A plain TTLinear of ``layer``'s shape computing with ``cores`` (and ``layer``'s bias)."""
    plain = TTLinear(layer.in_features, layer.out_features, layer.in_factors, layer.out_factors, layer.ranks)
    with torch.no_grad():
        for mine, value in zip(plain.cores, cores, strict=True):
            mine.copy_(value)
        plain.bias.copy_(layer.bias)
    return plain


def _dequantized(core: torch.Tensor, spec: WeightQuantSpec) -> torch.Tensor:
    """The core on its grid, computed straight from the definition: one scale per (r_prev, m) row."""
    r_prev, m, n, r_next = core.shape
    return dequantize(*quantize_codes(core.reshape(r_prev * m, n * r_next), spec)).reshape(core.shape)


def _reference(layer: FakeQuantTTLinear) -> TTLinear:
    return _with_cores(layer, [_dequantized(c.detach(), layer.spec) for c in layer.cores])


def test_fake_quant_types_register_tt_linear_and_the_fake_layer_shares_its_parameters():
    assert FAKE_QUANT_TYPES[TTLinear] is FakeQuantTTLinear
    net = transforms.apply(LeNet300([1, 8, 8]), [], "tt_swap", layers=[TT_FC1])
    float_cores = list(net.fc1.cores)
    net = transforms.apply(net, [], "weight_fake_quant", layers=["fc1"], bits=4, per_channel=True, symmetric=True)
    assert type(net.fc1) is FakeQuantTTLinear and net.fc1.enabled and net.fc1.spec == WeightQuantSpec(4)
    assert all(a is b for a, b in zip(net.fc1.cores, float_cores, strict=True))  # the optimizer's Parameters


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fake_quant_forward_is_the_tt_forward_on_dequantized_cores(make, spec):
    layer = make()
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        float_out = layer(x)  # fills the float layer's caches, which the fake-quantized one must not reuse
    fake = FakeQuantTTLinear.from_float(layer, spec)
    reference = _reference(fake)
    assert torch.allclose(fake(x), reference(x), atol=1e-6)  # with gradients: a contraction plan
    with torch.no_grad():
        assert torch.allclose(fake(x), reference(x), atol=1e-6)
        assert not torch.allclose(fake(x), float_out, atol=1e-4)  # the grid is really in the loop


def test_per_channel_scales_are_per_r_prev_and_m_row():
    core = _small().cores[1].detach()  # (4, 5, 4, 4)
    codes, scale, zero_point = quantize_core(core, WeightQuantSpec(8))
    assert scale.shape == zero_point.shape == (4, 5, 1, 1) and codes.shape == core.shape
    assert torch.equal(codes.abs().amax(dim=(2, 3)), torch.full((4, 5), 127, dtype=torch.int8))  # each row's max
    assert torch.allclose(scale.flatten(), core.abs().amax(dim=(2, 3)).flatten() / 127)
    assert quantize_core(core, WeightQuantSpec(8, per_channel=False))[1].shape == (1, 1, 1, 1)


@pytest.mark.parametrize("bits", [4, 1])
def test_straight_through_gradients_reach_every_latent_core(bits):
    spec = WeightQuantSpec(bits)
    fake = FakeQuantTTLinear.from_float(_small(), spec)
    with torch.no_grad():
        fake.cores[1][0, 0] = 1.5  # outside binary weights' clip window
    reference = _reference(fake)
    x, target = torch.randn(6, 64), torch.randn(6, 300)
    nn.functional.mse_loss(fake(x), target).backward()
    nn.functional.mse_loss(reference(x), target).backward()
    for latent, quantized in zip(fake.cores, reference.cores, strict=True):
        window = (latent.detach().abs() <= 1.0) if bits == 1 else torch.ones_like(latent, dtype=torch.bool)
        assert torch.allclose(latent.grad, quantized.grad * window, atol=1e-7)
        assert latent.grad.abs().sum() > 0
    assert (fake.cores[1].grad[0, 0] == 0).all() == (bits == 1)


@pytest.mark.parametrize(("bits", "symmetric"), GRIDS)
def test_exactly_zero_core_entries_keep_the_zero_code(bits, symmetric):
    spec = WeightQuantSpec(bits, symmetric=symmetric)
    layer = _small(seed=3)
    with torch.no_grad():
        for core in layer.cores:
            core[torch.rand_like(core) < 0.5] = 0.0
    deployed = to_low_bit_tt(layer, spec)
    for k, core in enumerate(layer.cores):
        zeros = core.detach() == 0
        steps = getattr(deployed, f"core{k}_codes").long() - getattr(deployed, f"core{k}_zero_point").long()
        assert (steps[zeros] == 0).all()
        assert (getattr(deployed, f"core{k}")[zeros] == 0).all()
        assert (FakeQuantTTLinear.from_float(layer, spec).core_tensors()[k][zeros] == 0).all()


@pytest.mark.parametrize(("bits", "symmetric"), GRIDS)
def test_codes_stay_within_their_bit_width(bits, symmetric):
    deployed = to_low_bit_tt(_small(seed=bits), WeightQuantSpec(bits, symmetric=symmetric))
    low, high = (-1, 1) if bits == 1 else ((-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else
                                          (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
    for k in range(4):
        codes = getattr(deployed, f"core{k}_codes")
        assert codes.dtype == torch.int8 and low <= int(codes.min()) and int(codes.max()) <= high
        assert int(codes.max()) - int(codes.min()) >= min(2**bits - 1, 2)  # the grid is used, not collapsed


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_no_grad_cache_follows_optimizer_steps_loads_and_the_switch(make):
    fake = FakeQuantTTLinear.from_float(make(), WeightQuantSpec(4))
    x = torch.randn(2, fake.in_features)
    fake.eval()
    with torch.no_grad():
        before = fake(x)
    optimizer = torch.optim.SGD(fake.parameters(), lr=0.5)
    fake(x).square().sum().backward()
    optimizer.step()  # in place
    with torch.no_grad():
        after = fake(x)
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.allclose(after, _reference(fake)(x), atol=1e-6)

        other = FakeQuantTTLinear.from_float(make(seed=7), WeightQuantSpec(4))
        fake.load_state_dict(other.state_dict())
        assert torch.allclose(fake(x), other(x), atol=1e-6)

        fake.enabled = False
        assert torch.allclose(fake(x), _with_cores(fake, list(fake.cores))(x), atol=1e-6)
        fake.enabled = True
        assert torch.allclose(fake(x), other(x), atol=1e-6)
    assert _uses_rebuilt_matrix(fake, 2) == (make is _small)


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_low_bit_layer_computes_what_the_fake_quantized_layer_computed(make, spec):
    fake = FakeQuantTTLinear.from_float(make(), spec)
    with torch.no_grad():
        fake.cores[0][0, 0, 0, 0] = 0.0
    deployed = to_low_bit_tt(fake, spec)
    fake.eval()
    deployed.eval()
    x = torch.randn(4, fake.in_features)
    with torch.no_grad():
        assert torch.allclose(deployed(x), fake(x), atol=1e-6, rtol=0)
        assert torch.allclose(deployed.weight_matrix(), fake.weight_matrix(), atol=1e-6, rtol=0)
    assert torch.allclose(deployed(x), fake(x), atol=1e-6, rtol=1e-5)  # with gradients on


def test_state_dict_holds_codes_and_no_float_cores():
    deployed = to_low_bit_tt(FakeQuantTTLinear.from_float(_small(), WeightQuantSpec(2)), WeightQuantSpec(2))
    state = deployed.state_dict()
    expected = {"bias"} | {f"core{k}_{part}" for k in range(4) for part in ("codes", "scale", "zero_point")}
    assert set(state) == expected
    assert [p is deployed.bias for p in deployed.parameters()] == [True]
    assert all(state[f"core{k}_codes"].dtype == torch.int8 and state[f"core{k}_zero_point"].dtype == torch.int8
               and state[f"core{k}_scale"].dtype == torch.float32 for k in range(4))
    assert [tuple(state[f"core{k}_codes"].shape) for k in range(4)] == [tuple(c.shape) for c in deployed.cores]


def test_loading_codes_redecodes_the_cores_and_drops_the_rebuilt_matrix():
    spec = WeightQuantSpec(4)
    source, target = to_low_bit_tt(_small(seed=1), spec).eval(), to_low_bit_tt(_small(seed=2), spec).eval()
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert _uses_rebuilt_matrix(target, 2)
        stale = target(x)  # caches target's own matrix
        target.load_state_dict(source.state_dict())
        assert torch.equal(target(x), source(x)) and not torch.allclose(target(x), stale)


def _converted_lenet(record: transforms.Record) -> nn.Module:
    quant = {"layers": ["fc1", "fc3"], "bits": 2, "per_channel": True, "symmetric": False}
    net = transforms.apply(LeNet300([1, 8, 8]), record, "tt_swap", layers=[TT_FC1])
    net = transforms.apply(net, record, "weight_fake_quant", **quant)
    return transforms.apply(net, record, "weight_low_bit", **quant)


def test_replayed_network_takes_the_codes_strictly_and_computes_the_same():
    torch.manual_seed(0)
    record: transforms.Record = []
    net = _converted_lenet(record).eval()
    fresh = transforms.replay(LeNet300([1, 8, 8]), record).eval()
    assert type(fresh.fc1) is LowBitTTLinear and type(fresh.fc3) is nn.Linear
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == shapes
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        fresh(x)  # the replayed structure's own (random) matrix is cached before the weights arrive
        fresh.load_state_dict(net.state_dict(), strict=True)
        assert torch.equal(fresh(x), net(x))


def test_report_counts_the_decoded_cores_as_weights():
    net = _converted_lenet([])
    weights = report.weight_tensors(net)
    assert {name for name in weights if name.startswith("fc1.")} == {"fc1.bias", *(f"fc1.core{k}" for k in range(4))}
    assert all(weights[f"fc1.core{k}"] is net.fc1.core_tensors()[k] for k in range(4))
    tt_cores = 1 * 3 * 4 * 4 + 4 * 5 * 4 * 4 + 4 * 5 * 2 * 4 + 4 * 4 * 2 * 1
    counts = report.parameter_counts(net)
    assert counts["params/total"] == tt_cores + 300 + (300 * 100 + 100) + (100 * 10 + 10)
    decoded = [*net.fc1.core_tensors(), net.fc3.weight]  # buffers: TT cores, and the low-bit Linear's weight
    nonzero = sum(int(torch.count_nonzero(t)) for t in decoded)
    assert counts["params/nonzero"] == nonzero + sum(int(torch.count_nonzero(p)) for p in net.parameters())
