"""QuantizationAwareTraining: train with quantized weights (and activations) in the loop, export integers.

The Lightning glue only: int8 goes through :mod:`lightning_micro.core.int8_backend` (torch.ao FX, x86 kernels),
1/2/4-bit weights through :mod:`lightning_micro.core.quantizers`; both change the network with the recorded
transforms of :mod:`lightning_micro.core.transforms`, so checkpoints and the artifact rebuild it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.arguments import check_patterns, check_when, select_layers, target_net
from lightning_micro.callbacks.structure import transform_during_fit
from lightning_micro.core import int8_backend, transforms
from lightning_micro.core.quantizers import FAKE_QUANT_TYPES, WEIGHT_BITS, WeightQuantSpec
from lightning_micro.core.selection import is_of_type

ACTIVATION_BITS = (8, 32)
LOW_BIT_MODULE_TYPES = tuple(sorted(t.__name__ for t in FAKE_QUANT_TYPES))
PREPARE = {"int8": "int8_qat_prepare", "weights": "weight_fake_quant"}
CONVERT = {"int8": "int8_convert", "weights": "weight_low_bit"}


class QuantizationAwareTraining(Callback):
    """Fake-quantize the network while it trains, then convert it to the integer network that is exported.

    Two modes, chosen by the bit widths:

    - ``weight_bits=8, activation_bits=8``: PyTorch's int8 QAT (torch.ao FX graph mode, x86/fbgemm kernels).
      Conv-bn(-relu) and linear-relu are fused; weights are fake-quantized per channel or per tensor,
      symmetric or affine, activations affine uint8. At the end of fit the network is converted to integer
      kernels (on the CPU); that network is tested and exported.
    - ``weight_bits`` 1, 2 or 4 (or 8 with ``activation_bits=32``): weights only, float activations.
      ``Linear``/``Conv1d``/``Conv2d`` weights are fake-quantized with a straight-through estimator (1 bit:
      ``mean|w| * sign(w)`` per channel, BinaryConnect/XNOR-Net). At the end of fit they become integer codes
      (exported bit-packed) that the deployed layers decode to float weights once, at load.

    The network trains in float until epoch ``start``, then it is prepared (modules replaced by their
    fake-quantized versions, the optimizer rebuilt with its state carried over) and trains quantization-aware:
    fine-tuning a float-trained network, the usual recipe. With ``start=0`` it is prepared in ``setup`` and
    trains quantized from scratch. Observers (int8) update the ranges from the training batches (not from
    validation) until ``freeze_observers``; fused BatchNorms update their statistics until ``freeze_bn`` (Jacob
    et al. 2018). All of it is a function of the epoch, so a resumed run continues exactly; the checkpoint's
    record of transforms re-prepares the network before its weights load.

    Composes with pruning (``compression=[gmp,qat]``): zero is exactly representable in every scheme, so pruned
    weights stay zero through fake quantization and conversion, and the integer codes are stored sparse.

    Args:
        weight_bits: 8, 4, 2 or 1.
        activation_bits: 8 (integer kernels, needs ``weight_bits=8``) or 32 (float).
        start: epoch (int) or fraction of the run (float) from which fake quantization is on.
        freeze_observers: when the int8 observers stop updating the ranges (``None``: at the end).
        freeze_bn: when fused BatchNorms freeze their running statistics (``None``: never).
        per_channel: one scale per output channel (``True``) or per tensor.
        symmetric: symmetric weight grid (zero point 0) or affine.
        include: name patterns (glob or ``re:``) of the layers to quantize, as module names (``fc1``,
            ``features.*``).
        exclude: name patterns of layers kept in float.
        backend: int8 kernels: ``x86`` (default), ``fbgemm`` or ``qnnpack``.

    Raises:
        ValueError: an argument outside its allowed values (named in the message).

    Example:
        >>> qat = QuantizationAwareTraining(weight_bits=8, activation_bits=8, start=0, freeze_bn=0.75)
        >>> trainer = L.Trainer(callbacks=[qat])  # doctest: +SKIP
    """

    def __init__(
        self,
        weight_bits: int = 8,
        activation_bits: int = 8,
        start: int | float = 0.5,
        freeze_observers: int | float | None = None,
        freeze_bn: int | float | None = None,
        per_channel: bool = True,
        symmetric: bool = True,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        backend: str = "x86",
    ) -> None:
        super().__init__()
        if isinstance(weight_bits, bool) or weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {list(WEIGHT_BITS)}, got {weight_bits!r}")
        if isinstance(activation_bits, bool) or activation_bits not in ACTIVATION_BITS:
            raise ValueError(f"activation_bits must be one of {list(ACTIVATION_BITS)} (32: float), got "
                             f"{activation_bits!r}")
        if activation_bits == 8 and weight_bits != 8:
            raise ValueError(f"activation_bits=8 needs weight_bits=8 (the CPU's integer kernels are int8); "
                             f"for {weight_bits}-bit weights use activation_bits=32")
        self.weight_bits, self.activation_bits = weight_bits, activation_bits
        self.mode = "int8" if activation_bits == 8 else "weights"
        for name, value in (("per_channel", per_channel), ("symmetric", symmetric)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        self.per_channel, self.symmetric = per_channel, symmetric
        WeightQuantSpec(weight_bits, per_channel, symmetric)  # binary + affine fails here
        self.start = check_when("start", start)
        self.freeze_observers = None if freeze_observers is None else check_when("freeze_observers",
                                                                                 freeze_observers)
        self.freeze_bn = None if freeze_bn is None else check_when("freeze_bn", freeze_bn)
        if backend not in int8_backend.BACKENDS:
            raise ValueError(f"backend must be one of {list(int8_backend.BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.include, self.exclude = check_patterns(include, exclude)
        self.layers: list[str] = []  # resolved by check_model
        self.skipped: list[str] = []
        self._epochs: dict[str, int | None] = {}

    @property
    def module_types(self) -> tuple[str, ...]:
        return int8_backend.INT8_MODULE_TYPES if self.mode == "int8" else LOW_BIT_MODULE_TYPES

    @property
    def state_key(self) -> str:
        return self._generate_state_key(weight_bits=self.weight_bits, activation_bits=self.activation_bits)

    # --- selection -------------------------------------------------------------------------------------------

    def check_model(self, net: nn.Module) -> None:
        """Resolve which layers are quantized; raise ``ValueError`` naming the argument when a pattern matches
        no layer, or only layers of a type this mode cannot quantize."""
        self.layers = select_layers(net, self.include, self.exclude, self.module_types,
                                    f"the {self.mode} mode of QAT")
        quantizable = [n for n, m in net.named_modules() if n and is_of_type(m, self.module_types)]
        self.skipped = [n for n in quantizable if n not in self.layers]

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "apply_transform"):
            raise ValueError("QuantizationAwareTraining needs a LightningModule with apply_transform(...), "
                             "e.g. lightning_micro.models.ClassifierModule")
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        self._epochs = {name: self._to_epoch(name, getattr(self, name), max_epochs)
                        for name in ("start", "freeze_observers", "freeze_bn")}
        if max_epochs is not None and self._epochs["start"] >= max_epochs:
            raise ValueError(f"start={self.start} is at or after the end of training "
                             f"(trainer.max_epochs={max_epochs}): no epoch would train quantized")
        if not self.layers:
            self.check_model(target_net(pl_module))
        if self._epochs["start"] == 0 and not self._prepared(pl_module):
            name, args = self._prepare_args(pl_module)
            pl_module.apply_transform(name, **args)
            # Nothing is observed or quantized before the first training step: a model summary's forward of an
            # all-zero example would otherwise set every range to [0, 0], which the moving averages then need
            # hundreds of steps to leave, saturating every activation meanwhile.
            self._set_phase(target_net(pl_module), epoch=-1, observing=False)
        elif not self._prepared(pl_module):
            # Prepared later, mid-fit: try it now on a copy, so a network the backend cannot take (one torch.fx
            # cannot trace, say) fails before the first training step rather than at `start`.
            name, args = self._prepare_args(pl_module)
            transforms.TRANSFORMS[name](copy.deepcopy(target_net(pl_module)), **args)
        rank_zero_info(f"QuantizationAwareTraining: {self.weight_bits}-bit weights, "
                       f"{self.activation_bits}-bit activations, {len(self.layers)} layers, from epoch "
                       f"{self._epochs['start']}")

    def _prepare_args(self, pl_module: L.LightningModule) -> tuple[str, dict[str, Any]]:
        if self.mode == "int8":
            return PREPARE["int8"], {"input_shape": list(pl_module.input_shape), "per_channel": self.per_channel,
                                     "symmetric": self.symmetric, "skip": self.skipped, "backend": self.backend}
        return PREPARE["weights"], {"layers": self.layers, "bits": self.weight_bits, "per_channel": self.per_channel,
                                    "symmetric": self.symmetric}

    def _prepared(self, pl_module: L.LightningModule) -> bool:
        return any(entry["transform"] == PREPARE[self.mode] for entry in pl_module.transforms)

    @staticmethod
    def _to_epoch(name: str, when: int | float | None, max_epochs: int | None) -> int | None:
        if when is None:
            return None
        if isinstance(when, float):
            if max_epochs is None:
                raise ValueError(f"{name}={when} is a fraction of the run, but trainer.max_epochs is not set")
            return int(round(when * max_epochs))
        if max_epochs is not None and when > max_epochs:
            raise ValueError(f"{name}={when} epochs is after the end of training (trainer.max_epochs={max_epochs})")
        return when

    def _set_phase(self, net: nn.Module, epoch: int, observing: bool = True) -> None:
        """Fake quantization, observers and BatchNorm statistics as the schedule says for ``epoch``."""
        quantizing = epoch >= 0 and epoch >= self._epochs["start"]
        frozen_observers = self._epochs["freeze_observers"] is not None and epoch >= self._epochs["freeze_observers"]
        frozen_bn = self._epochs["freeze_bn"] is not None and epoch >= self._epochs["freeze_bn"]
        if self.mode == "int8":
            int8_backend.set_fake_quant(net, quantizing)
            int8_backend.set_observers(net, observing and not frozen_observers)
            int8_backend.freeze_bn_stats(net, frozen_bn)
        else:
            for module in net.modules():
                if isinstance(module, tuple(FAKE_QUANT_TYPES.values())):
                    module.enabled = quantizing

    def _converted(self, pl_module: L.LightningModule) -> bool:
        return any(entry["transform"] == CONVERT[self.mode] for entry in pl_module.transforms)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch >= self._epochs["start"] and not self._prepared(pl_module):
            # Fine-tuning a float-trained network: prepare it now (modules replaced, optimizer rebuilt).
            name, args = self._prepare_args(pl_module)
            transform_during_fit(trainer, pl_module, name, **args)
        if self._prepared(pl_module):
            self._set_phase(target_net(pl_module), epoch)
        if epoch == self._epochs["start"]:
            rank_zero_info(f"QuantizationAwareTraining: fake quantization on from epoch {epoch}")

    def _quantizing_in_fit(self, pl_module: L.LightningModule) -> bool:
        return bool(self._epochs) and self._prepared(pl_module) and not self._converted(pl_module)

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Ranges come from training batches only: never from validation, nor from the sanity check that runs
        # before training (and after a resume, which must not move the restored ranges).
        if not self._quantizing_in_fit(pl_module):
            return
        if trainer.sanity_checking:
            if self.mode == "int8":
                int8_backend.set_observers(target_net(pl_module), False)  # the next epoch start resets them
        else:
            self._set_phase(target_net(pl_module), trainer.current_epoch, observing=False)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._quantizing_in_fit(pl_module) and self.mode == "int8":
            int8_backend.set_observers(target_net(pl_module), False)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._quantizing_in_fit(pl_module) and not trainer.sanity_checking:
            self._set_phase(target_net(pl_module), trainer.current_epoch)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cpu":
            self.finalize(pl_module)
        else:  # integer kernels run on the CPU: the run converts at export; trainer.test sees fake quantization
            rank_zero_info("QuantizationAwareTraining: not on the CPU, so the network is converted at export")

    def finalize(self, pl_module: L.LightningModule) -> None:
        """Convert the trained network to its deployable form (integer kernels, or integer-coded weights)."""
        if self._converted(pl_module) or not self._prepared(pl_module):
            return
        if self.mode == "int8":
            pl_module.cpu()
            pl_module.apply_transform(CONVERT["int8"])
        else:
            pl_module.apply_transform(CONVERT["weights"], layers=self.layers, bits=self.weight_bits,
                                      per_channel=self.per_channel, symmetric=self.symmetric)

    # --- report, export --------------------------------------------------------------------------------------

    def report_fields(self, net: nn.Module) -> dict[str, float | int | str]:
        """Bit widths, the number of quantized layers and the kernels the deployed network runs."""
        kernels = f"int8 torch.ao {self.backend}" if self.mode == "int8" else "float (weights decoded at load)"
        return {"quant/weight_bits": self.weight_bits, "quant/activation_bits": self.activation_bits,
                "quant/layers": len(self.layers), "quant/kernels": kernels}

    def export_codecs(self, net: nn.Module) -> dict[str, Any]:
        """Low-bit codes are stored bit-packed (sparse and entropy-coded when smaller); int8 tensors of the
        integer network are stored the same way by the artifact's ``qtensor`` codec."""
        return {f"{name}.weight_codes": "codes" for name in self.layers} if self.mode == "weights" else {}
