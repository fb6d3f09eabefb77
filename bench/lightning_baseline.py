"""Lightning's own ModelPruning, configured as fairly as it allows, for comparison with GradualMagnitudePruning.

Global L1 unstructured pruning of the weights of every Linear and Conv layer (biases untouched), no lottery-ticket
rewind, no resampling. ModelPruning prunes once per epoch and its ``amount`` is a fraction of the weights still
unpruned, so our cumulative cubic schedule ``s(e)`` becomes per-call amounts ``(s(e+1) - s(e)) / (1 - s(e))``.
Used from the command line with ``PYTHONPATH=bench`` (see bench/gmp.py).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from lightning_micro.core.schedules import cubic_sparsity


class CubicModelPruning(ModelPruning):
    """``ModelPruning`` following the cubic schedule from ``start_epoch`` to ``end_epoch`` (epoch ends)."""

    def __init__(self, final_sparsity: float, start_epoch: int, end_epoch: int) -> None:
        self.final_sparsity = final_sparsity
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        super().__init__(
            pruning_fn="l1_unstructured",
            parameter_names=["weight"],
            use_global_unstructured=True,
            amount=self.amount_at_epoch_end,
            apply_pruning=True,
            make_pruning_permanent=True,
            use_lottery_ticket_hypothesis=False,
            resample_parameters=False,
            prune_on_train_epoch_end=True,
            verbose=0,
        )

    def cumulative(self, epoch: int) -> float:
        return cubic_sparsity(epoch, 0.0, self.final_sparsity, self.start_epoch, self.end_epoch)

    def amount_at_epoch_end(self, epoch: int) -> float:
        # Pruning at the end of `epoch` sets the sparsity the next epoch trains with.
        before, after = self.cumulative(epoch), self.cumulative(epoch + 1)
        return 0.0 if after <= before else (after - before) / (1.0 - before)

    def setup(self, trainer, pl_module, stage):
        self._parameters_to_prune = [
            (m, "weight") for m in pl_module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ]
        super().setup(trainer, pl_module, stage)
