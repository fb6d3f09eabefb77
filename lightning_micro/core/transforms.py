"""Structural transforms of a network, and the plain record that replays them.

A technique that changes a network's structure (inserts fake quantization, converts to integer kernels,
swaps layers for factorized ones) does it through a named transform registered in :data:`TRANSFORMS`:
``function(net, **args) -> net``, with plain (JSON) arguments. Every applied transform is appended to the
network's *record*, a list of ``{"transform": name, "args": {...}}``. The record travels with the weights:
in checkpoints (``ClassifierModule.on_save_checkpoint``) and in the exported artifact's metadata. Replaying it
on a freshly built network gives a network whose ``state_dict`` keys and shapes match the saved weights, so
they load with ``strict=True``: on resume, in ``load_from_checkpoint`` and in ``load_compressed``.

Example:
    >>> from lightning_micro.models import LeNet300
    >>> record = [{"transform": "weight_fake_quant",
    ...            "args": {"layers": ["fc1"], "bits": 4, "per_channel": True, "symmetric": True}}]
    >>> type(replay(LeNet300([1, 8, 8]), record).fc1).__name__
    'FakeQuantLinear'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from lightning_micro.core import int8_backend
from lightning_micro.core.block_removal import remove_blocks
from lightning_micro.core.channels import remove_channels, tensor_slices
from lightning_micro.core.low_rank import CPConv2d, LowRankLinear, TuckerConv2d
from lightning_micro.core.quantized_tt import to_low_bit_tt  # also registers TTLinear in FAKE_QUANT_TYPES
from lightning_micro.core.quantizers import FAKE_QUANT_TYPES, WeightQuantSpec, fake_quant_type, to_low_bit
from lightning_micro.core.tensor_train import TTLinear

Record = list[dict[str, Any]]


def replace_module(net: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) was, on that module's device."""
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old_param = next(getattr(parent, child).parameters(), None)
    setattr(parent, child, new if old_param is None else new.to(old_param.device))


def _weight_fake_quant(net: nn.Module, layers: Sequence[str], bits: int, per_channel: bool, symmetric: bool
                       ) -> nn.Module:
    spec = WeightQuantSpec(bits, per_channel, symmetric)
    for name in layers:
        layer = net.get_submodule(name)
        fake = fake_quant_type(layer)
        if fake is None:
            raise ValueError(f"{name} is a {type(layer).__name__}; low-bit weights are implemented for "
                             f"{sorted(t.__name__ for t in FAKE_QUANT_TYPES)}")
        replace_module(net, name, fake.from_float(layer, spec))
    return net


def _weight_low_bit(net: nn.Module, layers: Sequence[str], bits: int, per_channel: bool, symmetric: bool
                    ) -> nn.Module:
    spec = WeightQuantSpec(bits, per_channel, symmetric)
    float_types = {fake: plain for plain, fake in FAKE_QUANT_TYPES.items()}
    for name in layers:
        layer = net.get_submodule(name)
        if isinstance(layer, TTLinear):  # float or fake-quantized: every core becomes codes
            replace_module(net, name, to_low_bit_tt(layer, spec))
        else:
            replace_module(net, name, to_low_bit(layer, spec, float_types.get(type(layer), type(layer))))
    return net


def _int8_qat_prepare(net: nn.Module, input_shape: Sequence[int], per_channel: bool, symmetric: bool,
                      skip: Sequence[str], backend: str, input_dtype: str = "float32") -> nn.Module:
    # input_dtype: recorded only where it is not float32 (token ids), so earlier records replay unchanged
    return int8_backend.prepare_qat(net, input_shape, per_channel, symmetric, skip, backend, input_dtype)


def _int8_convert(net: nn.Module) -> nn.Module:
    return int8_backend.convert(net)


def _tt_swap(net: nn.Module, layers: Sequence[Mapping[str, Any]], initialize: bool = True) -> nn.Module:
    # layers: [{"name", "in_factors", "out_factors", "ranks"}]; TT-SVD of the trained weight when initializing
    for spec in layers:
        layer = net.get_submodule(spec["name"])
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{spec['name']} is a {type(layer).__name__}; TT layers replace Linear layers")
        dims = {"in_factors": spec["in_factors"], "out_factors": spec["out_factors"]}
        new = (TTLinear.from_linear(layer, spec["ranks"], **dims) if initialize else
               TTLinear(layer.in_features, layer.out_features, ranks=spec["ranks"], bias=layer.bias is not None,
                        **dims))
        replace_module(net, spec["name"], new)
    return net


def _low_rank_swap(net: nn.Module, layers: Sequence[Mapping[str, Any]], initialize: bool = True) -> nn.Module:
    # layers: [{"name", "method": "svd" | "tucker2" | "cp", "rank": int or [r_out, r_in]}]
    for spec in layers:
        layer, method, rank = net.get_submodule(spec["name"]), spec["method"], spec["rank"]
        expected = nn.Linear if method == "svd" else nn.Conv2d
        if not isinstance(layer, expected):  # a fake-quantized Linear is a Linear
            raise ValueError(f"{spec['name']} is a {type(layer).__name__}; method {method!r} replaces "
                             f"{expected.__name__} layers")
        if method == "svd":
            new = (LowRankLinear.from_linear(layer, rank) if initialize else
                   LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None))
        else:
            kind = {"tucker2": TuckerConv2d, "cp": CPConv2d}[method]
            new = kind.from_conv(layer, rank) if initialize else kind(layer, rank)
        replace_module(net, spec["name"], new)
    return net


def _channel_prune(net: nn.Module, layers: Mapping[str, Mapping[str, Sequence[int]]]) -> nn.Module:
    # layers: {module name: {"out": kept indices, "in": kept indices}} (lightning_micro.core.channels)
    return remove_channels(net, layers)


def _layer_drop(net: nn.Module, blocks: Sequence[str], shortcuts: Mapping[str, str] | None = None) -> nn.Module:
    # blocks: names of residual blocks replaced by nn.Identity, or by their shortcut submodule for those in
    # shortcuts (lightning_micro.core.block_removal)
    return remove_blocks(net, blocks, shortcuts)


TRANSFORMS: dict[str, Callable[..., nn.Module]] = {
    "weight_fake_quant": _weight_fake_quant,  # low-bit weights trained with a straight-through estimator
    "weight_low_bit": _weight_low_bit,  # ...and stored as integer codes, run as decoded float weights
    "int8_qat_prepare": _int8_qat_prepare,  # torch.ao FX: fake-quantized weights and activations
    "int8_convert": _int8_convert,  # torch.ao FX: the integer network
    "tt_swap": _tt_swap,  # Linear -> TTLinear (TT-SVD of the trained weight)
    "low_rank_swap": _low_rank_swap,  # Linear -> SVD pair, Conv2d -> Tucker-2 or CP chain
    "channel_prune": _channel_prune,  # channels removed: a thinner dense network
    "layer_drop": _layer_drop,  # residual blocks removed: a shallower network
}

# Transforms that keep parameters but slice them: ``function(net, **args) -> {tensor name: [(dim, kept indices)]}``
# on the network before the transform, so that an optimizer's state (momentum, Adam moments) follows the
# parameters instead of starting over.
PARAMETER_SLICES: dict[str, Callable[..., dict[str, list[tuple[int, list[int]]]]]] = {
    "channel_prune": lambda net, layers: tensor_slices(net, layers),
}

# Transforms whose function computes initial values (a decomposition) take ``initialize``: a replay passes
# ``initialize=False`` and gets the structure only, since the saved weights replace every value right after.
STRUCTURE_ONLY_ARG = "initialize"
COMPUTES_VALUES = {"tt_swap", "low_rank_swap"}


def apply(net: nn.Module, record: Record, transform: str, **args: Any) -> nn.Module:
    """Apply one registered transform to ``net``, append it to ``record`` and return the new network."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; registered: {sorted(TRANSFORMS)}")
    args = json.loads(json.dumps(args))  # plain JSON from here on, so saved and live records compare equal
    net = TRANSFORMS[transform](net, **args)
    record.append({"transform": transform, "args": args})
    return net


def rebuild(net: nn.Module, record: Record, entries: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Apply saved ``entries`` to ``net`` for the structure they give (weights are loaded next, so no transform
    computes initial values), append them to ``record`` and return the result."""
    for entry in entries:
        name = entry["transform"]
        if name not in TRANSFORMS:
            raise ValueError(f"the record names transform {name!r}, which this version does not know "
                             f"(known: {sorted(TRANSFORMS)})")
        extra = {STRUCTURE_ONLY_ARG: False} if name in COMPUTES_VALUES else {}
        net = TRANSFORMS[name](net, **entry["args"], **extra)
        record.append({"transform": name, "args": json.loads(json.dumps(entry["args"]))})
    return net


def replay(net: nn.Module, record: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Apply the transforms of ``record`` in order to a freshly built ``net`` (structure only: the caller loads
    the saved weights into the result) and return it."""
    return rebuild(net, [], record)


def remaining(applied: Sequence[Mapping[str, Any]], saved: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The transforms of ``saved`` not yet applied, given that ``applied`` were (which must start ``saved``).

    Raises:
        ValueError: ``applied`` is not a prefix of ``saved``: the network was transformed differently from the
            one whose weights are being loaded.
    """
    applied, saved = [dict(e) for e in applied], [dict(e) for e in saved]
    if saved[: len(applied)] != applied:
        raise ValueError(f"the saved weights come from a network transformed by {saved}, but this network was "
                         f"transformed by {applied}; rebuild it with the configuration that saved them")
    return saved[len(applied):]
