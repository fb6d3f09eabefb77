"""ONNX export of an artifact, and the network run by ONNX Runtime.

The artifact (``model.safetensors``) stays the source of truth; the ONNX file is derived from it, so any artifact
can be converted later: :func:`export_onnx` rebuilds the network with
:func:`~lightning_micro.artifact.format.load_compressed` (no code from the file runs) and traces what it computes:

- float networks (dense, pruned weights with their zeros, low-rank and TT layers as the contractions their
  forwards run, low-bit weights decoded to the float values the layer multiplies by, PT2E int8 networks as
  QuantizeLinear/DequantizeLinear pairs) go through PyTorch's ``torch.export``-based exporter;
- torch.ao's integer modules (the FX int8 backend) keep their weights in packed parameters that ``torch.export``
  cannot read, so they go through the TorchScript exporter, which writes the same QDQ form: each integer layer as
  DequantizeLinear(int8 weight) -> Conv/Gemm -> QuantizeLinear. ONNX Runtime's CPU provider fuses these into
  its integer kernels (QLinearConv, QGemm), which :func:`integer_kernels` lists from the optimized graph.

Pruned and low-bit weights are stored compactly and rebuilt by standard operators that ONNX Runtime folds when it
builds the session (:mod:`lightning_micro.artifact.onnx_weights`), so the file is about as small as the artifact.

The batch axis is dynamic (input ``input``, output ``logits``). :class:`OnnxRuntimeNet` wraps an inference session
as a module, so that the report times it beside the PyTorch networks with the same benchmark.

Example:
    >>> # skipped in the doctests: it needs a finished run, and tracing takes seconds (tests/artifact/test_onnx.py)
    >>> path = export_onnx("logs/runs/2026-11-29_07-00-00")  # doctest: +SKIP
    >>> net = OnnxRuntimeNet(path)  # doctest: +SKIP
    >>> net(torch.zeros(8, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([8, 10])
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from lightning_micro.artifact.format import ARTIFACT_NAME, ArtifactError, load_compressed, read_metadata
from lightning_micro.artifact.onnx_weights import compact_weights
from lightning_micro.artifact.trust import Trusted, UntrustedSpecError
from lightning_micro.core import int8_pt2e
from lightning_micro.core.sparse_kernels import SparseLinear, remove_kernels

FORMATS = ("onnx",)
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
ONNX_NAME = "model.onnx"  # beside the artifact in a run's directory (report.onnx=true)


class OnnxExportError(ValueError):
    """Why an export cannot be made: one message naming the argument or file and what is allowed."""


def resolve_artifact(source: str | os.PathLike) -> Path:
    """The artifact a run directory holds, or ``source`` itself when it is a file."""
    path = Path(source)
    if path.is_dir():
        artifact = path / ARTIFACT_NAME
        if not artifact.is_file():
            raise OnnxExportError(f"{path} holds no {ARTIFACT_NAME}: give a finished run's directory or an artifact "
                                  "file")
        return artifact
    if not path.is_file():
        raise OnnxExportError(f"{path} does not exist: give a finished run's directory or an artifact file")
    return path


def uses_packed_int8(net: nn.Module) -> bool:
    """Whether ``net`` holds torch.ao integer modules (weights in packed parameters, the FX int8 backend)."""
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
               or any(isinstance(v, torch.ScriptObject) for v in vars(m).values()) for m in net.modules())


def is_pt2e(net: nn.Module) -> bool:
    """Whether ``net`` is a PT2E int8 network (the ``pt2e`` backend of QAT)."""
    return isinstance(net, int8_pt2e.ExportedNet)


def int8_weights_to_uint8(model) -> None:
    """Store every int8 weight that a DequantizeLinear reads as uint8 (codes + 128, zero points + 128): the same
    values, but ONNX Runtime then runs its u8u8 integer kernels instead of u8s8.

    PT2E quantizes activations to the full uint8 range [0, 255]. ONNX Runtime's u8s8 kernels on x86 CPUs without
    VNNI (AVX2, AVX-512 without VNNI) add pairs of uint8 x int8 products in int16, which saturates above 32,767
    (255 x 127 x 2 = 64,770); on this project's AVX2 machine that moved a LeNet-300-100's logits by up to 1.5 and
    changed 0.6% of its predictions. The u8u8 kernels do not saturate. torch.ao FX's activations use 7 bits
    (``reduce_range``), which is why its networks need none of this."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    shifted: set[str] = set()

    def shift(name: str, values) -> None:
        if name not in shifted:
            initializers[name].CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8),
                                                                name))
            shifted.add(name)

    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        codes = numpy_helper.to_array(initializers[node.input[0]])
        if codes.dtype != np.int8:
            continue
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zero_point is None:  # omitted: 0 of the codes' type, one per scale
            scale = numpy_helper.to_array(initializers[node.input[1]])
            zero_point = f"{node.input[0]}_zero_point_uint8"
            model.graph.initializer.append(numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), zero_point))
            initializers[zero_point] = model.graph.initializer[-1]
            shifted.add(zero_point)
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = zero_point
        shift(node.input[0], codes)
        shift(zero_point, numpy_helper.to_array(initializers[zero_point]))
    for info in [*model.graph.value_info, *model.graph.input]:  # the types the exporter recorded for them
        if info.name in shifted:
            info.type.tensor_type.elem_type = onnx.TensorProto.UINT8


def for_export(net: nn.Module) -> nn.Module:
    """The form of ``net`` the exporter translates: a PT2E int8 network with its activations' scales and zero points
    as literals in the graph (the artifact keeps them as buffers; ``torch.onnx`` turns literal ones into
    QuantizeLinear/DequantizeLinear attributes); torch.ao's quantized dropout (an identity in inference, which no
    ONNX opset has: timm's networks keep theirs, as modules or ``F.dropout`` calls) as an identity; layers on
    sparse kernels as plain ``Linear`` layers (ONNX has no CSR product); each on a copy."""
    if is_pt2e(net):
        return int8_pt2e.with_literal_qparams(net)
    if any(isinstance(module, SparseLinear) for module in net.modules()):  # ONNX has no CSR matmul: dense layers
        net = remove_kernels(copy.deepcopy(net))
    from torch.ao.nn.quantized import Dropout as QuantizedDropout

    dropouts = [name for name, module in net.named_modules() if isinstance(module, QuantizedDropout)]
    calls = [node.name for node in net.graph.nodes if node.op == "call_function"
             and node.target in _DROPOUT_FUNCTIONS] if isinstance(net, torch.fx.GraphModule) else []
    if not dropouts and not calls:
        return net
    net = copy.deepcopy(net)
    for name in dropouts:
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, nn.Identity())
    if isinstance(net, torch.fx.GraphModule):
        for node in [n for n in net.graph.nodes if n.name in calls]:  # F.dropout in the forward (timm's GhostNet)
            node.replace_all_uses_with(node.args[0])
            net.graph.erase_node(node)
        net.recompile()
    return net


_DROPOUT_FUNCTIONS = (torch.nn.functional.dropout, torch.dropout)


def write_onnx(net: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, opset: int = OPSET) -> int:
    """Trace ``net`` (eval mode, CPU) on a batch of ``input_shape`` images, write it to ``path`` (a file that must
    not exist; it appears only complete) with a dynamic batch axis, check it, and return its size in bytes."""
    import onnx

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"refusing to overwrite the existing file {path}")
    packed = uses_packed_int8(net)
    net = for_export(net.cpu().eval())
    example = (torch.zeros(2, *input_shape),)  # batch 2: a batch of 1 could be specialized into the graph
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        with _exporter_quiet(), torch.no_grad(), _composite_attention():
            if packed:
                torch.onnx.export(net, example, str(partial), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            else:
                # The exporter's optimizer folds a low-bit TT layer's cores into reshaped copies, which no longer
                # match the codes they were decoded from (onnx_weights); ONNX Runtime folds them itself
                decoded = any(hasattr(module, "decoded_weights") for module in net.modules())
                program = torch.onnx.export(net, example, dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                            verbose=False, optimize=not decoded)
                program.save(str(partial), external_data=False)
        model = onnx.load(str(partial))
        if is_pt2e(net):
            int8_weights_to_uint8(model)
        compact_weights(model, net)  # pruned and low-bit weights about as small as in the artifact
        onnx.save(model, str(partial))
        onnx.checker.check_model(str(partial), full_check=True)
        partial.rename(path)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError, onnx.checker.ValidationError) as err:
        # what the exporter cannot translate (the TorchScript exporter on torch.ao's int8 attention, say)
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise OnnxExportError(f"torch.onnx cannot export {type(net).__name__}: {first[:300]}") from err
    finally:
        partial.unlink(missing_ok=True)
    return path.stat().st_size


@contextlib.contextmanager
def _composite_attention():
    # torch's TransformerEncoderLayer runs one fused kernel in inference (aten::_transformer_encoder_layer_fwd),
    # which no ONNX opset has; with the fast path off it runs as the attention and linear ops it is made of
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _exporter_quiet():
    # Both exporters print progress lines and warn about the TorchScript exporter's deprecation (it is the only one
    # that reads torch.ao's packed weights; see the module docstring). The export is checked instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def artifact_input_shape(artifact: str | os.PathLike) -> list[int] | None:
    """The image shape ``[C, H, W]`` recorded in an artifact's network spec, if it names one."""
    spec = read_metadata(artifact)["net"]
    shape = spec.get("input_shape")
    return [int(v) for v in shape] if isinstance(shape, list | tuple) else None


def export_onnx(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    fmt: str = "onnx",
    input_shape: Sequence[int] | None = None,
    trusted: Iterable[Trusted] = (),
    opset: int = OPSET,
) -> Path:
    """Write the ONNX model of an artifact (or of a run directory's ``model.safetensors``) and return its path.

    Args:
        source: a finished run's directory or an artifact file.
        out: the ONNX file to create (default: beside the artifact, ``model.onnx``); never overwritten.
        fmt: the output format; ``onnx`` is the one there is.
        input_shape: ``[C, H, W]`` of one image (default: the ``input_shape`` the artifact's spec records).
        trusted: classes the artifact may name beyond the zoo (see
            :func:`~lightning_micro.artifact.format.load_compressed`).
        opset: the ONNX opset to write.

    Raises:
        OnnxExportError: an unknown format, a missing or unreadable artifact, no input shape, an existing output.
    """
    if fmt not in FORMATS:
        raise OnnxExportError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    artifact = resolve_artifact(source)
    try:
        shape = list(input_shape) if input_shape is not None else artifact_input_shape(artifact)
        net = load_compressed(artifact, trusted, sparse_kernels="never")
    except (ArtifactError, UntrustedSpecError) as err:
        raise OnnxExportError(str(err)) from err
    if not shape:
        raise OnnxExportError(f"{artifact}: its network spec records no input_shape; pass one (--input-shape C,H,W)")
    target = Path(out) if out is not None else artifact.with_suffix(".onnx")  # model.onnx in a run
    if target.exists():
        raise OnnxExportError(f"{target} exists; nothing was written (choose another --output)")
    write_onnx(net, shape, target, opset)
    return target


def session_options(threads: int = 1, optimized_path: str | os.PathLike | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads, one inter-op, all graph optimizations (the QDQ
    fusion into integer kernels among them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


class OnnxRuntimeNet(nn.Module):
    """An ONNX model run by ONNX Runtime's CPU provider, called like the network it came from (a float tensor
    batch in, logits out), so it can be timed and compared beside PyTorch networks."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits)

    def timed_call(self, x: torch.Tensor):
        """What a deployment runs per batch, for timing: ``session.run`` on ``x`` already as a NumPy array (the
        conversion from and to torch tensors that :meth:`forward` adds is left out)."""
        feed = {INPUT_NAME: x.detach().cpu().float().numpy()}
        return lambda: self.session.run([OUTPUT_NAME], feed)


def integer_kernels(path: str | os.PathLike) -> list[str]:
    """The integer operators (QLinearConv, QGemm, MatMulInteger, ...) in ONNX Runtime's optimized graph of the
    model at ``path``, sorted: what its CPU provider actually runs as integer arithmetic."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(path), session_options(1, optimized), providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    return sorted({node.op_type for node in graph.node
                   if node.op_type.startswith(("QLinear", "QGemm", "QAttention")) or "Integer" in node.op_type})


def compare_outputs(net: nn.Module, onnx_net: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Outputs of ``net`` and ``onnx_net`` on the same inputs: ``max_abs_diff`` of the logits and
    ``argmax_agreement``, the fraction of inputs whose predicted class is the same (``count`` inputs)."""
    net.eval()
    worst, same, count = 0.0, 0, 0
    with torch.no_grad():
        for x in batches:
            a, b = net(x).float(), onnx_net(x).float()
            worst = max(worst, float((a - b).abs().max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
            count += x.shape[0]
    return {"max_abs_diff": worst, "argmax_agreement": same / max(count, 1), "count": count}
