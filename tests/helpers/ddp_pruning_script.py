"""Run by test_gradual_magnitude_pruning: a 2-process DDP fit (gloo) that saves each rank's masks.

    python tests/helpers/ddp_pruning_script.py OUT_DIR
"""

import sys
from pathlib import Path

import lightning as L
import torch

from lightning_micro.callbacks import GradualMagnitudePruning
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule


class SaveMasksPerRank(L.Callback):
    def __init__(self, pruning: GradualMagnitudePruning, out: Path) -> None:
        self.pruning, self.out = pruning, out

    def on_train_end(self, trainer, pl_module):
        weights = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        torch.save({"masks": self.pruning.state_dict()["masks"], "weights": weights},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    L.seed_everything(0)
    module = ClassifierModule(
        {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
        input_shape=[1, 8, 8],
    )
    pruning = GradualMagnitudePruning(final_sparsity=0.8, start=0, end=1, update_every=3)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[pruning, SaveMasksPerRank(pruning, out)], default_root_dir=out)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    # gloo's threads must stop before the interpreter does, or the process can abort on exit
    # ("terminate called without an active exception", return code -6)
    torch.distributed.destroy_process_group()
