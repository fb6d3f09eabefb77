"""The record of structural transforms: applied, serialized, replayed, compared."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_micro.core import tensor_train, transforms
from lightning_micro.core.low_rank import LowRankLinear
from lightning_micro.core.quantizers import FakeQuantConv2d, FakeQuantLinear
from lightning_micro.models import LeNet300

ARGS = {"layers": ["fc1", "fc3"], "bits": 4, "per_channel": True, "symmetric": True}


def test_apply_records_plain_json_and_replay_rebuilds_the_same_structure():
    record: transforms.Record = []
    net = transforms.apply(LeNet300([1, 8, 8]), record, "weight_fake_quant", **{**ARGS, "layers": ("fc1", "fc3")})
    assert record == [{"transform": "weight_fake_quant", "args": ARGS}]  # tuples became lists
    saved = json.loads(json.dumps(record))
    fresh = transforms.replay(LeNet300([1, 8, 8]), saved)
    assert [type(m).__name__ for m in fresh.children()] == [type(m).__name__ for m in net.children()]
    assert isinstance(fresh.fc1, FakeQuantLinear) and type(fresh.fc2) is torch.nn.Linear
    fresh.load_state_dict(net.state_dict(), strict=True)


def test_low_bit_record_replays_into_a_network_that_takes_the_codes():
    record: transforms.Record = []
    net = transforms.apply(LeNet300([1, 8, 8]), record, "weight_fake_quant", **ARGS)
    net = transforms.apply(net, record, "weight_low_bit", **ARGS)
    fresh = transforms.replay(LeNet300([1, 8, 8]), record)
    fresh.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh(x), net(x))


def test_remaining_gives_the_suffix_and_refuses_a_different_history():
    first = {"transform": "weight_fake_quant", "args": ARGS}
    second = {"transform": "weight_low_bit", "args": ARGS}
    assert transforms.remaining([], [first, second]) == [first, second]
    assert transforms.remaining([first], [first, second]) == [second]
    other = {"transform": "weight_fake_quant", "args": {**ARGS, "bits": 2}}
    with pytest.raises(ValueError, match="transformed by"):
        transforms.remaining([other], [first])


def test_unknown_transform_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown transform 'prune_rows'.*weight_fake_quant"):
        transforms.apply(LeNet300([1, 8, 8]), [], "prune_rows")
    with pytest.raises(ValueError, match="does not know"):
        transforms.replay(LeNet300([1, 8, 8]), [{"transform": "prune_rows", "args": {}}])


def test_replace_module_by_dotted_name():
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    transforms.replace_module(net, "0.0", torch.nn.Identity())
    assert isinstance(net[0][0], torch.nn.Identity)


def test_replaying_a_decomposition_builds_its_structure_without_decomposing(monkeypatch):
    record: transforms.Record = []
    net = transforms.apply(LeNet300([1, 8, 8]), record, "tt_swap", layers=[
        {"name": "fc1", "in_factors": [4, 2, 2, 4], "out_factors": [4, 5, 5, 3], "ranks": [1, 4, 4, 4, 1]}])
    net = transforms.apply(net, record, "low_rank_swap", layers=[{"name": "fc2", "method": "svd", "rank": 10}])

    def no_decomposition(*args, **kwargs):
        raise AssertionError("a replay must not decompose: the saved weights replace the values")

    monkeypatch.setattr(tensor_train, "tt_svd", no_decomposition)
    monkeypatch.setattr(LowRankLinear, "from_linear", no_decomposition)
    fresh = transforms.replay(LeNet300([1, 8, 8]), json.loads(json.dumps(record)))
    fresh.load_state_dict(net.state_dict())  # strict: same keys, same shapes
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_replaced_modules_land_on_the_device_of_the_module_they_replace():
    # A replay in on_load_checkpoint can run on a network already moved to its device; "meta" stands in for it.
    record = [{"transform": "tt_swap", "args": {"layers": [
                  {"name": "fc1", "in_factors": [4, 2, 2, 4], "out_factors": [4, 5, 5, 3], "ranks": [1, 4, 4, 4, 1]}]}},
              {"transform": "low_rank_swap", "args": {"layers": [{"name": "fc2", "method": "svd", "rank": 10}]}}]
    net = transforms.replay(LeNet300([1, 8, 8]).to("meta"), record)
    assert {p.device.type for p in net.parameters()} == {"meta"}


class LibraryLinear(torch.nn.Linear):
    """A library's own Linear (timm's casts its weight; torch's NonDynamicallyQuantizableLinear adds nothing)."""


class SubclassedLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = type("LibraryConv2d", (torch.nn.Conv2d,), {})(1, 4, 3)
        self.proj = torch.nn.modules.linear.NonDynamicallyQuantizableLinear(4 * 36, 16)
        self.head = LibraryLinear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.conv(x).flatten(1))))


def test_low_bit_weights_take_layers_by_what_they_are_not_by_exact_class():
    """A subclass of Linear or Conv2d is fake-quantized and stored as codes like the class it extends (deployed
    as that class), and the record replays into a fresh network with the same outputs."""
    args = {"layers": ["conv", "proj", "head"], "bits": 4, "per_channel": True, "symmetric": True}
    record: transforms.Record = []
    net = transforms.apply(SubclassedLayers(), record, "weight_fake_quant", **args)
    assert all(isinstance(getattr(net, name), (FakeQuantLinear, FakeQuantConv2d)) for name in args["layers"])
    net = transforms.apply(net, record, "weight_low_bit", **args)
    assert {key for key in net.state_dict() if key.endswith("_codes")} == {f"{n}.weight_codes" for n in args["layers"]}
    fresh = transforms.replay(SubclassedLayers(), record)
    fresh.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    assert type(fresh.head) is torch.nn.Linear and fresh.head.weight_codes.dtype == torch.int8
