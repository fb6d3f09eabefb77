"""Low-bit weight quantizers (1, 2, 4 and 8 bits) for quantization-aware training, as pure functions and thin
modules.

Integer kernels on the CPU exist for int8 only (see :mod:`lightning_micro.core.int8_backend`); narrower weights
are trained here with fake quantization and a straight-through estimator, stored as packed integer codes, and
run as float weights decoded from those codes.

- ``bits >= 2``: uniform grid. Symmetric: ``scale = max|w| / qmax`` with ``qmax = 2**(bits-1) - 1`` and codes
  in ``[-qmax, qmax]`` (zero is a code, so pruned weights stay exactly zero). Affine: ``scale = (max - min) /
  (2**bits - 1)``, codes in ``[0, 2**bits - 1]`` shifted by an integer zero point; zero is exact as well.
- ``bits == 1``: binary weights, BinaryConnect/XNOR-Net style: ``w_b = alpha * sign(w)`` with ``alpha =
  mean|w|`` over the channel's non-zero weights (XNOR-Net's optimal scale). A weight that is exactly zero
  (pruned) keeps code 0.

The scale is a per-output-channel (``per_channel=True``) or per-tensor statistic of the latent weights at every
step; nothing is learned but the weights. Gradients pass straight through to the latent weights, zeroed where
``|w| > clip`` (default 1) for binary weights (BinaryConnect's hard-tanh window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

WEIGHT_BITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class WeightQuantSpec:
    """How a weight tensor is quantized: bit width, per-channel or per-tensor scale, symmetric or affine."""

    bits: int = 8
    per_channel: bool = True
    symmetric: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in WEIGHT_BITS:
            raise ValueError(f"bits must be one of {list(WEIGHT_BITS)}, got {self.bits!r}")
        if self.bits == 1 and not self.symmetric:
            raise ValueError("binary weights (bits=1) are symmetric by definition; set symmetric=True")


def _reduce(w: torch.Tensor, per_channel: bool, op) -> torch.Tensor:
    """``op`` over each output channel (dim 0) or over the whole tensor, shaped to broadcast against ``w``."""
    if per_channel and w.dim() > 1:
        return op(w.reshape(w.shape[0], -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))
    return op(w.reshape(1, -1), dim=1).reshape([1] * w.dim())


def quantize_codes(w: torch.Tensor, spec: WeightQuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes, scale and zero point of ``w``: ``w ~ (codes - zero_point) * scale``.

    ``codes`` is int8 with ``w``'s shape; ``scale`` (float32) and ``zero_point`` (int8) broadcast against it
    (one entry per output channel, or one for the tensor).
    """
    w = w.detach().float()
    tiny = torch.finfo(torch.float32).tiny
    if spec.bits == 1:
        # mean |w| over the non-zero weights: pruned (zero) weights keep code 0 and do not shrink the scale
        total = _reduce(w.abs(), spec.per_channel, lambda t, dim: t.sum(dim=dim))
        count = _reduce((w != 0).float(), spec.per_channel, lambda t, dim: t.sum(dim=dim)).clamp_min(1.0)
        scale = (total / count).clamp_min(tiny)
        codes = torch.sign(w)
        zero_point = torch.zeros_like(scale)
    elif spec.symmetric:
        qmax = 2 ** (spec.bits - 1) - 1
        scale = (_reduce(w.abs(), spec.per_channel, lambda t, dim: t.amax(dim=dim)) / qmax).clamp_min(tiny)
        codes = torch.clamp(torch.round(w / scale), -qmax, qmax)
        zero_point = torch.zeros_like(scale)
    else:
        levels = 2**spec.bits - 1
        low = _reduce(w, spec.per_channel, lambda t, dim: t.amin(dim=dim)).clamp_max(0.0)  # zero stays on the grid
        high = _reduce(w, spec.per_channel, lambda t, dim: t.amax(dim=dim)).clamp_min(0.0)
        scale = ((high - low) / levels).clamp_min(tiny)
        zero_point = torch.clamp(torch.round(-low / scale), 0, levels)
        # Codes are stored minus 2**(bits-1) so they fit int8 for every width.
        offset = 2 ** (spec.bits - 1)
        codes = torch.clamp(torch.round(w / scale) + zero_point, 0, levels) - offset
        zero_point = zero_point - offset
    return codes.to(torch.int8), scale, zero_point.to(torch.int8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``(codes - zero_point) * scale`` in float32: the weights a quantized layer computes with."""
    return (codes.float() - zero_point.float()) * scale


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized weight exactly; backward: the gradient, masked outside the clip window."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, quantized: torch.Tensor, window: torch.Tensor | None):
        ctx.save_for_backward(window if window is not None else torch.ones((), dtype=torch.bool, device=w.device))
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (window,) = ctx.saved_tensors
        return grad * window, None, None


def fake_quantize(w: torch.Tensor, spec: WeightQuantSpec, clip: float = 1.0) -> torch.Tensor:
    """``w`` rounded to its quantized values in the forward pass, with a straight-through gradient.

    The forward value is exactly :func:`dequantize` of :func:`quantize_codes`, so a layer exported as codes
    computes the same numbers as it did in training.
    """
    codes, scale, zero_point = quantize_codes(w, spec)
    quantized = dequantize(codes, scale, zero_point).to(w.dtype)
    window = (w.detach().abs() <= clip) if spec.bits == 1 else None
    return _StraightThrough.apply(w, quantized, window)


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` whose forward uses the fake-quantized weight; same parameters, same state-dict keys."""

    spec: WeightQuantSpec
    enabled: bool

    @classmethod
    def from_float(cls, layer: nn.Linear, spec: WeightQuantSpec) -> FakeQuantLinear:
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)  # the very same Parameter objects: optimizers and masks stay valid
        new.spec, new.enabled = spec, True
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quantize(self.weight, self.spec) if self.enabled else self.weight
        return F.linear(x, weight, self.bias)


class _FakeQuantConv:
    spec: WeightQuantSpec
    enabled: bool

    @classmethod
    def from_float(cls, layer: nn.Module, spec: WeightQuantSpec):
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        new.spec, new.enabled = spec, True
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quantize(self.weight, self.spec) if self.enabled else self.weight
        return self._conv_forward(x, weight, self.bias)


class FakeQuantConv1d(_FakeQuantConv, nn.Conv1d):
    """``nn.Conv1d`` with a fake-quantized weight."""


class FakeQuantConv2d(_FakeQuantConv, nn.Conv2d):
    """``nn.Conv2d`` with a fake-quantized weight."""


FAKE_QUANT_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FakeQuantLinear, nn.Conv1d: FakeQuantConv1d, nn.Conv2d: FakeQuantConv2d,
}


def fake_quant_type(layer: nn.Module) -> type[nn.Module] | None:
    """The fake-quantized class for ``layer``, taken by what the layer is: a library's subclass of ``nn.Linear``
    (timm's ``Linear``, torch's ``NonDynamicallyQuantizableLinear``) is a ``Linear``; the most specific
    registered base wins. ``None`` for a layer already fake-quantized or of no registered type."""
    if isinstance(layer, tuple(FAKE_QUANT_TYPES.values())):
        return None
    return next((FAKE_QUANT_TYPES[cls] for cls in type(layer).__mro__ if cls in FAKE_QUANT_TYPES), None)


def _refresh_decoded_weight(module: nn.Module, incompatible_keys=None) -> None:
    module.weight = dequantize(module.weight_codes, module.weight_scale, module.weight_zero_point)


def to_low_bit(layer: nn.Module, spec: WeightQuantSpec, float_type: type[nn.Module]) -> nn.Module:
    """``layer`` (a fake-quantized or float layer) as a plain ``float_type`` layer whose weight is stored as
    integer codes: buffers ``weight_codes`` (int8), ``weight_scale``, ``weight_zero_point``; the float ``weight``
    is decoded from them (kept out of the state dict) whenever they are loaded. The forward is the float
    layer's own: the deployed layer costs exactly what the dense one costs."""
    codes, scale, zero_point = quantize_codes(layer.weight, spec)
    new = float_type.__new__(float_type)
    new.__dict__.update(layer.__dict__)
    new._parameters = {k: v for k, v in layer._parameters.items() if k != "weight"}
    new._buffers = dict(layer._buffers)
    new._non_persistent_buffers_set = set(layer._non_persistent_buffers_set)
    new.__dict__.pop("spec", None)
    new.__dict__.pop("enabled", None)
    new.register_buffer("weight_codes", codes)
    new.register_buffer("weight_scale", scale)
    new.register_buffer("weight_zero_point", zero_point)
    new.register_buffer("weight", dequantize(codes, scale, zero_point), persistent=False)
    new.register_load_state_dict_post_hook(_refresh_decoded_weight)
    return new
