"""CompressionTechnique: what every compression callback shares, declared once.

The lifecycle of a technique, in the order Lightning runs it:

- ``check_model(net, example_input)``: resolve the selection (name patterns, types, traced channel groups) on the
  network as configured, raising ``ValueError`` naming the argument; the run calls it (through
  :meth:`select_on`) before the trainer is built.
- ``setup``, one template for every technique: the selection is resolved if the run has not done it yet
  (:meth:`select_on`), the run is checked (:meth:`check_run`: the contract for structure-changing techniques,
  the "when" arguments against the run's length, :meth:`check_alone`, every pair with the other techniques by
  the table of :mod:`~lightning_micro.callbacks.composition`, and :attr:`must_end_before`), then the technique's
  own :meth:`initialize` (a change due at the very start happens there).
- ``on_train_start``: the "when" arguments are resolved to optimizer steps (:meth:`step_at`).
- during fit: a technique that changes the structure does it through
  :func:`~lightning_micro.callbacks.structure_change.change_structure`, which tells every technique of the run
  (:meth:`on_structure_change`) so that each re-resolves its selection by layer name on the new network.
- ``finalize(pl_module)``: the deployable form (integer kernels, codes); ``report_fields(net)`` and
  ``export_codecs(net)`` feed the report and the artifact (:func:`lightning_micro.contract.export_compressed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.composition import check_composition
from lightning_micro.contract import (
    TECHNIQUES_KEY,
    TRANSFORMS_KEY,
    Compressible,
    check_same_techniques,
    compressed_net,
    example_input,
    require_contract,
    technique_list,
)
from lightning_micro.core.schedules import STEP_PREFIX, step_of

When = int | float | str

class CompressionTechnique(Callback):
    """Base class of the compression callbacks.

    Subclasses declare what they are as data (:attr:`technique`, :attr:`family`, :attr:`when_arguments`,
    :attr:`changes_structure`, :attr:`structure_change_at`, :attr:`int8_traceable`, :attr:`traces_network`,
    :attr:`must_end_before`) and fill in the steps they need (:meth:`selection_resolved`, :meth:`check_model`,
    :meth:`check_alone`, :meth:`initialize`, ...); :meth:`setup` is the same template for all of them.
    """

    technique: str = "CompressionTechnique"
    # What the composition table (lightning_micro.callbacks.composition) knows this technique by; "" names none.
    family: str = ""
    when_arguments: tuple[str, ...] = ()
    changes_structure: bool = False  # needs the compression contract (a record replayed before weights load)
    # The "when" argument at which the technique changes the network's structure mid-run (swaps layers, removes
    # channels), if it does: int8 QAT, which traces the network once, must come after it.
    structure_change_at: str | None = None
    int8_traceable: bool = True  # whether torch.ao's int8 graph mode can quantize the layers this one makes
    traces_network: bool = False  # check_model needs one batch of input (Lightning's example_input_array)
    # "when" arguments that must fall before the end of training: (argument, what would go wrong otherwise)
    must_end_before: tuple[tuple[str, str], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._steps: dict[str, int] = {}
        self._max_epochs: int | None = None

    # --- extension hooks, declared ------------------------------------------------------------------------------

    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Resolve the selection on ``net`` (``example_input``: one batch of its input, for techniques that trace
        it); raise ``ValueError`` naming the argument when it cannot work."""

    def selection_resolved(self) -> bool:
        """Whether the selection is resolved already (the run calls :meth:`check_model` before the trainer)."""
        return False

    def select_on(self, pl_module: L.LightningModule) -> None:
        """Resolve the selection on the module's network (by the run before the trainer is built, else in
        ``setup``): :meth:`check_model` with the module's example input, which a technique that traces the
        network requires."""
        if self.traces_network:
            example = example_input(pl_module, self.technique)
        else:
            example = getattr(pl_module, "example_input_array", None)
        self.check_model(self.net_of(pl_module), example)

    def check_alone(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise ``ValueError`` when the run cannot take this technique whatever the others are."""

    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The technique's own set-up once the run is checked (a change due at the very start, a loss term)."""

    def on_structure_change(self, trainer: L.Trainer, pl_module: L.LightningModule, entry: Mapping[str, Any]) -> None:
        """Another technique (or this one) changed the network with the recorded transform ``entry``: re-resolve
        whatever was selected by layer name."""

    def finalize(self, pl_module: L.LightningModule) -> None:
        """Turn the trained network into its deployable form (a recorded transform); idempotent."""

    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """Fields this technique adds to the compression report."""
        return {}

    def export_codecs(self, net: nn.Module) -> dict[str, str]:
        """``{state-dict key: codec name}`` for the tensors this technique stores compressed."""
        return {}

    # --- when ---------------------------------------------------------------------------------------------------

    def fraction_at(self, name: str, trainer: L.Trainer) -> float | None:
        """Where the moment ``name`` falls in the run, as a fraction (to order techniques' actions before the
        steps are known); ``None`` when it cannot be known yet (a step before the data is attached)."""
        when = getattr(self, name)
        max_epochs = self._run_epochs(trainer)
        if isinstance(when, float):
            return when
        if isinstance(when, str):
            if trainer.lightning_module is None:  # before fit: the number of steps is not known
                return None
            total = trainer.estimated_stepping_batches
            return int(when.removeprefix(STEP_PREFIX)) / total if math.isfinite(total) and total else 0.0
        return when / max_epochs if max_epochs else 0.0

    def step_at(self, name: str) -> int:
        """The optimizer step of the moment ``name`` (resolved in ``on_train_start``)."""
        return self._steps[name]

    @staticmethod
    def _run_epochs(trainer: L.Trainer) -> int | None:
        return trainer.max_epochs if trainer.max_epochs not in (None, -1) else None

    def _check_whens(self, trainer: L.Trainer) -> None:
        self._max_epochs = self._run_epochs(trainer)
        for name in self.when_arguments:
            when = getattr(self, name)
            if isinstance(when, float) and self._max_epochs is None:
                raise ValueError(f"{name}={when} is a fraction of the run, but trainer.max_epochs is not set")
            if isinstance(when, int) and self._max_epochs is not None and when > self._max_epochs:
                raise ValueError(f"{name}={when} epochs is after the end of training "
                                 f"(trainer.max_epochs={self._max_epochs})")

    def check_before_end(self, name: str, consequence: str) -> None:
        """Refuse a moment ``name`` at or after the end of training: an epoch at or after the last one, a fraction
        of 1 (a fraction below 1 leaves part of the run, however short; ``"step:N"`` is checked against the run's
        steps once they are known)."""
        when, max_epochs = getattr(self, name), self._max_epochs
        if max_epochs is None or isinstance(when, str):
            return
        if (when >= 1.0) if isinstance(when, float) else (when >= max_epochs):
            raise ValueError(f"{name}={when} is at or after the end of training (trainer.max_epochs={max_epochs}): "
                             f"{consequence}")

    def _resolve_steps(self, trainer: L.Trainer) -> None:
        total = int(trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        self._steps = {name: step_of(getattr(self, name), steps_per_epoch, total) for name in self.when_arguments
                       if getattr(self, name) is not None}
        self.total_steps = total

    # --- Lightning hooks ----------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not self.selection_resolved():
            self.select_on(pl_module)
        self.check_run(trainer, pl_module)
        self.initialize(trainer, pl_module)

    def check_run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Everything this technique checks against the run before the first step: the contract when it changes
        structure, its moments against the run's length, its own needs, its pairing with the other techniques,
        its moments before the end. Called in ``setup``, and by ``train.py`` before loggers start (raises
        ``ValueError`` or ``TypeError``)."""
        if self.changes_structure:
            require_contract(pl_module, self.technique)
        self._check_whens(trainer)
        self.check_alone(trainer, pl_module)
        techniques = [c for c in trainer.callbacks if isinstance(c, CompressionTechnique)]
        check_composition(self, trainer, pl_module, techniques)
        for name, consequence in self.must_end_before:
            if getattr(self, name) is not None:
                self.check_before_end(name, consequence)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resolve_steps(trainer)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        # The module's own hook writes the record too; writing it here keeps it in the checkpoint even when a
        # user's on_save_checkpoint forgets to call super().
        if isinstance(pl_module, Compressible):
            checkpoint[TRANSFORMS_KEY] = [dict(entry) for entry in pl_module.transforms]
        checkpoint[TECHNIQUES_KEY] = technique_list(trainer.callbacks)

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
                           ) -> None:
        check_same_techniques(checkpoint, trainer.callbacks)

    # --- loss terms -----------------------------------------------------------------------------------------------

    def add_loss_term(self, pl_module: L.LightningModule, name: str, term: Any) -> None:
        """Add ``term(module, **context) -> scalar`` to the training loss through the contract's hook; after the
        next training step the module is checked to have added ``self.compression_loss(...)`` to its loss."""
        require_contract(pl_module, self.technique).add_loss_term(name, term)
        self._loss_calls_before = pl_module.compression_loss_calls

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        before = getattr(self, "_loss_calls_before", None)
        if before is None:
            return
        if pl_module.compression_loss_calls == before:
            raise RuntimeError(f"{self.technique} adds a term to the training loss, but "
                               f"{type(pl_module).__name__}.training_step does not add self.compression_loss(...) "
                               "to the loss it returns: `return loss + self.compression_loss(batch=batch)`")
        self._loss_calls_before = None

    @staticmethod
    def net_of(pl_module: L.LightningModule) -> nn.Module:
        """The network this technique works on (see :func:`lightning_micro.contract.compressed_net`)."""
        return compressed_net(pl_module)
