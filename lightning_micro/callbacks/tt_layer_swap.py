"""TTLayerSwap: linear layers replaced by Tensor-Train layers during training, initialized by TT-SVD, retrained.

The Lightning glue only: the TT format, its decomposition (TensorLy) and its forward are in
:mod:`lightning_micro.core.tensor_train`; the swap is the recorded ``tt_swap`` transform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import check_ratio
from lightning_micro.callbacks.layer_swap import LayerSwap
from lightning_micro.core import tensor_train as tt
from lightning_micro.core.selection import check_pattern, name_matches

DEFAULT_RANKS = 8  # when none of ranks, compression_ratio, energy is given (conf/compression/tt.yaml)


class TTLayerSwap(LayerSwap):
    """At ``swap_at``, replace the selected ``Linear`` layers by :class:`~lightning_micro.core.tensor_train.TTLinear`
    layers (TT-matrices, Novikov et al. 2015) initialized by TT-SVD of the trained weights; training goes on and
    retrains the cores by back-propagation.

    Ranks come from exactly one of ``ranks`` (one number, capped where the chain's ends allow less, or the list
    of the ``cores - 1`` internal ranks), ``compression_ratio`` (the largest uniform rank whose cores are that
    many times smaller than the weight) or ``energy`` (the smallest ranks keeping that fraction of the squared
    singular values of each unfolding, read from the trained weight at the swap).

    Args:
        swap_at: epoch (int), fraction of the run (float) or step (``"step:N"``); 0 swaps before the first step.
        ranks: TT-ranks: an int or a list of ``cores - 1`` ints (8 when none of the three is given).
        compression_ratio: instead of ``ranks``: cores at least this many times smaller than the weight.
        energy: instead of ``ranks``: fraction in (0, 1] of the spectrum each rank keeps.
        cores: number of cores ``d`` when the factors are found automatically.
        in_factors: input factors ``n_1..n_d`` (product ``in_features``); ``None``: found automatically.
        out_factors: output factors ``m_1..m_d`` (product ``out_features``); ``None``: found automatically.
        include: layer name patterns (glob or ``re:``).
        exclude: layer name patterns left dense.
        overrides: ``{pattern: compression_ratio}``: the layers a pattern matches get their own ratio (the first
            matching pattern wins), e.g. ``{"fc2": 5}`` beside ``compression_ratio: 30``.
        keep_output_layer: a wildcard leaves the output layer (the classifier) dense, named in the log and
            report; ``False`` (or naming it in ``include``) swaps it too.

    Raises:
        ValueError: an argument outside its allowed values, two of ``ranks`` / ``compression_ratio`` /
            ``energy``; at ``check_model``, a pattern matching no layer, a
            dimension that cannot be factorized as asked, or a rank larger than a layer allows.

    Example:
        >>> swap = TTLayerSwap(swap_at=0.5, compression_ratio=30, include=["fc1"])
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[swap])
    """

    transform = "tt_swap"
    technique = "TTLayerSwap"
    int8_traceable = False  # the forward picks a contraction plan at run time; low-bit weights quantize it

    def __init__(
        self,
        swap_at: int | float = 0.5,
        ranks: int | Sequence[int] | None = None,
        compression_ratio: float | None = None,
        energy: float | None = None,
        cores: int = 4,
        in_factors: Sequence[int] | None = None,
        out_factors: Sequence[int] | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        overrides: Mapping[str, float] | None = None,
        keep_output_layer: bool = True,
    ) -> None:
        super().__init__(swap_at, include, exclude, module_types=["Linear"], allowed_types=["Linear"],
                         keep_output_layer=keep_output_layer)
        given = [name for name, value in (("ranks", ranks), ("compression_ratio", compression_ratio),
                                          ("energy", energy)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"give exactly one of ranks, compression_ratio, energy; got {given}")
        if not given:
            ranks = DEFAULT_RANKS
        if ranks is not None:
            listed = list(ranks) if isinstance(ranks, Sequence) else [ranks]
            if not listed or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in listed):
                raise ValueError(f"ranks must be a positive integer or a list of positive integers, got {ranks!r}")
            ranks = ranks if isinstance(ranks, int) else [int(r) for r in ranks]
        check_ratio("compression_ratio", compression_ratio)
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                   or not 0 < energy <= 1):
            raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 2:
            raise ValueError(f"cores must be an integer >= 2, got {cores!r}")
        for name, factors in (("in_factors", in_factors), ("out_factors", out_factors)):
            if factors is not None and (isinstance(factors, (str, int)) or not factors or any(
                    isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors)):
                raise ValueError(f"{name} must be a list of positive integers, got {factors!r}")
        self.ranks, self.compression_ratio, self.energy = ranks, compression_ratio, energy
        self.cores = cores
        self.in_factors = None if in_factors is None else [int(f) for f in in_factors]
        self.out_factors = None if out_factors is None else [int(f) for f in out_factors]
        self.overrides = {str(k): check_ratio(f"overrides[{k!r}]", v) for k, v in dict(overrides or {}).items()}
        for pattern in self.overrides:
            try:
                check_pattern(pattern)
            except ValueError as err:
                raise ValueError(f"overrides: {err}") from err

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        super().check_model(net, example_input)
        for pattern in self.overrides:
            if not any(name_matches(n, pattern) for n in self.layers):
                raise ValueError(f"overrides: pattern {pattern!r} matches none of the selected layers "
                                 f"({', '.join(self.layers)})")

    def layer_spec(self, name: str, layer: nn.Module) -> dict[str, Any]:
        try:
            ins, outs = tt.tt_dims(layer.in_features, layer.out_features, self.cores, self.in_factors,
                                   self.out_factors)
            ratio = next((r for p, r in self.overrides.items() if name_matches(name, p)), None)
            if ratio is not None:
                ranks = tt.ranks_for_ratio(ins, outs, ratio)
            elif self.ranks is not None:
                ranks = tt.full_ranks(self.ranks, ins, outs)
            elif self.compression_ratio is not None:
                ranks = tt.ranks_for_ratio(ins, outs, self.compression_ratio)
            else:
                ranks = tt.ranks_for_energy(layer.weight, ins, outs, self.energy)
        except ValueError as err:
            raise ValueError(f"TTLayerSwap on {name} ({layer.in_features} -> {layer.out_features}): {err}") from err
        return {"in_factors": ins, "out_factors": outs, "ranks": ranks}

    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """Per swapped layer: its TT-ranks, factors, parameters (cores and bias) against the dense layer's; the
        layers left out of the selection."""
        fields = self.left_out_fields("tt")
        for name in self.layers:
            layer = net.get_submodule(name)
            if not isinstance(layer, tt.TTLinear):
                continue
            # cores as they are stored: parameters in training, integer codes after low-bit quantization
            bias = layer.out_features if layer.bias is not None else 0
            params = sum(c.numel() for c in layer.core_tensors()) + bias
            dense = layer.in_features * layer.out_features + bias
            fields.update({
                f"tt/{name}/ranks": "-".join(map(str, layer.ranks)),
                f"tt/{name}/out_factors": "x".join(map(str, layer.out_factors)),
                f"tt/{name}/in_factors": "x".join(map(str, layer.in_factors)),
                f"tt/{name}/params": params,
                f"tt/{name}/dense_params": dense,
                f"tt/{name}/ratio": dense / params,
            })
        return fields
