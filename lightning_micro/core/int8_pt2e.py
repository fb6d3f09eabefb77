"""The PT2E int8 backend: torchao's ``prepare_qat_pt2e`` / ``convert_pt2e`` with the x86 inductor quantizer.

:mod:`lightning_micro.core.int8_backend` dispatches here for ``backend="pt2e"``; nothing else imports this
module. The network is captured with ``torch.export`` (batch dimension dynamic), fake quantization is inserted by
``X86InductorQuantizer`` (weights int8 per channel symmetric, activations uint8 affine), and :func:`convert`
gives the reference quantize/dequantize graph with int8 weights folded in.

Two things make that graph fit this project's record-and-replay artifact (build float net, replay prepare and
convert, ``load_state_dict(strict=True)``):

- ``convert_pt2e`` writes the activations' scales and zero points into the graph as Python literals, not
  tensors, so its ``state_dict`` alone would not rebuild the network. :func:`convert` moves them into buffers
  (``act_scale_<i>``, ``act_zero_point_<i>``, read by the ``.tensor`` overloads of the same ops);
- its ``state_dict`` keeps every layer's fp32 weight although the graph reads only the folded int8 copy
  (``_frozen_param<i>``): :func:`convert` drops what the graph does not read, so the artifact holds int8 weights.

The converted network runs eagerly as a reference graph (dequantize, fp32 conv/linear, quantize: slower than
fp32). :func:`compile_for_cpu` lowers it with inductor (qparams back to literals, ``freezing``), which fuses the
patterns into oneDNN int8 kernels; that is how it is meant to run.

The network lives in :class:`ExportedNet`, a plain ``nn.Module`` around the exported graph, because an exported
graph refuses ``.train()`` / ``.eval()`` and Lightning calls both: here they move the graph's batch norms and
dropout between their train and eval forms (torchao's ``move_exported_model_to_train/eval``), batch norms
staying in eval form while their statistics are frozen.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

# Raised while a network is being prepared, but not by what the network is: an interrupt, a time limit, memory.
# They pass through as they are instead of becoming "cannot be prepared".
NOT_ABOUT_THE_NETWORK: tuple[type[BaseException], ...] = (TimeoutError, MemoryError)


@contextlib.contextmanager
def _quiet():
    # torchao warns on import (an Enum registered with pytree), and observers that ran on no data warn.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


class ExportedNet(nn.Module):
    """An exported (PT2E) graph as a plain module: ``train(mode)`` moves its batch norms and dropout between their
    train and eval forms (batch norms stay in eval form while :attr:`bn_frozen`).

    The graph's layers, parameters and buffers are this module's own (shared, not a ``graph.`` submodule), so
    their names are those of the network it was exported from: other techniques and checkpoints follow them.
    """

    def __init__(self, graph: torch.fx.GraphModule, input_shape: Sequence[int]) -> None:
        super().__init__()
        self._graph = (graph,)  # a tuple, so that nn.Module does not register it as a submodule
        self._parameters, self._buffers, self._modules = graph._parameters, graph._buffers, graph._modules
        self._non_persistent_buffers_set = graph._non_persistent_buffers_set
        self.input_shape = list(input_shape)  # of one example: a never-run observer sees zeros of this shape
        self.bn_frozen = False
        self._bn_eval_form = False  # exported in train mode

    @property
    def graph(self) -> torch.fx.GraphModule:
        return self._graph[0]

    def __deepcopy__(self, memo: dict) -> ExportedNet:
        copied = ExportedNet(copy.deepcopy(self.graph, memo), self.input_shape)
        _keep_layer_types(copied.graph, self)  # a GraphModule's copy rebuilds its layers as plain modules
        copied.bn_frozen, copied._bn_eval_form, copied.training = self.bn_frozen, self._bn_eval_form, self.training
        return copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> ExportedNet:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.export_utils import _replace_batchnorm

        with _quiet():
            was_training = getattr(self.graph, "_exported_training", True)
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
            if was_training != mode:  # the move switched dropout and batch norms
                self._bn_eval_form = not mode
            bn_eval = self.bn_frozen or not mode
            if self._bn_eval_form != bn_eval:
                _replace_batchnorm(self.graph, train_to_eval=bn_eval)
                self._bn_eval_form = bn_eval
        self.training = mode
        return self


_EXPORTED_TYPES: dict[type, type] = {}


def _not_called(self, *args, **kwargs):
    raise RuntimeError(f"{type(self).__name__} holds the tensors of a layer an exported graph computes; the graph "
                       "runs it, not its forward")


def _exported_type(cls: type) -> type:
    """A subclass of ``cls`` for the holder of its tensors in an exported graph, so that selection by type name
    (``Linear``, ``Conv2d``) still finds the layer."""
    if cls not in _EXPORTED_TYPES:
        _EXPORTED_TYPES[cls] = type(f"Exported{cls.__name__}", (cls,), {
            "__doc__": f"The tensors of a {cls.__name__} that an exported graph computes.",
            "__module__": __name__, "forward": _not_called})
    return _EXPORTED_TYPES[cls]


def _keep_layer_types(graph: torch.fx.GraphModule, net: nn.Module) -> None:
    """``torch.export`` keeps each layer's tensors in a plain ``nn.Module``: give it back its type (a subclass
    whose forward is never called) and its settings (``in_features``, ``kernel_size``...)."""
    for name, layer in net.named_modules():
        if not name or not any(True for _ in layer.parameters(recurse=False)):
            continue
        try:
            holder = graph.get_submodule(name)
        except AttributeError:
            continue
        if type(holder) is nn.Module:
            holder.__class__ = type(layer) if type(layer) in _EXPORTED_TYPES.values() else _exported_type(type(layer))
            for key, value in vars(layer).items():
                if not key.startswith("_") and key != "training" and key not in vars(holder):
                    setattr(holder, key, value)


def _plain_layer_types(graph: torch.fx.GraphModule) -> None:
    """The inverse of :func:`_keep_layer_types`, for the converted graph, whose layers hold no fp32 weight."""
    for module in graph.modules():
        if type(module) in _EXPORTED_TYPES.values():
            module.__class__ = nn.Module


def _is_fake_quant(module: nn.Module) -> bool:
    from torchao.quantization.pt2e import FakeQuantizeBase

    return isinstance(module, FakeQuantizeBase)


def is_prepared(net: nn.Module) -> bool:
    """``net`` was prepared by this backend (and not converted yet)."""
    return isinstance(net, ExportedNet) and any(_is_fake_quant(m) for m in net.modules())


def prepare_qat(net: nn.Module, input_shape: Sequence[int], skip: Sequence[str] = ()) -> ExportedNet:
    """``net`` exported (batch dimension dynamic) and prepared for QAT by ``X86InductorQuantizer``; modules named
    in ``skip`` stay float.

    Raises:
        ValueError: ``torch.export`` cannot capture the network, or the quantizer cannot annotate it (a
            conv-bn whose output has several users, as in this project's residual test network).
    """
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

        was_training = net.training
        example = torch.zeros(2, *input_shape, device=next(net.parameters()).device)
        try:
            exported = torch.export.export(net.train(), (example,),
                                           dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
        except NOT_ABOUT_THE_NETWORK:
            raise
        except Exception as err:  # torch.export raises many types for code it cannot capture
            raise ValueError(f"{type(net).__name__} cannot be prepared for int8 quantization by PT2E (its forward "
                             f"must be capturable by torch.export): {str(err).splitlines()[0]}") from err
        finally:
            net.train(was_training)
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(
            is_qat=True))
        for name in skip:
            quantizer.set_module_name_qconfig(name, None)
        try:
            graph = prepare_qat_pt2e(exported, quantizer)
        except NOT_ABOUT_THE_NETWORK:
            raise
        except Exception as err:  # the quantizer's pattern matching raises plain ValueErrors, AssertionErrors
            raise ValueError(f"{type(net).__name__} cannot be prepared by PT2E's X86InductorQuantizer: "
                             f"{type(err).__name__}: {str(err).splitlines()[0]}; use backend: x86") from err
        _keep_layer_types(graph, net)
        prepared = ExportedNet(graph, input_shape)
    return prepared.train(was_training)


def each_fake_quant(net: nn.Module):
    return (m for m in net.modules() if _is_fake_quant(m))


def freeze_bn_stats(net: nn.Module, frozen: bool = True) -> None:
    """The graph's batch norms use (and keep) their running statistics, or go back to batch statistics."""
    if isinstance(net, ExportedNet) and net.bn_frozen != frozen:
        net.bn_frozen = frozen
        net.train(net.training)


_QUANT_OPS = {"quantize_per_tensor", "dequantize_per_tensor"}


def _qparams_to_buffers(graph: torch.fx.GraphModule) -> None:
    """Activation scales and zero points, literals in the converted graph, become buffers read by the ``.tensor``
    overload of the same op, so the state dict holds them."""
    ops = torch.ops.quantized_decomposed
    count = 0
    for node in list(graph.graph.nodes):
        if (node.op != "call_function" or getattr(node.target, "overloadpacket", None) is None
                or node.target.overloadpacket.__name__ not in _QUANT_OPS or node.target._overloadname != "default"):
            continue
        scale, zero_point = node.args[1], node.args[2]
        graph.register_buffer(f"act_scale_{count}", torch.tensor(scale, dtype=torch.float32))
        graph.register_buffer(f"act_zero_point_{count}", torch.tensor(zero_point, dtype=torch.int64))
        with graph.graph.inserting_before(node):
            scale_node = graph.graph.get_attr(f"act_scale_{count}")
            zero_point_node = graph.graph.get_attr(f"act_zero_point_{count}")
        node.target = getattr(ops, node.target.overloadpacket.__name__).tensor
        node.args = (node.args[0], scale_node, zero_point_node, *node.args[3:])
        count += 1
    graph.recompile()


def _qparams_to_literals(graph: torch.fx.GraphModule) -> None:
    """The inverse of :func:`_qparams_to_buffers`: the form inductor's int8 patterns match."""
    ops = torch.ops.quantized_decomposed
    for node in graph.graph.nodes:
        if (node.op == "call_function" and getattr(node.target, "overloadpacket", None) is not None
                and node.target.overloadpacket.__name__ in _QUANT_OPS and node.target._overloadname == "tensor"):
            scale = float(graph.get_buffer(node.args[1].target))
            zero_point = int(graph.get_buffer(node.args[2].target))
            node.target = getattr(ops, node.target.overloadpacket.__name__).default
            node.args = (node.args[0], scale, zero_point, *node.args[3:])
    graph.graph.eliminate_dead_code()
    _drop_unread(graph)


def _drop_unread(graph: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers the graph no longer reads (the fp32 weights int8 copies replaced)."""
    graph.graph.eliminate_dead_code()
    graph.recompile()
    read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name in read or any(name.startswith(module + ".") for module in called):
            continue
        owner_name, _, attribute = name.rpartition(".")
        owner = graph.get_submodule(owner_name) if owner_name else graph
        delattr(owner, attribute)
    graph.delete_all_unused_submodules()
    graph.recompile()


def convert(prepared: ExportedNet) -> ExportedNet:
    """The converted network (eval mode, CPU): int8 weights folded in, activation qparams as buffers, fp32 weights
    dropped. Observers that have seen data are switched off first, so the quantization parameters are exactly
    those the last training steps used; in a network rebuilt to receive saved weights no observer ran, and all of
    them observe one all-zero batch, which gives every tensor its shape."""
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = prepared.cpu().eval()
        fresh = [m for m in each_fake_quant(prepared) if not _observed(m)]
        for module in each_fake_quant(prepared):
            module.enable_observer(module in fresh)
        if fresh:
            with torch.no_grad():
                prepared(torch.zeros(2, *prepared.input_shape))
        graph = convert_pt2e(prepared.graph)
        _plain_layer_types(graph)
        _qparams_to_buffers(graph)
        _drop_unread(graph)
        converted = ExportedNet(graph, prepared.input_shape)
    return converted.eval()


def export_codecs(net: nn.Module) -> dict[str, str]:
    """The converted network's integer tensors (int8 weights, per-channel zero points) stored by the artifact's
    ``codes`` codec: bit-packed, sparse when pruned, entropy-coded when smaller."""
    return {key: "codes" for key, value in net.state_dict().items()
            if value.ndim >= 1 and not value.is_floating_point() and not value.is_quantized}


def _observed(module: nn.Module) -> bool:
    observed = module.activation_post_process.min_val
    return observed.numel() > 0 and bool(torch.isfinite(observed).all())


class CompiledNet(nn.Module):
    """A converted network lowered by inductor; see :func:`compile_for_cpu`."""

    def __init__(self, graph: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph = graph
        self.compiled = torch.compile(graph, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Freezing (weights as constants) is what lets inductor prepack the int8 weights for oneDNN; passed as
        # torch.compile's options instead, the prepack is not folded and compilation fails.
        with torch._inductor.config.patch(freezing=True), torch.no_grad():
            return self.compiled(x)


def with_literal_qparams(net: ExportedNet) -> ExportedNet:
    """A copy of the converted network with the activation qparams written into the graph as literals again, as
    ``convert_pt2e`` left them: the form inductor and the ONNX exporter (``torch.onnx.export(..., dynamo=True)``,
    QuantizeLinear/DequantizeLinear) translate. Its state dict no longer holds them: export artifacts from
    the network :func:`convert` gives, not from this one."""
    graph = copy.deepcopy(net.graph)
    _qparams_to_literals(graph)
    return ExportedNet(graph, net.input_shape).eval()


def compile_for_cpu(net: ExportedNet) -> CompiledNet:
    """The converted network lowered by inductor for the CPU: qparams back to literals, weights frozen as
    constants, quantize/dequantize patterns fused into oneDNN int8 convolutions and matmuls. Inference only
    (no autograd); compiles on the first call of each batch size (seconds). Its outputs differ from the
    reference graph's by the kernels' requantization rounding."""
    return CompiledNet(with_literal_qparams(net).graph).eval()
