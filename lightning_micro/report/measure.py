"""The compression report: measured counts, sizes, MACs and latencies of a trained network.

Pure torch; no Lightning. Every figure is measured, none estimated:

- ``params/*`` and ``sparsity/*`` count the network's parameters (zeros counted exactly), including weights
  that are not ``nn.Parameter``s in a deployed network: torch.ao's integer modules keep theirs packed, low-bit
  layers keep integer codes (see :func:`weight_tensors`).
- ``size/*`` are bytes of real files: the artifact, and the plain fp32 export of the same network class built
  fresh from its config (``size/dense_bytes``).
- ``macs/*`` come from ``torch.utils.flop_counter`` while the network runs one image (FLOPs / 2, matmul and
  convolution ops, and the integer ``quantized::linear`` / ``quantized::conv*`` ops, counted from their packed
  weights). ``macs/dense`` runs the freshly built dense network, ``macs/effective`` the artifact as reloaded: a
  layer on dense kernels executes every MAC, zeros included; one on a sparse (CSR) kernel one per stored non-zero
  (``kernels/*`` say which layers run which kernel; the count is taken at batch 1, so on the batch-1 kernels).
- ``latency/*`` are medians of ``torch.utils.benchmark`` on the CPU with a fixed thread count, the dense
  network and the reloaded artifact measured in alternation in one process; ``latency/speedup_*`` is their ratio.
  With ``report.onnx=true`` the artifact's ONNX model and the dense network's, run by ONNX Runtime with the same
  thread count, are timed in the same rounds (``latency/onnx_*``), and ``size/onnx_bytes`` is the artifact's ONNX
  file's size. ``runtime/fastest_b*`` names the runtime in which the compressed network is fastest.

Techniques add their own fields (bits, ranks, removed layers) by giving their callback a method
``report_fields(net) -> dict[str, int | float | str]`` (declared on
``lightning_micro.callbacks.CompressionTechnique``); the run merges them
into the report.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_micro.core.sparse_kernels import flop_formulas as sparse_flop_formulas
from lightning_micro.core.sparse_kernels import import_benchmark, kernel_fields

ReportValue = int | float | str


@runtime_checkable
class DecodedWeights(Protocol):
    """A deployed layer whose weights are float buffers decoded from integer codes, not parameters (e.g.
    :class:`lightning_micro.core.quantized_tt.LowBitTTLinear`): ``decoded_weights`` names those buffers, and
    :func:`weight_tensors` reports each as ``<module>.<name>``."""

    decoded_weights: tuple[str, ...]


def weight_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """The network's learned tensors by name, as float values: its parameters, the weights of torch.ao's
    integer modules (packed, read through their ``weight()`` / ``bias()`` methods and dequantized) and the
    decoded weights of low-bit layers (a ``weight`` buffer beside the integer codes, or the buffers a
    :class:`DecodedWeights` layer names)."""
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in net.named_modules():
        prefix = f"{module_name}." if module_name else ""
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # torch.ao.nn.quantized modules
            tensors[prefix + "weight"] = weight().dequantize()
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            if bias is not None:
                tensors[prefix + "bias"] = bias.detach()
            continue
        for name, param in module._parameters.items():
            if param is not None:
                tensors[prefix + name] = param.detach()
        if "weight" in module._buffers and "weight" not in module._parameters and module._buffers["weight"] is not None:
            tensors[prefix + "weight"] = module._buffers["weight"]
        if isinstance(module, DecodedWeights):
            for name in module.decoded_weights:
                tensors[prefix + name] = module._buffers[name]
    return tensors


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """``params/total`` and ``params/nonzero`` over all learned tensors (:func:`weight_tensors`)."""
    tensors = weight_tensors(net).values()
    total = sum(t.numel() for t in tensors)
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
    return {"params/total": total, "params/nonzero": nonzero}


def sparsity(net: nn.Module) -> dict[str, float]:
    """``sparsity/global`` (zero fraction of all learned tensors) and ``sparsity/<name>`` for each weight
    matrix or kernel (tensors with two or more dimensions)."""
    counts = parameter_counts(net)
    fields = {"sparsity/global": 1.0 - counts["params/nonzero"] / max(counts["params/total"], 1)}
    for name, tensor in weight_tensors(net).items():
        if tensor.dim() >= 2:
            fields[f"sparsity/{name}"] = 1.0 - int(torch.count_nonzero(tensor)) / tensor.numel()
    return fields


def _quantized_op_flops(x, packed_params, *args, out_val=None, **kwargs) -> int:
    # Integer linear / convolution: each output element takes one MAC per weight of its output channel.
    weight = packed_params.unpack()[0]
    return 2 * out_val.numel() * weight[0].numel()


_quantized_op_flops._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass the packed weights


def _flop_formulas() -> dict[Any, Any]:
    ops = torch.ops.quantized
    names = ("linear", "linear_relu", "conv1d", "conv1d_relu", "conv2d", "conv2d_relu", "conv3d", "conv3d_relu")
    return {**{getattr(ops, name): _quantized_op_flops for name in names},
            **sparse_flop_formulas()}


_CONVOLUTION_OPS = ("convolution", "conv1d", "conv2d", "conv3d")


def count_macs(net: nn.Module, input_shape: Sequence[int], convolutions_only: bool = False) -> int:
    """Multiply-accumulates of one forward pass of one image, counted by running the network (all counted ops,
    or only convolutions). The network runs once before the counted pass, so work a layer does once and keeps
    (a TT layer's matrix rebuilt from its cores, while they do not change) is not counted as per-image work."""
    was_training = net.training
    net.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas())
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad():
            net(x)
            with counter:
                net(x)
    finally:
        net.train(was_training)
    if not convolutions_only:
        return counter.get_total_flops() // 2
    counts = counter.get_flop_counts().get("Global", {})
    return sum(flops for op, flops in counts.items()  # ops print as "aten.convolution", "quantized.conv2d_relu"
               if str(op).split(".")[1].startswith(_CONVOLUTION_OPS)) // 2


def measure_latency_ms(
    nets: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    num_threads: int = 1,
    min_run_time: float = 0.2,
    rounds: int = 3,
) -> dict[str, float]:
    """Median forward time in milliseconds of each network at ``batch_size``, measured in alternation.

    Each round measures every network once with ``torch.utils.benchmark`` (``blocked_autorange``); the result
    is the median over rounds of each measurement's median, so a noisy neighbour hurts all networks alike.
    A PyTorch network is timed as ``net(x)`` under ``torch.no_grad()``; a network with a ``timed_call(x)`` method
    (:class:`~lightning_micro.artifact.onnx.OnnxRuntimeNet`) as the call that method returns (for ONNX Runtime:
    ``session.run`` on a NumPy array, as a deployment calls it).
    """
    benchmark = import_benchmark()
    x = torch.randn(batch_size, *input_shape)
    samples: dict[str, list[float]] = {name: [] for name in nets}
    for net in nets.values():
        net.eval()
    calls = {name: net.timed_call(x) if isinstance(net, TimedCall) else _no_grad_call(net, x)
             for name, net in nets.items()}
    for _ in range(rounds):
        for name, call in calls.items():
            timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=num_threads)
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


@runtime_checkable
class TimedCall(Protocol):
    """A network that says how a deployment calls it: ``timed_call(x)`` returns the zero-argument call to time."""

    def timed_call(self, x: torch.Tensor) -> Any: ...


def _no_grad_call(net: nn.Module, x: torch.Tensor):
    def call():
        with torch.no_grad():
            return net(x)
    return call


# The runtimes the report times the artifact in, by the prefix of their fields (``latency/<prefix>ms_b*``).
RUNTIMES = {"": "PyTorch eager", "onnx_": "ONNX Runtime"}


def build_report(
    net: nn.Module,
    dense_net: nn.Module,
    input_shape: Sequence[int],
    artifact_path: str | os.PathLike,
    dense_path: str | os.PathLike,
    metrics: Mapping[str, float] | None = None,
    latency_batch_sizes: Sequence[int] = (1, 64),
    latency_threads: int = 1,
    latency_min_run_time: float = 0.2,
    onnx_net: nn.Module | None = None,
    onnx_dense_net: nn.Module | None = None,
) -> dict[str, ReportValue]:
    """All measured fields for ``net`` (the compressed network, as reloaded from ``artifact_path``) against
    ``dense_net`` (the same architecture, uncompressed; its fp32 export at ``dense_path``). With ``onnx_net`` (the
    artifact's ONNX model in ONNX Runtime, :class:`lightning_micro.artifact.onnx.OnnxRuntimeNet`), its file's bytes
    (``size/onnx_bytes``) and its latency, timed in the same rounds (``latency/onnx_ms_b*``;
    ``latency/onnx_vs_artifact_b*``: the PyTorch artifact's time over ONNX Runtime's;
    ``latency/onnx_vs_eager_dense_b*``: the dense network's PyTorch time over it). With ``onnx_dense_net`` (the
    dense network's ONNX model), that too (``latency/onnx_dense_ms_b*``, ``latency/onnx_speedup_b*``: compressed
    against dense, both in ONNX Runtime).
    ``runtime/fastest_b*`` names the runtime whose compressed form is fastest at that batch size and
    ``latency/fastest_speedup_b*`` its speed-up against the dense network in the same runtime."""
    report: dict[str, ReportValue] = {k: float(v) for k, v in (metrics or {}).items()}
    report.update(parameter_counts(net))
    report["params/dense_total"] = parameter_counts(dense_net)["params/total"]
    report.update(sparsity(net))
    report.update(kernel_fields(net))
    dense_bytes = Path(dense_path).stat().st_size
    artifact_bytes = Path(artifact_path).stat().st_size
    report.update({
        "size/dense_bytes": dense_bytes,
        "size/artifact_bytes": artifact_bytes,
        "size/ratio": dense_bytes / artifact_bytes,
        "macs/dense": count_macs(dense_net, input_shape),
        "macs/effective": count_macs(net, input_shape),
    })
    dense_conv = count_macs(dense_net, input_shape, convolutions_only=True)
    if dense_conv:
        report["macs/dense_conv"] = dense_conv
        report["macs/effective_conv"] = count_macs(net, input_shape, convolutions_only=True)
    if onnx_net is not None:
        report["size/onnx_bytes"] = Path(onnx_net.path).stat().st_size
    nets = {"net": net, "dense": dense_net}
    if onnx_net is not None:
        nets["onnx"] = onnx_net
    if onnx_dense_net is not None:
        nets["onnx_dense"] = onnx_dense_net
    for batch in latency_batch_sizes:
        times = measure_latency_ms(nets, input_shape, batch, latency_threads, latency_min_run_time)
        report[f"latency/ms_b{batch}"] = times["net"]
        report[f"latency/dense_ms_b{batch}"] = times["dense"]
        report[f"latency/speedup_b{batch}"] = times["dense"] / times["net"]
        if onnx_net is not None:
            report[f"latency/onnx_ms_b{batch}"] = times["onnx"]
            report[f"latency/onnx_vs_artifact_b{batch}"] = times["net"] / times["onnx"]
            report[f"latency/onnx_vs_eager_dense_b{batch}"] = times["dense"] / times["onnx"]
        if onnx_dense_net is not None:
            report[f"latency/onnx_dense_ms_b{batch}"] = times["onnx_dense"]
            report[f"latency/onnx_speedup_b{batch}"] = times["onnx_dense"] / times["onnx"]
        report.update(fastest_form(report, batch))
    report["latency/threads"] = latency_threads
    return report


def fastest_form(report: Mapping[str, Any], batch: int) -> dict[str, ReportValue]:
    """``runtime/fastest_b<batch>``: the runtime (:data:`RUNTIMES`) that runs the compressed network fastest at that
    batch size, among those whose dense network was timed too (a speed-up needs both), and
    ``latency/fastest_speedup_b<batch>``: its dense time over its compressed time, in that same runtime."""
    timed = {prefix: report[f"latency/{prefix}ms_b{batch}"] for prefix in RUNTIMES
             if f"latency/{prefix}ms_b{batch}" in report and f"latency/{prefix}dense_ms_b{batch}" in report}
    if not timed:
        return {}
    prefix = min(timed, key=timed.__getitem__)
    return {f"runtime/fastest_b{batch}": RUNTIMES[prefix],
            f"latency/fastest_speedup_b{batch}": report[f"latency/{prefix}dense_ms_b{batch}"] / timed[prefix]}


def headline(report: Mapping[str, Any]) -> str | None:
    """The run's last word: ``"13.7x smaller, 1.84x faster (batch 64, ONNX Runtime)"``, at the largest batch size
    measured, in the runtime fastest there, against the dense network in that runtime; or, when no form is faster
    than dense, that it is not and why (:func:`latency_note`)."""
    sizes = sorted(int(k.rsplit("_b", 1)[1]) for k in report if k.startswith("runtime/fastest_b"))
    if not sizes or "size/ratio" not in report:
        return None
    batch = sizes[-1]
    runtime, speedup = report[f"runtime/fastest_b{batch}"], report[f"latency/fastest_speedup_b{batch}"]
    smaller = f"{report['size/ratio']:.1f}x smaller"
    if speedup > 1.0:
        return f"{smaller}, {speedup:.2f}x faster (batch {batch}, {runtime})"
    dense, effective = report.get("macs/dense", 0), report.get("macs/effective", 0)
    why = latency_note(report) or (
        "a network this small spends its time on per-call overhead, not arithmetic" if effective < dense else
        f"it runs {effective / max(dense, 1):.2f}x the dense network's multiply-accumulates per image")
    return f"{smaller}, not faster: {speedup:.2f}x the dense speed at best (batch {batch}, {runtime}); {why}"


def write_report(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the report as JSON; an existing file is never overwritten."""
    path = Path(path)
    with path.open("x") as handle:  # "x": fail if it exists
        json.dump(dict(report), handle, indent=2, sort_keys=True)
        handle.write("\n")


def latency_note(report: Mapping[str, Any]) -> str | None:
    """One line on why batch 1 and batch 64 disagree, when the compressed network is slower than the dense one at
    batch 1 but not at the largest batch measured (None otherwise), in the fastest runtime where one is named."""
    sizes = sorted(int(k.rsplit("_b", 1)[1]) for k in report if k.startswith("latency/speedup_b"))
    named = all(f"latency/fastest_speedup_b{size}" in report for size in sizes)
    key = "latency/fastest_speedup_b{}" if named else "latency/speedup_b{}"
    small, large = report.get(key.format(1)), None
    if sizes and sizes[-1] > 1:
        large = report.get(key.format(sizes[-1]))
    if small is None or large is None or small >= 1.0 or large <= small:
        return None
    int8 = report.get("quant/activation_bits") == 8
    why = ("the int8 kernels pay a fixed cost per call (quantizing the input, requantizing every layer's output) "
           "that a network this small does not earn back" if int8 else
           "a network this small spends a batch-1 call on per-call overhead, not arithmetic")
    where = ""
    if named:
        first, last = report["runtime/fastest_b1"], report[f"runtime/fastest_b{sizes[-1]}"]
        where = f" ({first})" if first == last else f" ({first} at batch 1, {last} at {sizes[-1]})"
    return (f"Batch 1 is {small:.2f}x the dense speed, batch {sizes[-1]} {large:.2f}x{where}: {why}; the larger "
            "batch shows the kernels' throughput.")


def render_runtimes(report: Mapping[str, Any]):
    """The compressed and dense networks' latency in each runtime timed, as a ``rich`` table (None when only one
    runtime was timed): milliseconds per batch, the speed-up against dense in the same runtime and against dense
    PyTorch eager; the fastest form at each batch size is marked."""
    from rich.table import Table

    sizes = sorted(int(k.rsplit("_b", 1)[1]) for k in report if k.startswith("latency/dense_ms_b"))
    runtimes = [p for p in RUNTIMES if all(f"latency/{p}dense_ms_b{b}" in report for b in sizes)]
    if len(runtimes) < 2:
        return None
    table = Table(title="Latency by runtime (1 thread)")
    for column in ("runtime", "batch", "ms", "dense ms", "x dense", "x dense eager"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for prefix in runtimes:
        for b in sizes:
            ms, dense = report[f"latency/{prefix}ms_b{b}"], report[f"latency/{prefix}dense_ms_b{b}"]
            star = " *" if report.get(f"runtime/fastest_b{b}") == RUNTIMES[prefix] else ""
            table.add_row(RUNTIMES[prefix] + star, str(b), f"{ms:.4f}", f"{dense:.4f}", f"{dense / ms:.2f}",
                          f"{report[f'latency/dense_ms_b{b}'] / ms:.2f}")
    table.caption = ("* fastest at that batch size; x dense: against the dense network in the same runtime, "
                     "x dense eager: against it in PyTorch eager")
    return table


def render_table(report: Mapping[str, Any], title: str = "Compression report"):
    """The report as a ``rich`` table (imported lazily: only the run prints it)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify="right")
    for key in sorted(report):
        value = report[key]
        if isinstance(value, float):
            text = f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        table.add_row(key, text)
    return table
