"""Compressed weights inside an ONNX file: pruned and low-bit weights stored about as small as in the artifact.

torch's exporter writes every weight as a dense fp32 initializer, so the ONNX file of a pruned 4-bit network is as
large as the dense network's (51x the artifact for Deep Compression's LeNet-300-100). :func:`compact_weights`
rewrites such initializers as a few small ones plus standard ONNX operators (opset 18) that rebuild the exact
fp32 tensor. They depend on initializers alone, so ONNX Runtime folds them into the dense tensor once, when the
session is built (its default graph optimizations; checked in the tests by the optimized graph, which keeps none
of them): inference runs the same kernels as before, on the same values.

Two encodings, each used where it is smaller than the tensor's fp32 bytes (and by at least 10%):

- **gaps**: the positions of the non-zero entries as run lengths of zeros, four bits each (two per byte; the value
  15 continues a run longer than 14), and the non-zero values: fp32, or for low-bit layers their integer levels,
  four bits each (or one byte when they span more than 16 levels) with the layer's scales. Rebuilt with
  ``BitShift``/``BitwiseAnd`` (unpacking), ``CumSum`` (positions), ``Gather``/``Where`` and ``ScatterElements``.
- **levels**: a low-bit tensor that is not sparse, as its integer levels packed four bits each (or a byte each),
  times its scales: ``(level + lowest) * scale``, as the layer's own decoding computes it.

Low-bit tensors are found by value: a module with buffers ``<name>_codes``, ``<name>_scale`` and
``<name>_zero_point`` beside the decoded float ``<name>`` (:func:`lightning_micro.core.quantizers.to_low_bit`,
:class:`lightning_micro.core.quantized_tt.LowBitTTLinear`) gives the codes of the initializer equal to that float
tensor.

Example:
    >>> import onnx
    >>> from onnx import helper, numpy_helper
    >>> weight = np.zeros((30, 40), np.float32)
    >>> weight[::7, ::3] = 1.5
    >>> graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
    ...                           [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [30, 40])],
    ...                           [numpy_helper.from_array(weight, "w")])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    >>> compact_weights(model)
    {'w': 'gaps'}
    >>> import onnxruntime as ort
    >>> session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> bool((session.run(None, {})[0] == weight).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

GAIN = 0.9  # an encoding is used only when it takes at most this share of the dense bytes
CONTINUE = 15  # a gap nibble that skips 15 zeros and stores no value
WIDE_CONTINUE = 255  # the same for gaps a byte each (sparser tensors: fewer continues)


@dataclass(frozen=True)
class Levels:
    """A low-bit tensor as integer levels ``q`` (``codes - zero_point``) and the scales it is multiplied by."""

    decoded: np.ndarray
    levels: np.ndarray  # int64, the tensor's shape
    scale: np.ndarray  # float32, broadcasts against it


def low_bit_tensors(net: nn.Module) -> list[Levels]:
    """Every decoded low-bit tensor of ``net`` with its levels and scales (see the module docstring)."""
    found = []
    for module in net.modules():
        for name, codes in module._buffers.items():
            base = name.removesuffix("_codes")
            if base == name or codes is None:
                continue
            scale, zero = module._buffers.get(f"{base}_scale"), module._buffers.get(f"{base}_zero_point")
            decoded = getattr(module, base, None)
            if scale is None or zero is None or not isinstance(decoded, torch.Tensor):
                continue
            levels = codes.to(torch.int64) - zero.to(torch.int64)
            found.append(Levels(decoded.detach().cpu().numpy(), levels.cpu().numpy(),
                                scale.detach().cpu().float().numpy()))
    return found


def compact_weights(model, net: nn.Module | None = None) -> dict[str, str]:
    """Rewrite ``model``'s (an ``onnx.ModelProto``, in place) fp32 initializers that are sparse or low-bit (the
    levels of ``net``'s low-bit layers, when given) as the smaller of the encodings of the module docstring; return
    the encoding used per initializer name."""
    from onnx import numpy_helper

    low_bit = low_bit_tensors(net) if net is not None else []
    graph = model.graph
    used: dict[str, str] = {}
    kept, nodes = [], []
    for index, tensor in enumerate(list(graph.initializer)):
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32 or values.size < 64:
            kept.append(tensor)
            continue
        match = next((lb for lb in low_bit if lb.decoded.shape == values.shape
                      and np.array_equal(lb.decoded, values)), None)
        encoding = _smallest(values, match)
        if encoding is None:
            kept.append(tensor)
            continue
        kind, parts, build = encoding
        prefix = f"{SHARED}{index}"
        kept.extend(numpy_helper.from_array(array, f"{prefix}_{part}") for part, array in parts.items())
        nodes.extend(_short_names(build(prefix, tensor.name), prefix, tensor.name))
        used[tensor.name] = kind
    if not used:
        return used
    kept.extend(numpy_helper.from_array(array, SHARED + name) for name, array in shared_constants().items())
    for node in graph.node:  # the exporter's debugging notes (its stack traces, with this machine's paths)
        del node.metadata_props[:]
    del graph.value_info[:]  # intermediate shapes: ONNX Runtime infers them again
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in used]  # an initializer listed as an input (older exports)
    del graph.input[:]
    graph.input.extend(inputs)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old])  # the rebuilt tensors come first: they depend on initializers alone
    return used


def _short_names(nodes: list, prefix: str, out: str) -> list:
    """``nodes`` with each intermediate tensor renamed ``<prefix>.<n>``: the file stores every name once per use."""
    names: dict[str, str] = {}
    for node in nodes:
        for i, name in enumerate(node.output):
            if name != out:
                names[name] = f"{prefix}.{len(names)}"
                node.output[i] = names[name]
        for i, name in enumerate(node.input):
            node.input[i] = names.get(name, name)
    return nodes


def _smallest(values: np.ndarray, low_bit: Levels | None):
    dense_bytes = values.nbytes
    options = []
    flat = values.reshape(-1)
    positions = np.flatnonzero(flat)
    if low_bit is not None:
        levels = low_bit.levels.reshape(-1)
        lowest = int(levels.min())
        options.append(_levels(values.shape, levels - lowest, lowest, low_bit.scale))
        block = scale_block(values.shape, low_bit.scale.shape)
        if block is not None:
            options.append(_gaps(values.shape, positions, levels[positions], scale=low_bit.scale, block=block))
    elif positions.size < flat.size:
        options.append(_gaps(values.shape, positions, flat[positions]))
    options = [option for option in options if option is not None]
    if not options:
        return None
    best = min(options, key=lambda option: sum(a.nbytes for a in option[1].values()))
    return best if sum(a.nbytes for a in best[1].values()) <= GAIN * dense_bytes else None


def pack_nibbles(values: np.ndarray, pad: int = 0) -> np.ndarray:
    """Values in [0, 15], two per byte (the first in the high four bits), padded with ``pad`` to an even count."""
    values = values.astype(np.uint8)
    if values.size % 2:
        values = np.append(values, np.uint8(pad))
    return (values[0::2] << 4) | values[1::2]


def gap_entries(positions: np.ndarray, cont: int = CONTINUE) -> np.ndarray:
    """The gap entries of sorted ``positions``: per position the zeros before it (below ``cont``), each run of
    ``cont`` more first as a ``cont`` entry (:data:`CONTINUE` for nibbles, :data:`WIDE_CONTINUE` for bytes)."""
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    continues = gaps // cont
    entries = np.full(int(continues.sum()) + gaps.size, cont, np.uint8)
    ends = np.cumsum(continues + 1) - 1  # each position's own entry comes after its continues
    entries[ends] = gaps - cont * continues
    return entries


def _gap_stream(positions: np.ndarray) -> tuple[np.ndarray, bool]:
    """The smaller of the nibble and byte gap streams, and whether it is the byte one."""
    nibbles = pack_nibbles(gap_entries(positions), pad=CONTINUE)
    wide = gap_entries(positions, WIDE_CONTINUE)
    return (wide, True) if wide.nbytes < nibbles.nbytes else (nibbles, False)


def scale_block(shape, scale_shape) -> int | None:
    """How many consecutive entries (in C order) share one scale: the scale must vary along leading axes only
    (per tensor, or per output channel); None otherwise."""
    scale_shape = (1,) * (len(shape) - len(scale_shape)) + tuple(scale_shape)
    lead = 0
    while lead < len(shape) and scale_shape[lead] == shape[lead] and shape[lead] != 1:
        lead += 1
    if any(size != 1 for size in scale_shape[lead:]):
        return None
    return int(np.prod(shape[lead:]))


def _gaps(shape, positions: np.ndarray, stored: np.ndarray, scale: np.ndarray | None = None, block: int = 1):
    stream, wide = _gap_stream(positions)
    parts = {"gaps": stream}
    count = int(positions.size)
    if scale is None:
        parts["values"] = stored.astype(np.float32)
        nibbles = False
    else:
        lowest = int(stored.min()) if count else 0
        span = (int(stored.max()) - lowest) if count else 0
        if span > 255:
            return None
        nibbles = span <= 15
        shifted = (stored - lowest).astype(np.uint8)
        parts["values"] = pack_nibbles(shifted) if nibbles else shifted
        parts["lowest"] = np.array(lowest, np.float32)
        parts["scale"] = scale.astype(np.float32).reshape(-1)
        parts["block"] = np.array(block, np.int64)
    parts.update(_constants(shape))

    def build(prefix: str, out: str) -> list:
        from onnx import TensorProto, helper

        p = f"{prefix}_"
        nodes = [] if wide else _unpack(p + "gaps", p + "entries8", p)
        cont = SHARED + ("c255" if wide else "fifteen")
        nodes += [
            helper.make_node("Cast", [p + "gaps" if wide else p + "entries8"], [p + "entries"], to=TensorProto.INT64),
            helper.make_node("Equal", [p + "entries", cont], [p + "continues"]),
            helper.make_node("Not", [p + "continues"], [p + "real"]),
            helper.make_node("Add", [p + "entries", SHARED + "one"], [p + "step1"]),
            helper.make_node("Where", [p + "continues", cont, p + "step1"], [p + "step"]),
            helper.make_node("CumSum", [p + "step", SHARED + "zero"], [p + "end"]),
            helper.make_node("Sub", [p + "end", SHARED + "one"], [p + "position"]),
            helper.make_node("Cast", [p + "real"], [p + "real_int"], to=TensorProto.INT64),
            helper.make_node("CumSum", [p + "real_int", SHARED + "zero"], [p + "taken"]),
            helper.make_node("Sub", [p + "taken", SHARED + "one"], [p + "value_index"]),
            # a continue entry (one past the end, for the padding one) writes its zero into a spare last slot
            helper.make_node("Where", [p + "real", p + "position", p + "size0"], [p + "target"]),
            helper.make_node("Where", [p + "real", p + "position", SHARED + "zero"], [p + "position0"]),
        ]
        if scale is None:
            values = p + "values"
        else:
            source = p + "values"
            if nibbles:
                nodes += _unpack(source, p + "levels8", p)
                source = p + "levels8"
            nodes += [
                helper.make_node("Cast", [source], [p + "levels_f"], to=TensorProto.FLOAT),
                helper.make_node("Add", [p + "levels_f", p + "lowest"], [p + "levels"]),
            ]
            values = p + "levels"
        nodes += [
            helper.make_node("Gather", [values, p + "value_index"], [p + "entry_value"], axis=0),
            helper.make_node("Where", [p + "real", p + "entry_value", SHARED + "zero_f"], [p + "written"]),
        ]
        if scale is not None:  # a level times the scale of its own position
            nodes += [helper.make_node("Div", [p + "position0", p + "block"], [p + "scale_index"]),
                      helper.make_node("Gather", [p + "scale", p + "scale_index"], [p + "entry_scale"], axis=0),
                      helper.make_node("Mul", [p + "written", p + "entry_scale"], [p + "scaled"])]
            written = p + "scaled"
        else:
            written = p + "written"
        nodes += [
            helper.make_node("ConstantOfShape", [p + "spare_size"], [p + "zeros"],
                             value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
            helper.make_node("ScatterElements", [p + "zeros", p + "target", written], [p + "spare_flat"], axis=0),
            helper.make_node("Slice", [p + "spare_flat", SHARED + "zero1", p + "size"], [p + "flat"]),
            helper.make_node("Reshape", [p + "flat", p + "shape"], [out]),
        ]
        return nodes

    return "gaps", parts, build


def _levels(shape, levels: np.ndarray, lowest: int, scale: np.ndarray):
    span = int(levels.max()) if levels.size else 0
    if span > 255:
        return None
    nibbles = span <= 15
    parts = {"values": pack_nibbles(levels) if nibbles else levels.astype(np.uint8),
             "lowest": np.array(lowest, np.float32), "scale": scale.astype(np.float32), **_constants(shape)}

    def build(prefix: str, out: str) -> list:
        from onnx import TensorProto, helper

        p = f"{prefix}_"
        nodes, source = [], p + "values"
        if nibbles:
            nodes += _unpack(source, p + "levels8", p)
            nodes.append(helper.make_node("Slice", [p + "levels8", SHARED + "zero1", p + "size"], [p + "levels_n"]))
            source = p + "levels_n"
        return [*nodes,
                helper.make_node("Cast", [source], [p + "levels_f"], to=TensorProto.FLOAT),
                helper.make_node("Add", [p + "levels_f", p + "lowest"], [p + "levels"]),
                helper.make_node("Reshape", [p + "levels", p + "shape"], [p + "shaped"]),
                helper.make_node("Mul", [p + "shaped", p + "scale"], [out])]

    return "levels", parts, build


def _constants(shape) -> dict[str, np.ndarray]:
    size = int(np.prod(shape))
    return {"shape": np.array(shape, np.int64), "size": np.array([size], np.int64),
            "size0": np.array(size, np.int64), "spare_size": np.array([size + 1], np.int64)}


SHARED = "lm_"  # the prefix of the constants every rebuilt tensor shares (one copy in the file)


def shared_constants() -> dict[str, np.ndarray]:
    return {"zero": np.array(0, np.int64), "zero1": np.array([0], np.int64), "one": np.array(1, np.int64),
            "fifteen": np.array(CONTINUE, np.int64), "c255": np.array(WIDE_CONTINUE, np.int64),
            "zero_f": np.array(0.0, np.float32),
            "four": np.array(4, np.uint8), "mask": np.array(15, np.uint8), "axis": np.array([1], np.int64),
            "flat_shape": np.array([-1], np.int64)}


def _unpack(packed: str, out: str, p: str) -> list:
    """Nodes that turn bytes into their two four-bit values, high first (``out``: uint8, twice as long)."""
    from onnx import helper

    return [
        helper.make_node("BitShift", [packed, SHARED + "four"], [out + "_high"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", [packed, SHARED + "mask"], [out + "_low"]),
        helper.make_node("Unsqueeze", [out + "_high", SHARED + "axis"], [out + "_high2"]),
        helper.make_node("Unsqueeze", [out + "_low", SHARED + "axis"], [out + "_low2"]),
        helper.make_node("Concat", [out + "_high2", out + "_low2"], [out + "_pairs"], axis=1),
        helper.make_node("Reshape", [out + "_pairs", SHARED + "flat_shape"], [out]),
    ]
