"""Stop a run whose loss or weights stop being finite, instead of finishing and exporting a broken network.

A NaN learning rate, or one large enough to diverge, otherwise trains to the end with a NaN loss and ~10%
accuracy, and the run exports an artifact whose outputs are all NaN as if it had succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_micro.callbacks.run_stopped import TrainingDiverged


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` that hold a NaN or an infinity."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())]


class DivergenceGuard(Callback):
    """Raise :class:`~lightning_micro.run.failures.TrainingDiverged` at the first optimizer step whose training loss is
    NaN or infinite, and before validation (and the epoch's checkpoint) when a weight is.

    The checkpoints already written are kept: the last one is from before the divergence, because the check runs
    before Lightning's checkpoint callbacks (which always run last) could save a broken network. Under DDP the
    ranks agree on the decision (one boolean all-reduce per step), so no rank waits for another that stopped.
    The run (``train.py``) reports it in one line and exits with status 1, writing no artifact and no report.

    Example:
        >>> trainer = L.Trainer(callbacks=[DivergenceGuard()])
    """

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        finite = not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            value = loss.item() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else "not finite"
            self._stop(trainer, f"the training loss is {value} at step {trainer.global_step} "
                                f"(epoch {trainer.current_epoch}, batch {batch_idx})")

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_weights(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        broken = non_finite_parameters(pl_module)
        if not trainer.strategy.reduce_boolean_decision(not broken, all=True):
            names = ", ".join(broken[:3]) + (" ..." if len(broken) > 3 else "")
            self._stop(trainer, f"weights are NaN or infinite after step {trainer.global_step} "
                                f"(epoch {trainer.current_epoch}): {names or 'on another rank'}")

    @staticmethod
    def _stop(trainer: L.Trainer, what: str) -> None:
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", "")
        kept = f"the last checkpoint before it is kept: {checkpoint}" if checkpoint else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged: {what}. Nothing was exported; {kept}. Lower the learning rate "
                               "(model.optimizer.lr) or check the data")
