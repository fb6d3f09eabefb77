"""The memory layout a CNN runs fastest in: NCHW (``contiguous``) or NHWC (``channels_last``), measured.

torch's CPU kernels for convolution and pooling differ by layout: on this project's AVX2 machine LeNet-5 runs its
MaxPool on NCHW at several times the cost it has on channels_last. :func:`choose_layout` times a network both ways
on its real input shape and returns the faster at the largest batch size measured (a tie keeps ``contiguous``);
:func:`apply_layout` converts the network's 4-D weights, after which each convolution's output, and what follows
it, is in that layout too (the input may stay NCHW: the first convolution converts it). The outputs are the same
to float rounding.

Example:
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    >>> x = torch.randn(2, 1, 10, 10)
    >>> y = net(x)
    >>> bool(torch.allclose(apply_layout(net, "channels_last")(x), y, atol=1e-6))
    True
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lightning_micro.core.sparse_kernels import import_benchmark

LAYOUTS = ("contiguous", "channels_last")
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def kernels_4d(net: nn.Module) -> list[torch.Tensor]:
    """The network's 4-D float tensors (2-D convolution kernels): parameters, and buffers such as the float weights
    a low-bit layer decodes from its codes."""
    return [t for t in itertools.chain(net.parameters(), net.buffers()) if t.dim() == 4 and t.is_floating_point()]


def has_4d_weights(net: nn.Module) -> bool:
    """Whether ``net`` holds a 4-D weight (a 2-D convolution): only those have a layout to choose."""
    return bool(kernels_4d(net))


def apply_layout(net: nn.Module, layout: str) -> nn.Module:
    """``net`` with its 4-D tensors in ``layout`` (in place; returned).

    Raises:
        ValueError: ``layout`` is not one of :data:`LAYOUTS`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return net.to(memory_format=FORMATS[layout])


def layout_of(net: nn.Module) -> str:
    """``channels_last`` when the network's 4-D weights are in that layout, else ``contiguous``."""
    # a kernel with one input channel or a 1x1 one is both layouts at once: it says nothing
    weights = [t for t in kernels_4d(net) if t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1]
    if weights and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                       for p in weights):
        return "channels_last"
    return "contiguous"


def choose_layout(
    net: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Iterable[int] = (1, 64),
    threads: int = 1,
    min_run_time: float = 0.05,
    rounds: int = 3,
) -> tuple[str, dict[str, float]]:
    """The faster layout of ``net`` at the largest of ``batch_sizes``, and ``{"<layout>_ms_b<batch>": ms}`` for
    every layout and batch size (medians over ``rounds`` interleaved rounds of ``torch.utils.benchmark`` medians).
    A network without 4-D weights is ``contiguous``, untimed. ``net`` is left in the layout it had."""
    if not has_4d_weights(net):
        return "contiguous", {}
    benchmark = import_benchmark()
    sizes = sorted({int(b) for b in batch_sizes})
    times: dict[str, float] = {}
    before, was_training = layout_of(net), net.training
    net.eval()
    with torch.no_grad():
        for batch in sizes:
            x = torch.randn(batch, *input_shape)
            samples: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
            for _ in range(rounds):
                for layout in LAYOUTS:
                    apply_layout(net, layout)
                    timer = benchmark.Timer(stmt="net(x)", globals={"net": net, "x": x}, num_threads=threads)
                    samples[layout].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
            times.update({f"{layout}_ms_b{batch}": statistics.median(v) for layout, v in samples.items()})
    largest = sizes[-1]
    chosen = ("channels_last" if times[f"channels_last_ms_b{largest}"] < times[f"contiguous_ms_b{largest}"]
              else "contiguous")
    apply_layout(net, before)
    net.train(was_training)
    return chosen, times
