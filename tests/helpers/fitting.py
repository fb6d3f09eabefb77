"""Plain-Trainer fits of LeNet-300-100 on the bundled 8x8 digits: the trainer, an interruption, a probe."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule

NET = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
COSINE = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": 4}


def trainer_for(tmp_path: Path, callbacks, max_epochs=3, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **kwargs)


class StopAfterEpoch(L.Callback):
    """Interrupts the run (as a killed job would) once `epochs` epochs are done and checkpointed."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(tmp_path: Path, technique: L.Callback, stop_after: int | None = None, ckpt_path: Path | None = None,
        callbacks=(), max_epochs: int = 4) -> ClassifierModule:
    """LeNet-300-100 on the bundled digits, seeded, checkpointing every epoch into ``tmp_path``."""
    L.seed_everything(0)
    module = ClassifierModule(NET, SGD, COSINE, input_shape=[1, 8, 8])
    extra = [ModelCheckpoint(dirpath=tmp_path, save_last=True), *callbacks]
    if stop_after is not None:
        extra.append(StopAfterEpoch(stop_after))
    trainer_for(tmp_path, [technique, *extra], max_epochs=max_epochs).fit(
        module, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return module


class RecordAroundSwap(L.Callback):
    """Outputs on fixed inputs at the end of each training epoch and at the start of the next (after the swap)."""

    def __init__(self) -> None:
        self.x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        self.outputs: dict[str, torch.Tensor] = {}

    def _record(self, key: str, pl_module) -> None:
        with torch.no_grad():
            self.outputs[key] = pl_module(self.x).clone()

    def on_train_epoch_end(self, trainer, pl_module):
        self._record(f"end{trainer.current_epoch}", pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self._record(f"start{trainer.current_epoch}", pl_module)
