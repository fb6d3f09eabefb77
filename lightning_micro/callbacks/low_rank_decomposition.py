"""LowRankDecomposition: linear and convolution layers replaced by low-rank chains during training, retrained.

The Lightning glue only: decompositions (TensorLy) and layers are in :mod:`lightning_micro.core.low_rank`; the
swap is the recorded ``low_rank_swap`` transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_micro.callbacks.argument_checks import check_ratio
from lightning_micro.callbacks.layer_swap import LayerLeftDense, LayerSwap
from lightning_micro.core.low_rank import CPConv2d, LowRankLinear, TuckerConv2d

CONV_METHODS = ("tucker2", "cp")
LOW_RANK_TYPES = (LowRankLinear, TuckerConv2d, CPConv2d)
DEFAULT_COMPRESSION_RATIO = 4  # when neither rank nor compression_ratio is given (conf/compression/lowrank.yaml)


class LowRankDecomposition(LayerSwap):
    """At ``swap_at``, replace the selected ``Linear`` layers by a truncated-SVD pair and the ``Conv2d`` layers by
    a Tucker-2 (``conv_method: tucker2``) or CP (``cp``) chain of smaller convolutions, initialized from the
    trained weights; training goes on and retrains the factors.

    Ranks come from ``rank`` (linear and CP: an int; Tucker-2: an int for both channel modes, or
    ``[r_out, r_in]``) or from ``compression_ratio`` (per layer, the largest rank whose factors are at least that
    many times smaller than the layer's weight; Tucker-2 keeps ``r_out / r_in`` near ``out / in``).

    Args:
        swap_at: epoch (int), fraction of the run (float) or step (``"step:N"``); 0 swaps before the first step.
        conv_method: ``tucker2`` or ``cp``.
        rank: the rank (see above); exclusive with ``compression_ratio``.
        compression_ratio: instead of ``rank``: factors at least this many times smaller than the weight (4 when
            neither is given).
        include: layer name patterns (glob or ``re:``).
        exclude: layer name patterns left alone.
        module_types: ``Linear`` and/or ``Conv2d``.
        keep_output_layer: a wildcard leaves the output layer (the classifier) dense, named in the log and
            report; ``False`` (or naming it in ``include``) factorizes it too.

    A layer a wildcard selects whose ``compression_ratio`` is out of reach (a 1-channel stem, a tiny head) is left
    dense, and named in the log and in the report's ``lowrank/left_out``.

    Raises:
        ValueError: an argument outside its allowed values; at ``check_model``, a pattern matching no layer, a
            rank larger than a layer allows, or a ratio out of reach of a layer ``include`` names exactly.

    Example:
        >>> lowrank = LowRankDecomposition(swap_at=10, conv_method="tucker2", rank=[16, 8], include=["conv2"])
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[lowrank])
    """

    transform = "low_rank_swap"
    technique = "LowRankDecomposition"

    def __init__(
        self,
        swap_at: int | float = 0.5,
        conv_method: str = "tucker2",
        rank: int | Sequence[int] | None = None,
        compression_ratio: float | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        module_types: Sequence[str] = ("Linear", "Conv2d"),
        keep_output_layer: bool = True,
    ) -> None:
        super().__init__(swap_at, include, exclude, module_types, allowed_types=["Linear", "Conv2d"],
                         keep_output_layer=keep_output_layer)
        if conv_method not in CONV_METHODS:
            raise ValueError(f"conv_method must be one of {list(CONV_METHODS)}, got {conv_method!r}")
        if rank is not None and compression_ratio is not None:
            raise ValueError("give exactly one of rank and compression_ratio")
        if rank is None and compression_ratio is None:
            compression_ratio = DEFAULT_COMPRESSION_RATIO
        if rank is not None:
            listed = list(rank) if isinstance(rank, Sequence) else [rank]
            if len(listed) not in (1, 2) or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0
                                                for r in listed):
                raise ValueError(f"rank must be a positive integer, or [r_out, r_in] (positive integers) for "
                                 f"Tucker-2, got {rank!r}")
            if len(listed) == 2 and conv_method != "tucker2":
                raise ValueError(f"rank={list(rank)}: two ranks [r_out, r_in] are for conv_method tucker2; "
                                 f"{conv_method} takes one")
            rank = listed[0] if len(listed) == 1 else [int(r) for r in listed]
        check_ratio("compression_ratio", compression_ratio)
        self.conv_method, self.rank, self.compression_ratio = conv_method, rank, compression_ratio

    def takes(self, layer: nn.Module) -> bool:
        # Grouped (depthwise) convolutions have no channel modes to factor: left alone, like other types.
        return not isinstance(layer, nn.Conv2d) or (layer.groups == 1 and layer.padding_mode == "zeros"
                                                   and not isinstance(layer.padding, str))

    def layer_spec(self, name: str, layer: nn.Module) -> dict[str, Any]:
        method = "svd" if isinstance(layer, nn.Linear) else self.conv_method
        try:
            rank = self._rank(layer, method)
            if method == "svd":
                LowRankLinear(layer.in_features, layer.out_features, rank)  # checks the rank
            else:
                (TuckerConv2d if method == "tucker2" else CPConv2d)(layer, rank)
        except ValueError as err:
            kind = LayerLeftDense if isinstance(err, LayerLeftDense) else ValueError
            raise kind(f"LowRankDecomposition on {name} ({type(layer).__name__}, {method}): {err}") from err
        return {"method": method, "rank": rank}

    def _rank(self, layer: nn.Module, method: str) -> int | list[int]:
        if method == "svd" and isinstance(self.rank, list):
            raise ValueError(f"rank={self.rank} is for Tucker-2 convolutions; a Linear layer takes one rank")
        if self.rank is not None:
            return self.rank
        dense = layer.weight.numel()
        if method == "svd":
            count = lambda r: LowRankLinear.parameter_count(layer.in_features, layer.out_features, r)  # noqa: E731
            candidates = range(1, min(layer.in_features, layer.out_features) + 1)
        elif method == "cp":
            count = lambda r: CPConv2d.parameter_count(layer, r)  # noqa: E731
            dims = (layer.out_channels, layer.in_channels, *layer.kernel_size)
            candidates = range(1, math.prod(dims) // max(dims) + 1)
        else:
            kernel = math.prod(layer.kernel_size)
            bounds = [min(layer.out_channels, layer.in_channels * kernel),
                      min(layer.in_channels, layer.out_channels * kernel)]

            def ranks_at(scale: int) -> list[int]:  # r_out / r_in ~ out / in, within what the kernel allows
                step = scale / max(layer.out_channels, layer.in_channels)
                r_out = min(bounds[0], max(1, round(layer.out_channels * step)))
                r_in = min(bounds[1], max(1, round(layer.in_channels * step)))
                return [min(r_out, r_in * kernel), min(r_in, r_out * kernel)]
            count = lambda s: TuckerConv2d.parameter_count(layer, ranks_at(s))  # noqa: E731
            candidates = range(1, max(layer.out_channels, layer.in_channels) + 1)
        fitting = [r for r in candidates if count(r) * self.compression_ratio <= dense]
        if not fitting:
            raise LayerLeftDense(f"compression_ratio={self.compression_ratio} is out of reach for this layer even "
                                 f"at rank 1 ({dense / count(1):.1f}x)")
        best = fitting[-1]
        return ranks_at(best) if method == "tucker2" else best

    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """Per swapped layer: method, rank(s), parameters against the original layer's; the layers left out of
        the selection."""
        fields = self.left_out_fields("lowrank")
        for name in self.layers:
            layer = net.get_submodule(name)
            if not isinstance(layer, LOW_RANK_TYPES):
                continue
            method = {LowRankLinear: "svd", TuckerConv2d: "tucker2", CPConv2d: "cp"}[type(layer)]
            rank = layer.ranks if isinstance(layer, TuckerConv2d) else [layer.rank]
            fields.update({
                f"lowrank/{name}/method": method,
                f"lowrank/{name}/rank": "-".join(map(str, rank)),
                f"lowrank/{name}/params": sum(p.numel() for p in layer.parameters()),
                f"lowrank/{name}/dense_params": layer.dense_parameter_count(),
                f"lowrank/{name}/ratio": layer.dense_parameter_count() / sum(p.numel() for p in layer.parameters()),
            })
        return fields
