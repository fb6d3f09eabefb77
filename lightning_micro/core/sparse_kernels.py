"""Sparse execution of pruned ``Linear`` layers: the kernel measured fastest for each layer and batch size.

A pruned weight computed densely costs every multiply of the dense one. :class:`SparseLinear` computes
``x @ W.T + b`` with ``W`` in torch's CSR layout (``torch.sparse.mm``, which runs MKL's sparse kernels on this
CPU build of torch), so a layer at 95% zeros does about 5% of the work. It pays only where the layer is sparse
and the batch is large enough: at batch 1 a small layer is faster dense. So the kernel is chosen per layer and per
*batch-size class* by timing both on the exporting machine (:func:`choose_kernels`), recorded in the artifact as
plain names (``{"fc1": {"1": "dense", "64": "csr"}}``) and replayed on load (:func:`apply_kernels`); a batch uses
the class whose batch size is nearest to its own (on a log scale).

``mode`` forces the choice: ``auto`` (timed), ``always`` (CSR for every pruned layer), ``never`` (dense).

Inference form only: the CSR copy is rebuilt from the dense weight whenever that changes (a state dict loaded,
low-bit codes decoded), and no gradient flows through it. The dense ``weight`` stays the module's parameter, so
the state dict, the report's counts and the ONNX export (which loads with ``never``) see a plain ``Linear``.

Example:
    >>> layer = nn.Linear(64, 32)
    >>> with torch.no_grad():
    ...     layer.weight[torch.rand(32, 64) < 0.9] = 0
    >>> x = torch.randn(8, 64)
    >>> dense = layer(x)
    >>> sparse = apply_kernels(nn.Sequential(layer), {"0": {"1": "csr"}})[0]
    >>> bool(torch.allclose(sparse(x), dense, atol=1e-5))
    True
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

MODES = ("auto", "always", "never")
KERNELS = ("dense", "csr")
# Below this fraction of zeros CSR has never been faster here (its index reads cost about as much as the saved
# multiplies), so ``auto`` does not time such layers.
MIN_TIMED_SPARSITY = 0.5

Choice = dict[str, dict[str, str]]  # layer name -> {batch size: kernel}


class SparseLinear(nn.Linear):
    """An ``nn.Linear`` that runs each batch size class on the kernel recorded for it (``dense`` or ``csr``).

    Made from a trained layer in place by :func:`apply_kernels` (the class is swapped, so buffers, hooks and the
    state dict stay the layer's own)."""

    kernels: dict[int, str]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0] if x.dim() > 1 else 1
        kernel = self.__dict__.setdefault("_by_batch", {}).get(batch) or self._remember(batch)
        if kernel == "dense":
            return super().forward(x)
        rows = x.reshape(-1, self.in_features) if x.dim() != 2 else x
        # (W @ x.T).T: CSR times the input's transpose, a view; the result's transpose is a view too, and the next
        # CSR layer's transpose of it is contiguous again
        csr, bias_column = self.csr_operands()
        if bias_column is None:
            out = torch.sparse.mm(csr, transposed_copy(rows)).t()
        else:
            out = torch.addmm(bias_column, csr, transposed_copy(rows)).t()
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def _remember(self, batch: int) -> str:
        kernel = self.kernel_for(batch)
        self._by_batch[batch] = kernel
        return kernel

    def kernel_for(self, batch: int) -> str:
        """The kernel of the recorded batch size nearest to ``batch`` (log scale)."""
        nearest = min(self.kernels, key=lambda size: abs(math.log(size) - math.log(max(batch, 1))))
        return self.kernels[nearest]

    def csr_weight(self) -> torch.Tensor:
        """The weight in CSR layout, rebuilt when the dense weight is another tensor or was changed in place."""
        return self.csr_operands()[0]

    def csr_operands(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The CSR weight and the bias as a column (``None`` without bias), rebuilt when either parameter is
        another tensor or was changed in place; kept together so a batch reads the module's parameters once."""
        weight, bias = self.weight, self.bias
        key = (id(weight), _version(weight), id(bias), -1 if bias is None else _version(bias))
        cached = self.__dict__.get("_csr")
        if cached is None or cached[0] != key:
            column = None if bias is None else bias.detach().unsqueeze(1)
            cached = self._csr = (key, to_csr(weight), column)
        return cached[1], cached[2]

    def extra_repr(self) -> str:
        kernels = ", ".join(f"b{size}: {kernel}" for size, kernel in sorted(self.kernels.items()))
        return f"{super().extra_repr()}, kernels=({kernels})"


def _version(tensor: torch.Tensor) -> int:
    """The in-place change counter. A tensor made under ``torch.inference_mode`` (a network built or loaded inside
    it) keeps none, so for it the key is its storage address: a new tensor is seen, an in-place write to it inside
    inference mode is not (load new weights outside inference mode, or build the network again)."""
    return tensor.data_ptr() if tensor.is_inference() else tensor._version


def transposed_copy(rows: torch.Tensor) -> torch.Tensor:
    """``rows.t()`` in contiguous memory (what MKL's CSR product reads fastest: its column-major path measured
    slower than a copy plus the row-major product), with no copy where the transpose already is contiguous (the
    input of a CSR layer after another). A CPU tensor without gradient is transposed by NumPy, which measured 2x
    faster than torch's strided copy here (12.5 us against 27 us for a 64 x 784 batch)."""
    columns = rows.t()
    if columns.is_contiguous():
        return columns
    if rows.device.type == "cpu" and not rows.requires_grad and rows.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.ascontiguousarray(rows.numpy().T))
    return columns.contiguous()


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (2-D, dense) in CSR layout, without torch's "CSR support is in beta" warning: the two ops used
    here (conversion, ``sparse.mm``) are the ones the outputs are tested on.

    The indices are stored as int32, the type MKL's sparse kernels read: with torch's default int64 every product
    first converts both index arrays (measured 12% of a 98%-sparse LeNet-300-100's fc1 product here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape,
                                       check_invariants=False)  # torch made these indices itself


def kernel_fields(net: nn.Module) -> dict[str, str | int]:
    """Report fields: ``kernels/sparse_layers`` (how many layers run a CSR kernel at some batch size) and
    ``kernels/<layer>`` (``"b1 dense, b64 csr"``) for each of them."""
    layers = {name: m for name, m in net.named_modules() if isinstance(m, SparseLinear)}
    fields: dict[str, str | int] = {"kernels/sparse_layers": len(layers)}
    for name, layer in layers.items():
        fields[f"kernels/{name}"] = ", ".join(f"b{size} {kernel}" for size, kernel in sorted(layer.kernels.items()))
    return fields


def candidate_layers(net: nn.Module) -> dict[str, nn.Linear]:
    """The layers a sparse kernel can run: plain ``nn.Linear`` modules (a library's subclass may compute more
    than ``F.linear``, so it is left alone) with a float weight holding at least one zero."""
    found = {}
    for name, module in net.named_modules():
        if type(module) in (nn.Linear, SparseLinear) and module.weight.is_floating_point():
            if bool((module.weight == 0).any()):
                found[name] = module
    return found


def zero_fraction(layer: nn.Linear) -> float:
    return 1.0 - int(torch.count_nonzero(layer.weight)) / layer.weight.numel()


def apply_kernels(net: nn.Module, choice: Mapping[str, Mapping[str, str]]) -> nn.Module:
    """Give each layer ``choice`` names its kernels (in place) and return ``net``; a layer whose every class is
    ``dense`` stays a plain ``nn.Linear``.

    Raises:
        ValueError: a name that is not a plain ``nn.Linear`` of ``net``, or a kernel or batch size not allowed.
    """
    layers = dict(net.named_modules())
    for name, classes in choice.items():
        layer = layers.get(name)
        if type(layer) not in (nn.Linear, SparseLinear):
            raise ValueError(f"sparse kernels name {name!r}, which is not an nn.Linear of the network")
        kernels = {}
        for size, kernel in classes.items():
            if kernel not in KERNELS or not str(size).isdigit() or int(size) < 1:
                raise ValueError(f"sparse kernels of {name}: batch size {size!r} with kernel {kernel!r}; batch "
                                 f"sizes are positive integers and kernels one of {list(KERNELS)}")
            kernels[int(size)] = kernel
        if "csr" in kernels.values():
            layer.__class__ = SparseLinear
            layer.kernels = kernels
            layer.__dict__.pop("_by_batch", None)
    return net


def remove_kernels(net: nn.Module) -> nn.Module:
    """Every :class:`SparseLinear` of ``net`` back to a plain ``nn.Linear`` (in place)."""
    for module in net.modules():
        if isinstance(module, SparseLinear):
            module.__class__ = nn.Linear
            for attr in ("kernels", "_csr", "_by_batch"):
                module.__dict__.pop(attr, None)
    return net


def choose_kernels(
    net: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 64),
    mode: str = "auto",
    threads: int = 1,
    min_run_time: float = 0.02,
    rounds: int = 3,
) -> Choice:
    """The kernel of each candidate layer (:func:`candidate_layers`) at each batch size, by ``mode``.

    ``auto`` takes the layers one after another (in a copy of ``net``, registration order) and, per batch size,
    times the layer's own forward under each kernel on the input the network gives it with the earlier choices
    applied, in alternation (medians over ``rounds`` of ``torch.utils.benchmark`` medians, ``threads`` threads),
    and keeps the faster; layers under :data:`MIN_TIMED_SPARSITY` zeros stay dense untimed. Only layers
    with a CSR class are returned.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`, or a batch size is not a positive integer.
    """
    if mode not in MODES:
        raise ValueError(f"sparse_kernels must be one of {list(MODES)}, got {mode!r}")
    sizes = sorted({int(size) for size in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sparse kernel batch sizes must be positive integers, got {list(batch_sizes)}")
    layers = candidate_layers(net)
    if mode == "never" or not layers:
        return {}
    if mode == "always":
        return {name: {str(size): "csr" for size in sizes} for name in layers}
    timed = [name for name, layer in layers.items() if zero_fraction(layer) >= MIN_TIMED_SPARSITY]
    # the layers are timed in a copy, one after another in the order they are registered, each on the input the
    # deployed network gives it: after a CSR layer that input is a transposed view, which a CSR layer reads without
    # a copy, so a layer's choice depends on its neighbours' and is made knowing them
    work = remove_kernels(copy.deepcopy(net)).eval()
    modules = dict(work.named_modules())
    choice: Choice = {}
    for size in sizes:
        for name in timed:
            layer = modules[name]
            x = _layer_input(work, layer, input_shape, size)
            if x is None:
                continue
            kernel = _faster_kernel(layer, x, size, threads, min_run_time, rounds)
            choice.setdefault(name, {})[str(size)] = kernel
            _set_kernels(layer, {int(s): k for s, k in choice[name].items()})
    return {name: classes for name, classes in choice.items() if "csr" in classes.values()}


class _Captured(Exception):
    """Raised by the capturing hook: the rest of the forward is not needed."""


def _layer_input(net: nn.Module, layer: nn.Linear, input_shape: Sequence[int], batch: int) -> torch.Tensor | None:
    """``layer``'s input (strides kept) when ``net`` runs a random batch; ``None`` where the forward never calls it."""
    captured: list[torch.Tensor] = []

    def keep(module, args):
        captured.append(args[0].detach().clone())
        raise _Captured

    handle = layer.register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            net(torch.randn(batch, *input_shape))
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0] if captured else None


def _set_kernels(layer: nn.Linear, kernels: dict[int, str]) -> None:
    layer.__class__ = SparseLinear
    layer.kernels = kernels
    layer.__dict__.pop("_by_batch", None)


def _faster_kernel(layer: nn.Linear, x: torch.Tensor, batch: int, threads: int, min_run_time: float,
                   rounds: int) -> str:
    """The kernel under which ``layer``'s own forward (what the deployed layer runs, input copies included) has the
    smaller median on ``x``, timed in alternation over ``rounds``."""
    benchmark = import_benchmark()
    samples: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
    with torch.no_grad():
        for _ in range(rounds):
            for kernel in KERNELS:
                _set_kernels(layer, {batch: kernel})
                timer = benchmark.Timer(stmt="layer(x)", globals={"layer": layer, "x": x}, num_threads=threads)
                samples[kernel].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return min(samples, key=lambda kernel: statistics.median(samples[kernel]))


def import_benchmark():
    """``torch.utils.benchmark``, imported with the warning it prints on a CUDA build of torch without a GPU ("No
    CUDA runtime is found", from cpp_extension) kept out of the output: it says nothing about CPU timing."""
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        cpp_logger.setLevel(level)
    return benchmark


def sparse_addmm_flops(bias, first, second, *args, out_val=None, **kwargs) -> int:
    """``torch.utils.flop_counter`` formula of ``aten.addmm`` and ``aten._sparse_addmm`` that knows CSR: one MAC per
    stored non-zero of a sparse first matrix per column of the second (the dense count, ``m * k * n``, otherwise)."""
    if first.layout == torch.strided:
        return 2 * first.shape[0] * first.shape[1] * second.shape[-1]
    nonzeros = first.values().numel() if first.layout == torch.sparse_csr else first._nnz()
    return 2 * nonzeros * second.shape[-1]


sparse_addmm_flops._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass the tensors themselves


def flop_formulas() -> dict:
    """The formulas :func:`sparse_addmm_flops` gives ``FlopCounterMode(custom_mapping=...)``."""
    return {torch.ops.aten.addmm: sparse_addmm_flops, torch.ops.aten._sparse_addmm: sparse_addmm_flops}
