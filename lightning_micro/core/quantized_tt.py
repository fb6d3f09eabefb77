"""Low-bit (1, 2, 4 and 8-bit) Tensor-Train layers: cores trained with fake quantization, deployed as integer codes.

The TT counterpart of :class:`~lightning_micro.core.quantizers.FakeQuantLinear` and
:func:`~lightning_micro.core.quantizers.to_low_bit`, with the same grids and the same straight-through gradient
(:mod:`lightning_micro.core.quantizers`), applied to every core instead of to one weight matrix.

A core ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` is quantized as the matrix of its ``r_{k-1} m_k`` rows
(``G_k.reshape(r_{k-1} m_k, n_k r_k)``): per channel, each ``(r_{k-1}, m_k)`` row has its own scale (the TT
analogue of a weight's output channel); per tensor, the core has one. Codes are stored in the core's layout, and
scales and zero points shaped ``(r_{k-1}, m_k, 1, 1)`` (per tensor ``(1, 1, 1, 1)``) to broadcast against them.

- :class:`FakeQuantTTLinear`: training form; same parameters and state-dict keys as the ``TTLinear`` it wraps.
- :class:`LowBitTTLinear`: deployed form; the state dict holds ``core{k}_codes`` (int8), ``core{k}_scale``
  (float32), ``core{k}_zero_point`` (int8) and ``bias``; float cores are decoded from them on load.

Importing this module registers ``TTLinear -> FakeQuantTTLinear`` in
:data:`~lightning_micro.core.quantizers.FAKE_QUANT_TYPES` (:mod:`lightning_micro.core.transforms` imports it).

Example:
    >>> layer = TTLinear(64, 300, [4, 4, 2, 2], [3, 5, 5, 4], ranks=4)
    >>> deployed = to_low_bit_tt(FakeQuantTTLinear.from_float(layer, WeightQuantSpec(4)), WeightQuantSpec(4))
    >>> sorted(deployed.state_dict())[:4]
    ['bias', 'core0_codes', 'core0_scale', 'core0_zero_point']
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_micro.core.quantizers import FAKE_QUANT_TYPES, WeightQuantSpec, dequantize, fake_quantize, quantize_codes
from lightning_micro.core.tensor_train import TTLinear, to_matrix


def _rows(core: torch.Tensor) -> torch.Tensor:
    r_prev, m, n, r_next = core.shape
    return core.reshape(r_prev * m, n * r_next)


def quantize_core(core: torch.Tensor, spec: WeightQuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes, scale and zero point of a TT core: ``core ~ (codes - zero_point) * scale``.

    Args:
        core: a ``(r_prev, m, n, r_next)`` core.
        spec: the grid; per channel means one scale per ``(r_prev, m)`` row.

    Returns:
        ``codes`` (int8, the core's shape), ``scale`` (float32) and ``zero_point`` (int8), both shaped
        ``(r_prev, m, 1, 1)`` per channel or ``(1, 1, 1, 1)`` per tensor.
    """
    codes, scale, zero_point = quantize_codes(_rows(core), spec)
    stats_shape = (*core.shape[:2], 1, 1) if spec.per_channel else (1, 1, 1, 1)
    return codes.reshape(core.shape), scale.reshape(stats_shape), zero_point.reshape(stats_shape)


def fake_quantize_core(core: torch.Tensor, spec: WeightQuantSpec) -> torch.Tensor:
    """``core`` rounded to its grid (the values :func:`quantize_core`'s codes decode to), with the
    straight-through gradient of :func:`~lightning_micro.core.quantizers.fake_quantize`."""
    return fake_quantize(_rows(core), spec).reshape(core.shape)


class FakeQuantTTLinear(TTLinear):
    """``TTLinear`` computing with fake-quantized cores while ``enabled``; same parameters, same state-dict keys.

    The float cores stay the parameters (the latent weights the optimizer updates). Without gradients the
    quantized cores, and the matrix rebuilt from them, are computed once per change of the latent cores, the
    switch or the grid.

    Example:
        >>> layer = FakeQuantTTLinear.from_float(TTLinear(64, 300, [4, 4, 2, 2], [3, 5, 5, 4], 4), WeightQuantSpec(2))
        >>> layer(torch.randn(8, 64)).shape
        torch.Size([8, 300])
    """

    spec: WeightQuantSpec
    enabled: bool
    _quantized_cores: tuple[list, list[torch.Tensor]] | None = None  # (key, cores) of the last no-grad quantization

    @classmethod
    def from_float(cls, layer: TTLinear, spec: WeightQuantSpec) -> FakeQuantTTLinear:
        """``layer`` fake-quantized with ``spec``, sharing its very ``Parameter`` objects (optimizers stay valid)."""
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        # The float layer's rebuilt matrix is not the quantized one; plans depend on shapes only but stay per layer.
        new._plans, new._gradient_plans, new._cached = dict(layer._plans), dict(layer._gradient_plans), None
        new._quantized_cores = None
        new.spec, new.enabled = spec, True
        return new

    def latent_cores(self) -> list[torch.Tensor]:
        """The float cores: the parameters, as trained."""
        return super().core_tensors()

    def _latent_key(self) -> list:
        # What the quantized cores are a function of. In-place updates (optimizer steps, load_state_dict) bump the
        # parameters' version counters; the ids catch a core replaced by another Parameter.
        latent = self.latent_cores()
        return [self.enabled, self.spec, *(id(c) for c in latent), *(c._version for c in latent)]

    def core_tensors(self) -> list[torch.Tensor]:
        """The cores the forward computes with: fake-quantized while ``enabled``, else the latent ones."""
        latent = self.latent_cores()
        if not self.enabled:
            return latent
        if torch.is_grad_enabled() and any(c.requires_grad for c in latent):
            return [fake_quantize_core(c, self.spec) for c in latent]
        # Inference tensors cannot be saved for backward: a set made in inference mode is not reused outside it.
        key = [torch.is_inference_mode_enabled(), *self._latent_key()]
        if self._quantized_cores is None or self._quantized_cores[0] != key:
            with torch.no_grad():
                self._quantized_cores = (key, [fake_quantize_core(c, self.spec) for c in latent])
        return list(self._quantized_cores[1])

    def _rebuilt(self, cores: list[torch.Tensor]) -> torch.Tensor:
        # ``cores`` are quantized copies made afresh whenever the latent cores change, so their own version counters
        # say nothing: key the matrix on the latent cores, the switch and the grid instead.
        key = self._latent_key()
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, to_matrix(cores))
        return self._cached[1]

    def _apply(self, fn, recurse=True):
        self._quantized_cores = None  # .to(), .double() ... move the latent cores without bumping their versions
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.spec.bits}, enabled={self.enabled}"


def _decode_cores(module: LowBitTTLinear, incompatible_keys=None) -> None:
    for k in range(len(module.ranks) - 1):
        decoded = dequantize(getattr(module, f"core{k}_codes"), getattr(module, f"core{k}_scale"),
                             getattr(module, f"core{k}_zero_point"))
        setattr(module, f"core{k}", decoded)
    # The decoded cores are new tensors, whose version counters can equal the old ones': drop the rebuilt matrix.
    module._cached = None


class LowBitTTLinear(TTLinear):
    """The deployed form of a (fake-quantized) ``TTLinear``: cores stored as integer codes, run as float cores.

    State dict: per core ``k``, ``core{k}_codes`` (int8, the core's shape), ``core{k}_scale`` (float32) and
    ``core{k}_zero_point`` (int8) as :func:`quantize_core` gives them, and ``bias``. The float cores are buffers
    ``core{k}`` outside the state dict, decoded here and again whenever the codes are loaded; the forward is
    ``TTLinear``'s own on them (same plans, same cached matrix), so the layer costs what the float one costs.
    ``decoded_weights`` names those buffers, for :func:`lightning_micro.report.measure.weight_tensors`.

    Args:
        layer: the layer to deploy: a ``TTLinear``, a :class:`FakeQuantTTLinear` (its latent cores are encoded)
            or a ``LowBitTTLinear``. Its bias ``Parameter`` is shared, not copied.
        spec: the grid of the codes.
    """

    def __init__(self, layer: TTLinear, spec: WeightQuantSpec) -> None:
        nn.Module.__init__(self)  # not TTLinear's: here the cores are codes, never float parameters
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.in_factors, self.out_factors = list(layer.in_factors), list(layer.out_factors)
        self.ranks = list(layer.ranks)
        self.spec = spec
        self._plans, self._gradient_plans, self._cached = dict(layer._plans), dict(layer._gradient_plans), None
        self.bias = layer.bias
        for k, core in enumerate(list(layer.cores)):
            codes, scale, zero_point = quantize_core(core, spec)
            self.register_buffer(f"core{k}_codes", codes)
            self.register_buffer(f"core{k}_scale", scale)
            self.register_buffer(f"core{k}_zero_point", zero_point)
            self.register_buffer(f"core{k}", dequantize(codes, scale, zero_point), persistent=False)
        self.register_load_state_dict_post_hook(_decode_cores)
        self.train(layer.training)

    @property
    def decoded_weights(self) -> tuple[str, ...]:
        """Names of the decoded float cores (buffers): the weights this layer computes with."""
        return tuple(f"core{k}" for k in range(len(self.ranks) - 1))

    @property
    def cores(self) -> list[torch.Tensor]:
        """The decoded cores (read by ``TTLinear``'s plans for their shapes)."""
        return self.core_tensors()

    def core_tensors(self) -> list[torch.Tensor]:
        return [self._buffers[name] for name in self.decoded_weights]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.spec.bits}"


def to_low_bit_tt(layer: TTLinear, spec: WeightQuantSpec) -> LowBitTTLinear:
    """``layer`` (a ``TTLinear`` or :class:`FakeQuantTTLinear`) with its current cores stored as integer codes.

    The result computes exactly what ``FakeQuantTTLinear.from_float(layer, spec)`` computes in eval mode.
    """
    return LowBitTTLinear(layer, spec)


# Registered beside its definition; FAKE_QUANT_TYPES stays the one registry of fake-quantizable layer types.
FAKE_QUANT_TYPES[TTLinear] = FakeQuantTTLinear
