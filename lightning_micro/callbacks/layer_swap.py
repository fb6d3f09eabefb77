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
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.arguments import check_patterns, check_when, select_layers, target_net
from lightning_micro.callbacks.structure import transform_during_fit


class LayerSwap(Callback):
    """Replace the selected layers at ``swap_at`` and train on; subclasses say by what.

    Args:
        swap_at: epoch (int) or fraction of the run (float); 0 swaps before the first step.
        include: layer (module) name patterns, glob or ``re:``.
        exclude: name patterns of layers left alone.
        module_types: class names of the layers that may be swapped.
    """

    transform: str = ""  # the registered transform that swaps the layers
    technique: str = ""  # the name in messages and report fields

    def __init__(self, swap_at: int | float, include: Sequence[str], exclude: Sequence[str],
                 module_types: Sequence[str], allowed_types: Sequence[str]) -> None:
        super().__init__()
        self.swap_at = check_when("swap_at", swap_at)
        self.include, self.exclude = check_patterns(include, exclude)
        types = [module_types] if isinstance(module_types, str) else list(module_types)
        unknown = [t for t in types if t not in allowed_types]
        if not types or unknown:
            raise ValueError(f"module_types must be a non-empty list of {list(allowed_types)}, got {module_types!r}")
        self.module_types = types
        self.layers: list[str] = []  # resolved by check_model
        self._swap_epoch: int | None = None

    def takes(self, layer: nn.Module) -> bool:
        """Whether a layer of one of ``module_types`` can be swapped at all (a wildcard skips the others)."""
        return True

    def layer_spec(self, name: str, layer: nn.Module) -> dict[str, Any]:
        """The plain (JSON) arguments of ``layer``'s replacement, computed from the layer as it is now; raise
        ``ValueError`` naming the argument when this callback's arguments cannot apply to it."""
        raise NotImplementedError

    # --- selection -----------------------------------------------------------------------------------------

    def check_model(self, net: nn.Module) -> None:
        """Resolve the layers to swap and check that every one of them can be swapped as configured."""
        self.layers = select_layers(net, self.include, self.exclude, self.module_types, self.technique, self.takes)
        for name in self.layers:
            self.layer_spec(name, net.get_submodule(name))

    def _specs(self, net: nn.Module) -> list[dict[str, Any]]:
        return [{"name": name, **self.layer_spec(name, net.get_submodule(name))} for name in self.layers]

    def swapped(self, pl_module: L.LightningModule) -> bool:
        """Whether the module's record says these layers were swapped by this transform."""
        return any(entry["transform"] == self.transform
                   and [spec["name"] for spec in entry["args"]["layers"]] == self.layers
                   for entry in pl_module.transforms)

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "apply_transform"):
            raise ValueError(f"{type(self).__name__} needs a LightningModule with apply_transform(...), e.g. "
                             "lightning_micro.models.ClassifierModule")
        # Not combined yet, so refused rather than silently wrong: pruning keeps references to the weights it
        # selected (a swap replaces them), and QAT selects and traces the layers as they were before the swap.
        others = [type(c).__name__ for c in trainer.callbacks
                  if type(c).__name__ in ("GradualMagnitudePruning", "QuantizationAwareTraining")]
        if others:
            raise ValueError(f"{type(self).__name__} does not combine with {', '.join(others)} in one run yet "
                             f"(they select layers before the swap replaces them); use one of them per run")
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        if isinstance(self.swap_at, float):
            if max_epochs is None:
                raise ValueError(f"swap_at={self.swap_at} is a fraction of the run, but trainer.max_epochs is not set")
            self._swap_epoch = int(round(self.swap_at * max_epochs))
        else:
            self._swap_epoch = self.swap_at
        if max_epochs is not None and self._swap_epoch >= max_epochs:
            raise ValueError(f"swap_at={self.swap_at} is at or after the end of training (trainer.max_epochs="
                             f"{max_epochs}): the swapped layers would never be trained")
        if not self.layers:
            self.check_model(target_net(pl_module))
        if self._swap_epoch == 0 and not self.swapped(pl_module):
            pl_module.apply_transform(self.transform, layers=self._specs(target_net(pl_module)))
        rank_zero_info(f"{type(self).__name__}: {len(self.layers)} layers ({', '.join(self.layers)}) swapped at "
                       f"epoch {self._swap_epoch}")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self._swap_epoch and not self.swapped(pl_module):
            # Initialized from the weights trained so far; optimizer and DDP wrapper rebuilt for the new ones.
            transform_during_fit(trainer, pl_module, self.transform, layers=self._specs(target_net(pl_module)))
            rank_zero_info(f"{type(self).__name__}: swapped {', '.join(self.layers)} at epoch {trainer.current_epoch}")
