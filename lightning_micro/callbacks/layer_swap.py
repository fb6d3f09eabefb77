"""LayerSwap: the shared Lightning glue of techniques that replace selected layers by new ones at one epoch.

A subclass names its registered transform (:data:`lightning_micro.core.transforms.TRANSFORMS`) and says, for each
selected layer, the plain arguments that describe its replacement (:meth:`LayerSwap.layer_spec`). This class
selects the layers (name patterns and types, checked before training), swaps them at ``swap_at`` (in ``setup``
when it is 0, otherwise between epochs through :func:`transform_during_fit`, which rebuilds the optimizer and
the DDP wrapper) and leaves the rest to the record of transforms: a checkpoint or an artifact written after the
swap rebuilds the swapped structure before its weights load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import (
    check_patterns,
    check_when,
    left_out_layers,
    left_out_line,
    select_layers,
)
from lightning_micro.callbacks.structure_change import change_structure
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core.schedules import is_run_start
from lightning_micro.core.selection import output_layers

OUTPUT_LAYER = "the output layer (name it in include, or set keep_output_layer false, to swap it)"


class LayerLeftDense(ValueError):
    """A selected layer would gain nothing from the swap at these arguments (a ratio out of its reach): a layer a
    wildcard selected is left dense and named; one an include pattern names exactly is refused."""


class LayerSwap(CompressionTechnique):
    """Replace the selected layers at ``swap_at`` and train on; subclasses say by what.

    Args:
        swap_at: epoch (int), fraction of the run (float) or optimizer step (``"step:N"``); 0 swaps before the
            first step.
        include: layer (module) name patterns, glob or ``re:``.
        exclude: name patterns of layers left alone.
        module_types: class names of the layers that may be swapped.
        keep_output_layer: a wildcard leaves the layer writing the network's output (the classifier) as it is,
            named in the log and the report (it writes the logits; its error reaches the loss undamped); an
            ``include`` pattern naming it exactly, or ``False``, swaps it too.
    """

    transform: str = ""  # the registered transform that swaps the layers
    when_arguments = ("swap_at",)
    family = "layer_swap"
    changes_structure = True
    structure_change_at = "swap_at"
    must_end_before = (("swap_at", "the swapped layers would never be trained"),)

    def __init__(self, swap_at: int | float | str, include: Sequence[str], exclude: Sequence[str],
                 module_types: Sequence[str], allowed_types: Sequence[str], keep_output_layer: bool = True) -> None:
        super().__init__()
        if not isinstance(keep_output_layer, bool):
            raise ValueError(f"keep_output_layer must be true or false, got {keep_output_layer!r}")
        self.keep_output_layer = keep_output_layer
        self.swap_at = check_when("swap_at", swap_at)
        self.include, self.exclude = check_patterns(include, exclude)
        types = [module_types] if isinstance(module_types, str) else list(module_types)
        unknown = [t for t in types if t not in allowed_types]
        if not types or unknown:
            raise ValueError(f"module_types must be a non-empty list of {list(allowed_types)}, got {module_types!r}")
        self.module_types = types
        self.layers: list[str] = []  # resolved by check_model
        self.left_out: dict[str, str] = {}  # matched by the patterns, left out (their parent reads their weight)

    def takes(self, layer: nn.Module) -> bool:
        """Whether a layer of one of ``module_types`` can be swapped at all (a wildcard skips the others)."""
        return True

    def layer_spec(self, name: str, layer: nn.Module) -> dict[str, Any]:
        """The plain (JSON) arguments of ``layer``'s replacement, computed from the layer as it is now; raise
        ``ValueError`` naming the argument when this callback's arguments cannot apply to it."""
        raise NotImplementedError

    # --- selection -----------------------------------------------------------------------------------------

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Resolve the layers to swap and check that every one of them can be swapped as configured."""
        selected = select_layers(net, self.include, self.exclude, self.module_types, self.technique, self.takes)
        self.left_out = left_out_layers(net, self.include, self.exclude, self.module_types, self.takes)
        # A wildcard leaves the output layer dense: it writes the logits, and its error reaches the loss undamped.
        outputs = ([] if example_input is None or not self.keep_output_layer
                   else output_layers(net, example_input, self.module_types))
        for name in outputs:
            if name in selected and name not in self.include:
                self.left_out[name] = OUTPUT_LAYER
        self.layers = []
        for name in selected:
            if name in self.left_out:
                continue
            try:
                self.layer_spec(name, net.get_submodule(name))
            except LayerLeftDense as err:
                if name in self.include:  # asked for by name: the user wants to hear why not
                    raise
                self.left_out[name] = str(err)
                continue
            self.layers.append(name)
        order = {name: i for i, (name, _) in enumerate(net.named_modules())}
        self.left_out = dict(sorted(self.left_out.items(), key=lambda item: order.get(item[0], -1)))
        if not self.layers:
            raise ValueError(f"{self.technique}: no selected layer can be swapped: "
                             + "; ".join(reason if reason.startswith(self.technique) else f"{name}: {reason}"
                                         for name, reason in self.left_out.items() if name in selected))

    def left_out_fields(self, prefix: str) -> dict[str, int | float | str]:
        """The report's ``<prefix>/left_out``: the layers the patterns matched that could not be swapped."""
        return {f"{prefix}/left_out": ", ".join(self.left_out)} if self.left_out else {}

    def _specs(self, net: nn.Module) -> list[dict[str, Any]]:
        return [{"name": name, **self.layer_spec(name, net.get_submodule(name))} for name in self.layers]

    def swapped(self, pl_module: L.LightningModule) -> bool:
        """Whether the module's record says these layers were swapped by this transform."""
        return any(entry["transform"] == self.transform
                   and [spec["name"] for spec in entry["args"]["layers"]] == self.layers
                   for entry in pl_module.transforms)

    @override
    def selection_resolved(self) -> bool:
        return bool(self.layers)

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_run_start(self.swap_at) and not self.swapped(pl_module):
            change_structure(trainer, pl_module, self.transform, during_fit=False,
                             layers=self._specs(self.net_of(pl_module)))
        rank_zero_info(f"{self.technique}: {len(self.layers)} layers ({', '.join(self.layers)}) swapped at "
                       f"{self.swap_at!r}{left_out_line(self.left_out)}")

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.step_at("swap_at") >= self.total_steps and not self.swapped(pl_module):
            raise ValueError(f"swap_at={self.swap_at} is step {self.step_at('swap_at')}, at or after the end of "
                             f"training ({self.total_steps} steps): the swapped layers would never be trained")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if trainer.global_step >= self.step_at("swap_at") and not self.swapped(pl_module):
            # Initialized from the weights trained so far; optimizer and DDP wrapper rebuilt for the new ones.
            change_structure(trainer, pl_module, self.transform, during_fit=True,
                             layers=self._specs(self.net_of(pl_module)))
            rank_zero_info(f"{self.technique}: swapped {', '.join(self.layers)} at step {trainer.global_step}")
