"""QuantizationAwareTraining: train with quantized weights (and activations) in the loop, export integers.

The Lightning glue only: int8 goes through :mod:`lightning_micro.core.int8_backend` (torch.ao FX with x86 kernels,
or torchao's PT2E flow),
1/2/4-bit weights through :mod:`lightning_micro.core.quantizers`; both change the network with the recorded
transforms of :mod:`lightning_micro.core.transforms`, so checkpoints and the artifact rebuild it. What differs
between the two modes lives in two small schemes, :class:`Int8Scheme` and :class:`LowBitWeightScheme`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import (
    check_patterns,
    check_when,
    follow_selection,
    left_out_layers,
    left_out_line,
    select_layers,
)
from lightning_micro.callbacks.structure_change import change_structure
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.contract import example_input
from lightning_micro.core import int8_backend, transforms
from lightning_micro.core.quantizers import FAKE_QUANT_TYPES, WEIGHT_BITS, WeightQuantSpec
from lightning_micro.core.schedules import is_run_start
from lightning_micro.core.selection import is_of_type, read_by_parent

ACTIVATION_BITS = (8, 32)


class Int8Scheme:
    """Weights and activations in int8 (torch.ao FX graph mode, or torchao PT2E): the network is traced, fused and
    converted to integer kernels; the quantization ranges are observed while training."""

    name = "int8"
    prepare = "int8_qat_prepare"
    convert = "int8_convert"
    module_types = int8_backend.INT8_MODULE_TYPES

    def prepare_args(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> dict[str, Any]:
        example = example_input(pl_module, "QuantizationAwareTraining (int8)")
        args = {"input_shape": list(example.shape[1:]), "per_channel": qat.per_channel, "symmetric": qat.symmetric,
                "skip": qat.skipped, "backend": qat.kernel_backend}
        if example.dtype != torch.float32:  # token ids: the trace runs on integers
            args["input_dtype"] = str(example.dtype).removeprefix("torch.")
        return args

    def convert_args(self, qat: QuantizationAwareTraining) -> dict[str, Any]:
        return {}

    def set_phase(self, net: nn.Module, quantizing: bool, observing: bool, frozen_bn: bool) -> None:
        int8_backend.set_fake_quant(net, quantizing)
        int8_backend.set_observers(net, observing)
        int8_backend.freeze_bn_stats(net, frozen_bn)

    def stop_observing(self, net: nn.Module) -> None:
        int8_backend.set_observers(net, False)

    def check_alone(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> None:
        if not getattr(pl_module, "compressed_net_name", ""):
            raise ValueError(f"int8 quantization traces the network and replaces it by an integer graph, which "
                             f"cannot replace the LightningModule {type(pl_module).__name__} itself: set "
                             "compressed_net_name to the attribute that holds the network (e.g. 'net')")

    def quantize_new_layers(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> None:
        raise ValueError("the network changed after int8 QAT traced it; a traced graph cannot take new layers")

    def report_fields(self, qat: QuantizationAwareTraining) -> dict[str, Any]:
        if qat.kernel_backend == "pt2e":
            return {"quant/kernels": "int8 torchao pt2e (reference graph; int8_pt2e.compile_for_cpu lowers it)"}
        return {"quant/kernels": f"int8 torch.ao {qat.kernel_backend}"}

    def export_codecs(self, net: nn.Module) -> dict[str, str]:
        return int8_backend.export_codecs(net)


class LowBitWeightScheme:
    """1/2/4/8-bit weights with float activations: the selected layers' weights are fake-quantized with a
    straight-through gradient and exported as bit-packed integer codes; layers run as float at deployment."""

    name = "weights"
    prepare = "weight_fake_quant"
    convert = "weight_low_bit"
    module_types = tuple(sorted(t.__name__ for t in FAKE_QUANT_TYPES))

    def prepare_args(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> dict[str, Any]:
        return {"layers": qat.layers, **self._spec(qat)}

    def convert_args(self, qat: QuantizationAwareTraining) -> dict[str, Any]:
        return {"layers": qat.layers, **self._spec(qat)}

    @staticmethod
    def _spec(qat: QuantizationAwareTraining) -> dict[str, Any]:
        return {"bits": qat.weight_bits, "per_channel": qat.per_channel, "symmetric": qat.symmetric}

    def set_phase(self, net: nn.Module, quantizing: bool, observing: bool, frozen_bn: bool) -> None:
        for module in net.modules():
            if isinstance(module, tuple(FAKE_QUANT_TYPES.values())):
                module.enabled = quantizing

    def stop_observing(self, net: nn.Module) -> None:
        """Scales are read from the weights at every step: nothing to stop."""

    def check_alone(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> None:
        """Low-bit weights need nothing more of the run; every technique composes with them (swapped-in layers
        are fake-quantized when they appear)."""

    def quantize_new_layers(self, qat: QuantizationAwareTraining, pl_module: L.LightningModule) -> None:
        """Fake-quantize the selected layers that are not yet (swapped in after the prepare). The new modules
        share their parameters with the layers they wrap, so the optimizer needs no rebuild."""
        net = qat.net_of(pl_module)
        fake = tuple(FAKE_QUANT_TYPES.values())
        new = [name for name in qat.layers if not isinstance(net.get_submodule(name), fake)]
        if new:
            pl_module.apply_transform(self.prepare, layers=new, **self._spec(qat))

    def report_fields(self, qat: QuantizationAwareTraining) -> dict[str, Any]:
        return {"quant/kernels": "float (weights decoded at load)"}

    def export_codecs(self, net: nn.Module) -> dict[str, str]:
        """Integer codes (``*_codes`` buffers) stored bit-packed, sparse and entropy-coded when smaller."""
        return {key: "codes" for key in net.state_dict() if key.endswith("_codes")}


class QuantizationAwareTraining(CompressionTechnique):
    """Fake-quantize the network while it trains, then convert it to the integer network that is exported.

    Two modes, chosen by the bit widths:

    - ``weight_bits=8, activation_bits=8``: PyTorch's int8 QAT (torch.ao FX graph mode, x86/fbgemm kernels; or
      with ``backend="pt2e"`` torchao's PT2E flow, ``X86InductorQuantizer``). Conv-bn(-relu) and linear-relu are
      fused; weights are fake-quantized per channel or per tensor,
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
    weights stay zero through fake quantization and conversion, and the integer codes are stored sparse. Layers
    swapped in by another technique are quantized: before ``start``, the selection follows them by name; after
    it (low-bit weights), they are fake-quantized when they appear. Int8 cannot take TT layers (torch.ao's graph
    mode cannot express a TT contraction) nor layers swapped in after it traced the network: both are refused
    before the first step, naming what works instead.

    The two modes are two small schemes (:class:`Int8Scheme`, :class:`LowBitWeightScheme`) behind this callback.

    Args:
        weight_bits: 8, 4, 2 or 1.
        activation_bits: 8 (integer kernels, needs ``weight_bits=8``) or 32 (float).
        start: epoch (int), fraction of the run (float) or step (``"step:N"``) from which fake quantization is on.
        freeze_observers: when the int8 observers stop updating the ranges (``None``: at the end), same units; at
            the earliest one step after ``start``, so that they have seen a batch.
        freeze_bn: when fused BatchNorms freeze their running statistics (``None``: never).
        per_channel: one scale per output channel (``True``) or per tensor.
        symmetric: symmetric weight grid (zero point 0) or affine.
        include: name patterns (glob or ``re:``) of the layers to quantize, as module names (``fc1``,
            ``features.*``).
        exclude: name patterns of layers kept in float.
        backend: int8 flow: ``x86`` (default), ``fbgemm`` or ``qnnpack`` (torch.ao FX with that quantized engine;
            ``pt2e`` instead, saying so, where torch.ao's FX flow cannot be imported), or ``pt2e`` (torchao's PT2E
            flow: per-channel symmetric weights only).

    Raises:
        ValueError: an argument outside its allowed values (named in the message).

    Example:
        >>> qat = QuantizationAwareTraining(weight_bits=8, activation_bits=8, start=0, freeze_bn=0.75)
        >>> trainer = L.Trainer(callbacks=[qat])
    """

    technique = "QuantizationAwareTraining"
    family = "quantization"
    when_arguments = ("start", "freeze_observers", "freeze_bn")
    changes_structure = True
    must_end_before = (("start", "no epoch would train quantized"),)

    def __init__(
        self,
        weight_bits: int = 8,
        activation_bits: int = 8,
        start: int | float | str = 0.5,
        freeze_observers: int | float | str | None = None,
        freeze_bn: int | float | str | None = None,
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
        self.scheme: Int8Scheme | LowBitWeightScheme = Int8Scheme() if activation_bits == 8 else LowBitWeightScheme()
        for name, value in (("per_channel", per_channel), ("symmetric", symmetric)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        self.per_channel, self.symmetric = per_channel, symmetric
        WeightQuantSpec(weight_bits, per_channel, symmetric)  # binary + affine fails here
        self.start = check_when("start", start)
        self.freeze_observers = None if freeze_observers is None else check_when("freeze_observers",
                                                                                 freeze_observers)
        self.freeze_bn = None if freeze_bn is None else check_when("freeze_bn", freeze_bn)
        int8_backend.check_backend(backend, per_channel or activation_bits != 8, symmetric or activation_bits != 8)
        self.backend = backend
        self.kernel_backend = backend  # the one that runs: resolved in setup (torch.ao FX may be gone)
        self.include, self.exclude = check_patterns(include, exclude)
        self.selected_at_start: list[str] = []  # resolved by check_model, on the network as configured
        self.layers: list[str] = []  # the selection on the network as it is now
        self.skipped: list[str] = []  # layers of the mode's types not quantized (int8 keeps them in float)
        self.left_out: dict[str, str] = {}  # selected by the patterns, left out (their parent reads their weight)
        self._phase: tuple[bool, bool, bool] | None = None

    @property
    def mode(self) -> str:
        """``int8`` or ``weights`` (low-bit weights, float activations)."""
        return self.scheme.name

    @property
    def module_types(self) -> tuple[str, ...]:
        return self.scheme.module_types

    @property
    def state_key(self) -> str:
        return self._generate_state_key(weight_bits=self.weight_bits, activation_bits=self.activation_bits)

    # --- selection -------------------------------------------------------------------------------------------

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Resolve which layers are quantized; raise ``ValueError`` naming the argument when a pattern matches
        no layer, or only layers of a type this mode cannot quantize."""
        self.selected_at_start = select_layers(net, self.include, self.exclude, self.module_types,
                                               f"the {self.mode} mode of QAT")
        self.left_out = left_out_layers(net, self.include, self.exclude, self.module_types)
        self._select(net)

    def _select(self, net: nn.Module) -> None:
        """The selection on ``net`` as it is now: what the patterns match, plus the layers that replaced a
        selected one (a low-rank layer's factors stand where the selected Linear stood)."""
        typed = [n for n, m in net.named_modules() if n and is_of_type(m, self.module_types)]
        quantizable = [n for n in typed if read_by_parent(net, n) is None]
        self.layers = follow_selection(quantizable, self.include, self.exclude, self.selected_at_start)
        # int8 keeps these in float: a layer whose parent reads its weight included (torch.ao would swap it for a
        # fake-quantized layer its parent never calls, which then stays in the converted network)
        self.skipped = [n for n in typed if n not in self.layers]

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def selection_resolved(self) -> bool:
        return bool(self.selected_at_start)

    @override
    def check_alone(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scheme.check_alone(self, pl_module)

    @override
    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode == "int8":
            self.kernel_backend, fallback = int8_backend.resolve_backend(self.backend)
            if fallback:
                rank_zero_warn(f"QuantizationAwareTraining: {fallback}")
        if is_run_start(self.start) and not self._prepared(pl_module):
            self._select(self.net_of(pl_module))
            change_structure(trainer, pl_module, self.scheme.prepare, during_fit=False,
                             **self.scheme.prepare_args(self, pl_module))
            # Nothing is observed or quantized before the first training step: a model summary's forward of an
            # all-zero example would otherwise set every range to [0, 0], which the moving averages then need
            # hundreds of steps to leave, saturating every activation meanwhile.
            self.scheme.set_phase(self.net_of(pl_module), quantizing=False, observing=False, frozen_bn=False)
        elif not self._prepared(pl_module):
            # Prepared later, mid-fit: try it now on a copy, so a network the backend cannot take (one torch.fx
            # cannot trace, say) fails before the first training step rather than at `start`.
            args = self.scheme.prepare_args(self, pl_module)
            transforms.TRANSFORMS[self.scheme.prepare](copy.deepcopy(self.net_of(pl_module)), **args)
        rank_zero_info(f"QuantizationAwareTraining: {self.weight_bits}-bit weights, "
                       f"{self.activation_bits}-bit activations, {len(self.layers)} layers, from {self.start!r}"
                       f"{left_out_line(self.left_out)}")

    def _prepared(self, pl_module: L.LightningModule) -> bool:
        return any(entry["transform"] == self.scheme.prepare for entry in pl_module.transforms)

    def _converted(self, pl_module: L.LightningModule) -> bool:
        return any(entry["transform"] == self.scheme.convert for entry in pl_module.transforms)

    def _phase_at(self, step: int) -> tuple[bool, bool, bool]:
        """(quantizing, observing, BatchNorm frozen) at optimizer step ``step``: a function of the step only, so
        a resumed run continues exactly."""
        def reached(name: str) -> bool:
            return name in self._steps and step >= self._steps[name]
        return reached("start"), not reached("freeze_observers"), reached("freeze_bn")

    def _apply_phase(self, pl_module: L.LightningModule, phase: tuple[bool, bool, bool]) -> None:
        if phase != self._phase:
            self.scheme.set_phase(self.net_of(pl_module), *phase)
            self._phase = phase

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # The weights just restored carry the observers' on/off flags (buffers) as they were saved: on, in a
        # checkpoint written mid-epoch (an interruption, every_n_train_steps) or at an epoch's end without
        # validation. Lightning's model summary then runs the all-zero example input at fit start, before the
        # first step, and the moving averages would pull every range towards [0, 0]. Nothing observes until the
        # first training step sets the phase again.
        if self._prepared(pl_module) and not self._converted(pl_module):
            self.scheme.stop_observing(self.net_of(pl_module))
            self._phase = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if "freeze_observers" in self._steps and "start" in self._steps:
            # The ranges see at least one training batch before they freeze: in a run shortened to a few steps,
            # start and freeze_observers may round to the same step, and an observer frozen before it observed
            # anything has no range to quantize with.
            self._steps["freeze_observers"] = max(self._steps["freeze_observers"], self._steps["start"] + 1)
        self._phase = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        step = trainer.global_step
        if step >= self.step_at("start") and not self._prepared(pl_module):
            # Fine-tuning a float-trained network: prepare it now (modules replaced, optimizer rebuilt); layers
            # swapped in since the start are selected by following the layers they replaced.
            self._select(self.net_of(pl_module))
            change_structure(trainer, pl_module, self.scheme.prepare, during_fit=True,
                             **self.scheme.prepare_args(self, pl_module))
            self._phase = None
            rank_zero_info(f"QuantizationAwareTraining: fake quantization on from step {step}")
        if self._prepared(pl_module):
            self._apply_phase(pl_module, self._phase_at(step))

    @override
    def on_structure_change(self, trainer: L.Trainer, pl_module: L.LightningModule, entry: Any) -> None:
        if entry["transform"] in (self.scheme.prepare, self.scheme.convert) or not self.selected_at_start:
            return
        self._select(self.net_of(pl_module))
        if self._prepared(pl_module) and not self._converted(pl_module):
            self.scheme.quantize_new_layers(self, pl_module)
            self._phase = None  # the new layers take the current phase at the next step

    def _quantizing_in_fit(self, pl_module: L.LightningModule) -> bool:
        return bool(self._steps) and self._prepared(pl_module) and not self._converted(pl_module)

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Ranges come from training batches only: never from validation, nor from the sanity check that runs
        # before training (and after a resume, which must not move the restored ranges).
        if self._prepared(pl_module) and not self._converted(pl_module):
            self.scheme.stop_observing(self.net_of(pl_module))
            self._phase = None

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._quantizing_in_fit(pl_module):
            self.scheme.stop_observing(self.net_of(pl_module))
            self._phase = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cpu":
            self.finalize(pl_module)
        else:  # integer kernels run on the CPU: the run converts at export; trainer.test sees fake quantization
            rank_zero_info("QuantizationAwareTraining: not on the CPU, so the network is converted at export")

    @override
    def finalize(self, pl_module: L.LightningModule) -> None:
        """Convert the trained network to its deployable form (integer kernels, or integer-coded weights)."""
        if self._converted(pl_module) or not self._prepared(pl_module):
            return
        if self.mode == "int8":
            pl_module.cpu()  # the integer kernels are CPU kernels
        pl_module.apply_transform(self.scheme.convert, **self.scheme.convert_args(self))

    # --- report, export --------------------------------------------------------------------------------------

    @override
    def report_fields(self, net: nn.Module) -> dict[str, float | int | str]:
        """Bit widths, the number of quantized layers and the kernels the deployed network runs."""
        fields = {"quant/weight_bits": self.weight_bits, "quant/activation_bits": self.activation_bits,
                  "quant/layers": len(self.layers), **self.scheme.report_fields(self)}
        if self.left_out:
            fields["quant/left_out"] = ", ".join(self.left_out)
        return fields

    @override
    def export_codecs(self, net: nn.Module) -> dict[str, str]:
        """Low-bit codes are stored bit-packed (sparse and entropy-coded when smaller); int8 tensors of the
        integer network are stored the same way by the artifact's ``qtensor`` codec."""
        return self.scheme.export_codecs(net)
