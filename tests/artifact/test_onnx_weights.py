"""Compact weights in the ONNX file: pruned fp32 and low-bit weights are rebuilt exactly by operators ONNX Runtime
folds when it builds the session, and the file is about as small as the artifact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lightning_micro.artifact.onnx import OnnxRuntimeNet, session_options, write_onnx
from lightning_micro.artifact.onnx_weights import CONTINUE, WIDE_CONTINUE, gap_entries, scale_block
from lightning_micro.core.quantizers import FakeQuantLinear, WeightQuantSpec, to_low_bit
from lightning_micro.models import LeNet300

DECODING_OPS = {"ScatterElements", "CumSum", "BitShift", "BitwiseAnd", "Gather", "Where", "ConstantOfShape"}


def positions_back(entries: np.ndarray, cont: int) -> np.ndarray:
    """What the graph computes from the gap entries: the position of each real entry."""
    step = np.where(entries == cont, cont, entries.astype(np.int64) + 1)
    return (np.cumsum(step) - 1)[entries != cont]


@pytest.mark.parametrize("cont", [CONTINUE, WIDE_CONTINUE])
@pytest.mark.parametrize("positions", [[], [0], [14], [15], [16], [0, 1, 2], [3, 40, 41, 500, 999],
                                       list(range(0, 1000, 29)), [254, 255, 256, 2000]])
def test_gap_entries_give_the_positions_back(positions, cont):
    entries = gap_entries(np.array(positions, np.int64), cont)
    assert entries.max(initial=0) <= cont
    assert positions_back(entries, cont).tolist() == positions


def test_a_scale_is_shared_along_leading_axes_only():
    assert scale_block((300, 784), (300, 1)) == 784
    assert scale_block((300, 784), (1, 1)) == 300 * 784
    assert scale_block((4, 3, 5, 2), (4, 3, 1, 1)) == 10
    assert scale_block((300, 784), (1, 784)) is None


def pruned_lenet(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    net = LeNet300([1, 28, 28]).eval()
    with torch.no_grad():
        for layer in (net.fc1, net.fc2, net.fc3):
            layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    return net


def low_bit(net: nn.Module, bits: int) -> nn.Module:
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(net, name)
        fake = FakeQuantLinear(layer.in_features, layer.out_features)
        fake.load_state_dict(layer.state_dict())
        setattr(net, name, to_low_bit(fake, WeightQuantSpec(bits=bits), nn.Linear))
    return net.eval()


def folded_ops(path) -> set[str]:
    with_optimized = path.with_name("optimized.onnx")
    ort.InferenceSession(str(path), session_options(1, with_optimized), providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(str(with_optimized)).graph.node}


@pytest.mark.parametrize(("name", "sparsity", "bits", "max_bytes"), [
    ("fp32, 95% zeros", 0.95, None, 0.08),  # 5% of the weights at ~5 bytes each, of 4 bytes dense
    ("4-bit, dense", 0.0, 4, 0.14),  # half a byte of 4, and the scales
    ("4-bit, 90% zeros", 0.9, 4, 0.05),
    ("4-bit, 99% zeros", 0.99, 4, 0.02),  # gaps a byte each; biases, scales and the graph are most of it
])
def test_compact_weights_rebuild_the_exact_tensor_and_fold_away(tmp_path, name, sparsity, bits, max_bytes):
    net = pruned_lenet(sparsity)
    if bits is not None:
        net = low_bit(net, bits)
    dense_path, path = tmp_path / "dense.onnx", tmp_path / "model.onnx"
    write_onnx(LeNet300([1, 28, 28]).eval(), [1, 28, 28], dense_path)
    size = write_onnx(net, [1, 28, 28], path)
    assert size < max_bytes * dense_path.stat().st_size, f"{name}: {size} bytes"
    stored = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert not {"fc1.weight", "fc2.weight"} & stored  # rebuilt in the graph, not stored dense
    assert not DECODING_OPS & folded_ops(path)  # ONNX Runtime folded the rebuilding into constants
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(OnnxRuntimeNet(path)(x), net(x), rtol=1e-5, atol=1e-5)


def test_the_rebuilt_weights_equal_the_layers_bit_for_bit(tmp_path):
    net = low_bit(pruned_lenet(0.9), 4)
    path = tmp_path / "model.onnx"
    write_onnx(net, [1, 28, 28], path)
    model = onnx.load(str(path))
    model.graph.output.extend([onnx.helper.make_tensor_value_info("fc1.weight", onnx.TensorProto.FLOAT, None)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the decoding itself
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rebuilt = session.run(["fc1.weight"], {"input": np.zeros((1, 1, 28, 28), np.float32)})[0]
    assert np.array_equal(rebuilt, net.fc1.weight.numpy())


def test_dense_float_weights_stay_as_they_are(tmp_path):
    path = tmp_path / "model.onnx"
    write_onnx(LeNet300([1, 28, 28]).eval(), [1, 28, 28], path)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    assert weights["fc1.weight"].shape == (300, 784)


def test_a_low_bit_tt_layers_cores_are_stored_as_levels(tmp_path):
    from lightning_micro.core.quantized_tt import to_low_bit_tt
    from lightning_micro.core.tensor_train import TTLinear

    torch.manual_seed(0)
    net = LeNet300([1, 28, 28]).eval()
    net.fc1 = to_low_bit_tt(TTLinear.from_linear(net.fc1, ranks=8, in_factors=[7, 4, 4, 7],
                                                 out_factors=[4, 5, 5, 3]), WeightQuantSpec(bits=4)).eval()
    path = tmp_path / "model.onnx"
    write_onnx(net, [1, 28, 28], path)
    floats = {t.name: numpy_helper.to_array(t).size for t in onnx.load(str(path)).graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and not t.name.startswith(("fc2.", "fc3."))}  # dense ones
    # no fp32 copy of a core (nor a reshaped one, as the exporter's optimizer folds them): biases and scales only
    assert max(floats.values()) <= 300, {name: size for name, size in floats.items() if size > 300}
    assert not DECODING_OPS & folded_ops(path)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(OnnxRuntimeNet(path)(x), net(x), rtol=1e-5, atol=1e-5)
