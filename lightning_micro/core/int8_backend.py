"""The int8 backend: PyTorch's FX graph-mode quantization (``torch.ao.quantization``) for the x86 CPU kernels, or
torchao's PT2E flow (:mod:`lightning_micro.core.int8_pt2e`).

Everything this project asks of the integer backend goes through the functions here, which dispatch on the
backend (``prepare_qat``'s ``backend``) and afterwards on the prepared network's type:

- :func:`resolve_backend` turns the configured backend into the one that runs (``x86``, ``fbgemm`` or ``qnnpack``
  when torch.ao's FX flow imports, else ``pt2e``, saying so);
- :func:`prepare_qat` inserts fake quantization of weights and activations, fusing conv-bn(-relu) and
  linear-relu where the backend has fused kernels;
- :func:`set_fake_quant`, :func:`set_observers`, :func:`freeze_bn_stats` switch phases of training;
- :func:`convert` turns the trained, fake-quantized network into the integer network the CPU runs;
- :func:`quantized_tensor_parts` / :func:`quantized_tensor_from_parts` store a quantized tensor as plain
  tensors (int codes, scales, zero points) and back, for the artifact.

Why torch.ao FX stays the default (``bench/qat_backend.py``: ``experiment=qat_int8_lenet5``, MNIST, one
thread, batch 64): same accuracy (99.18% FX, 99.17% PT2E), but the FX converted network runs fused fbgemm/x86
int8 kernels eagerly (9.1 ms, fp32 14.5 ms), while the PT2E converted network, as the artifact loads, runs a
reference quantize/dequantize graph (19.8 ms). It is fast only once lowered with inductor
(:func:`int8_pt2e.compile_for_cpu`: 6.1 ms, but seconds of compile per batch size, and at batch 1 0.86 ms
against FX's 0.56). torch.ao.quantization is deprecated but ships with torch 2.14; where its FX flow is gone,
the torch.ao backends fall back to ``pt2e``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from lightning_micro.core import int8_pt2e

FX_BACKENDS = ("x86", "fbgemm", "qnnpack")  # torch.ao FX with that quantized engine
BACKENDS = (*FX_BACKENDS, "pt2e")
# Module types FX prepare quantizes with integer kernels (directly, or after fusion with a following BatchNorm
# and/or ReLU); the selection of a layer of any other type is refused before training.
INT8_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


@contextlib.contextmanager
def _quiet():
    # torch.ao warns on import and on every call that it is deprecated, and that observers ran on no data
    # (activation observers of layers not reached yet); the module docstring says why it is used anyway.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        yield


def fx_available() -> bool:
    """Whether torch.ao's FX quantization flow imports (it is deprecated and will leave torch)."""
    try:
        with _quiet():
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: str, per_channel: bool = True, symmetric: bool = True) -> None:
    """Raise ``ValueError`` naming ``backend`` when it is unknown or cannot take the weight scheme."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)} (x86, fbgemm, qnnpack: torch.ao FX with that "
                         f"engine; pt2e: torchao's PT2E flow), got {backend!r}")
    if backend == "pt2e" and not (per_channel and symmetric):
        raise ValueError("backend 'pt2e' quantizes weights per channel and symmetric (X86InductorQuantizer's "
                         f"configuration), got per_channel={per_channel}, symmetric={symmetric}")


def resolve_backend(backend: str) -> tuple[str, str | None]:
    """The backend that runs for the configured ``backend``, and why it differs (``None`` when it does not): a
    torch.ao engine becomes ``pt2e`` when torch.ao's FX flow cannot be imported."""
    check_backend(backend)
    if backend in FX_BACKENDS and not fx_available():
        return "pt2e", (f"backend {backend!r} needs torch.ao.quantization.quantize_fx, which this torch "
                        f"{torch.__version__} cannot import: falling back to backend 'pt2e' (torchao PT2E)")
    return backend, None


def qconfig_mapping(per_channel: bool = True, symmetric: bool = True, skip: Sequence[str] = ()):
    """The QAT configuration: 8-bit weights (per-channel or per-tensor, symmetric or affine, int8) and 8-bit
    affine activations (uint8, range reduced to 7 bits as the x86/fbgemm kernels require), moving-average
    min/max observers. Modules named in ``skip`` stay float."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
        QConfigMapping,
    )

    if per_channel:
        observer, scheme = MovingAveragePerChannelMinMaxObserver, (
            torch.per_channel_symmetric if symmetric else torch.per_channel_affine)
    else:
        observer, scheme = MovingAverageMinMaxObserver, (
            torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine)
    weight = FakeQuantize.with_args(observer=observer, quant_min=-128, quant_max=127, dtype=torch.qint8,
                                    qscheme=scheme)
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, reduce_range=True)
    mapping = QConfigMapping().set_global(QConfig(activation=activation, weight=weight))
    # Embeddings are lookups (torch.ao has weight-only qparams for them, with no integer kernel): left float.
    mapping.set_object_type(nn.Embedding, None).set_object_type(nn.EmbeddingBag, None)
    for name in skip:
        mapping.set_module_name(name, None)
    return mapping


def prepare_qat(net: nn.Module, input_shape: Sequence[int], per_channel: bool = True, symmetric: bool = True,
                skip: Sequence[str] = (), backend: str = "x86", input_dtype: str = "float32") -> nn.Module:
    """``net`` traced and prepared for quantization-aware training (a ``GraphModule`` in train mode), from an
    example of ``input_shape`` and ``input_dtype`` (``int64`` for token ids).

    Raises:
        ValueError: the backend is unknown, or the network cannot be traced symbolically (torch.export for
            ``pt2e``).
    """
    check_backend(backend, per_channel, symmetric)
    dtype = getattr(torch, input_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"input_dtype must name a torch dtype (float32, int64, ...), got {input_dtype!r}")
    if backend == "pt2e":
        return int8_pt2e.prepare_qat(net, input_shape, skip)
    with _quiet():
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        torch.backends.quantized.engine = backend
        _unfold_library_layers(net)
        was_training = net.training
        net.train()
        try:
            prepared = prepare_qat_fx(net, qconfig_mapping(per_channel, symmetric, skip),
                                      (torch.zeros(2, *input_shape, dtype=dtype),))
        except int8_pt2e.NOT_ABOUT_THE_NETWORK:
            raise
        except Exception as err:  # torch.fx raises many types for code it cannot trace
            raise ValueError(f"{type(net).__name__} cannot be prepared for int8 quantization by torch.ao FX "
                             f"(its forward must be symbolically traceable): {str(err).splitlines()[0]}") from err
        finally:
            net.train(was_training)
    prepared.train(was_training)
    _refuse_traced_batch_norm(prepared, type(net).__name__)
    return _dropout_as_modules(prepared)


def _batch_norm_act(module: nn.Module) -> nn.Module:
    # timm's BatchNormAct2d: a BatchNorm2d whose own forward calls F.batch_norm, then its `drop` and `act`
    norm = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                          module.track_running_stats)
    norm.load_state_dict(nn.BatchNorm2d.state_dict(module))
    return nn.Sequential(norm, module.drop, module.act)


# Library layers that torch.fx would trace into functional calls with their training flag written down as a
# constant (timm's BatchNormAct2d calls F.batch_norm(training=self.training): prepared in training mode, the int8
# network normalized by each batch's statistics at inference), by qualified class name -> the torch modules that
# compute the same; torch.ao then fuses the convolution before them with the BatchNorm, as for torch's own.
UNFOLDED_FOR_TRACING = {"timm.layers.norm_act.BatchNormAct2d": _batch_norm_act}


def _unfold_library_layers(net: nn.Module) -> None:
    for name, module in list(net.named_modules()):
        unfold = UNFOLDED_FOR_TRACING.get(f"{type(module).__module__}.{type(module).__qualname__}")
        if unfold is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, unfold(module))


def _refuse_traced_batch_norm(prepared: torch.fx.GraphModule, network: str) -> None:
    """Raise ``ValueError`` when the traced network calls ``F.batch_norm`` with ``training`` fixed to a constant:
    its int8 form would normalize every inference batch by its own statistics."""
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target is torch.nn.functional.batch_norm:
            training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
            if training is True:
                raise ValueError(f"{network} calls F.batch_norm in its forward ({node.name}), which torch.ao FX "
                                 "traces with training=True written down, so its int8 network would normalize by "
                                 "each batch: use nn.BatchNorm modules there, or leave the layer out of int8")


def _dropout_as_modules(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Each ``F.dropout(x, p, training=self.training)`` of the traced network as an ``nn.Dropout(p)`` submodule:
    tracing wrote the flag down as the constant it had (True: prepared in training mode), so timm's GhostNet
    dropped activations in eval, and its int8 network at inference. The module follows ``train()``/``eval()``."""
    graph = prepared.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (torch.nn.functional.dropout, torch.dropout):
            continue
        arguments = dict(zip(("input", "p", "training", "inplace"), node.args, strict=False)) | dict(node.kwargs)
        name = f"{node.name}_dropout"
        prepared.add_submodule(name, nn.Dropout(float(arguments.get("p", 0.5))))
        with graph.inserting_before(node):
            module_call = graph.call_module(name, (arguments["input"],))
        node.replace_all_uses_with(module_call)
        graph.erase_node(node)
    graph.lint()
    prepared.recompile()
    return prepared


def _each_fake_quant(net: nn.Module):
    if isinstance(net, int8_pt2e.ExportedNet):
        return int8_pt2e.each_fake_quant(net)
    from torch.ao.quantization import FakeQuantizeBase

    return (m for m in net.modules() if isinstance(m, FakeQuantizeBase))


def set_fake_quant(net: nn.Module, enabled: bool) -> None:
    """Switch fake quantization of weights and activations on or off (off: the network computes in float)."""
    for module in _each_fake_quant(net):
        module.enable_fake_quant(enabled)


def set_observers(net: nn.Module, enabled: bool) -> None:
    """Let the observers update the quantization ranges (on) or keep them fixed (off)."""
    for module in _each_fake_quant(net):
        module.enable_observer(enabled)


def freeze_bn_stats(net: nn.Module, frozen: bool = True) -> None:
    """Fused conv-bn modules stop (or resume) updating their BatchNorm running statistics."""
    if isinstance(net, int8_pt2e.ExportedNet):
        return int8_pt2e.freeze_bn_stats(net, frozen)
    from torch.ao.nn.intrinsic import qat as nniqat

    for module in net.modules():
        if isinstance(module, nniqat.ConvBn1d | nniqat.ConvBn2d | nniqat.ConvBn3d):
            module.freeze_bn_stats() if frozen else module.update_bn_stats()


def export_codecs(net: nn.Module) -> dict[str, str]:
    """Codecs of the converted network's tensors for the artifact: torch.ao's quantized tensors go by the artifact's
    own ``qtensor`` codec (nothing to name); PT2E's int8 weights are plain tensors, named here."""
    return int8_pt2e.export_codecs(net) if isinstance(net, int8_pt2e.ExportedNet) else {}


def convert(prepared: nn.Module) -> nn.Module:
    """The integer network (eval mode, CPU) from a prepared network. Observers that have seen data are switched
    off first, so the quantization parameters are exactly those the last training steps used (one that never
    ran, as in a network rebuilt to receive saved weights, observes its weight once, which sets its shapes)."""
    if isinstance(prepared, int8_pt2e.ExportedNet):
        return int8_pt2e.convert(prepared)
    with _quiet():
        from torch.ao.quantization.quantize_fx import convert_fx

        prepared = prepared.cpu().eval()
        for module in _each_fake_quant(prepared):
            observed = module.activation_post_process.min_val
            module.enable_observer(not (observed.numel() > 0 and bool(torch.isfinite(observed).all())))
        return _means_keep_dims(convert_fx(prepared)).eval()


def _means_keep_dims(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Each ``x.mean(dims)`` of the integer network computed as :func:`mean_keeping_dims`: the same values, but
    torch's quantized mean of a channels-last tensor fails when it drops dimensions of a wide input ("required rank
    4 tensor to use channels_last format": the global pool of 1,280 channels of MnasNet and ShuffleNetV2, where 8
    channels run)."""
    graph = converted.graph
    for node in list(graph.nodes):
        is_mean = (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean)
        if not is_mean or len(node.args) != 2 or node.kwargs:
            continue
        dims = node.args[1]
        if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims):
            continue
        with graph.inserting_after(node):
            kept = graph.call_function(mean_keeping_dims, (node.args[0], tuple(dims)))
        node.replace_all_uses_with(kept)
        graph.erase_node(node)
    graph.lint()
    converted.recompile()
    return converted


def mean_keeping_dims(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x.mean(dims)``, computed with the dimensions kept and then dropped: trailing ones by one ``flatten`` (a
    global pool's ``[N, C, 1, 1]`` to ``[N, C]``; the ONNX exporter keeps the batch dynamic), others one by one."""
    kept = x.mean(list(dims), keepdim=True)
    rank = x.dim()
    axes = sorted({d % rank for d in dims})
    if axes == list(range(rank - len(axes), rank)) and axes[0] > 0:
        return kept.flatten(axes[0] - 1)
    for axis in reversed(axes):
        kept = kept.squeeze(axis)
    return kept


QUANTIZED_DTYPES = (torch.qint8, torch.quint8, torch.qint32)


def quantized_tensor_parts(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """A quantized tensor as plain tensors: ``codes`` (its int8/uint8 values), ``scales`` and ``layout`` =
    [dtype id, per-channel axis or -1, zero point(s)] (one zero point when all channels share it, as in
    symmetric quantization)."""
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales = tensor.q_per_channel_scales()
        if torch.equal(scales.float().double(), scales):  # observers compute float32 scales: store them so
            scales = scales.float()
        zero_points = tensor.q_per_channel_zero_points().tolist()
        axis = tensor.q_per_channel_axis()
    else:
        scales = torch.tensor([tensor.q_scale()], dtype=torch.float64)
        zero_points, axis = [tensor.q_zero_point()], -1
    if len(set(zero_points)) == 1:
        zero_points = zero_points[:1]
    layout = [QUANTIZED_DTYPES.index(tensor.dtype), axis, *zero_points]
    return {"codes": tensor.int_repr(), "scales": scales, "layout": torch.tensor(layout, dtype=torch.int64)}


def quantized_tensor_from_parts(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The quantized tensor back from :func:`quantized_tensor_parts`."""
    dtype_id, axis, *zero_points = (int(v) for v in parts["layout"])
    codes = parts["codes"]
    if axis >= 0:
        if len(zero_points) == 1:
            zero_points = zero_points * codes.shape[axis]
        tensor = torch._make_per_channel_quantized_tensor(codes, parts["scales"].double(),
                                                          torch.tensor(zero_points, dtype=torch.int64), axis)
    else:
        tensor = torch._make_per_tensor_quantized_tensor(codes, float(parts["scales"][0]), zero_points[0])
    if tensor.dtype != QUANTIZED_DTYPES[dtype_id]:
        raise ValueError(f"stored codes of dtype {codes.dtype} do not make a {QUANTIZED_DTYPES[dtype_id]} tensor")
    return tensor
