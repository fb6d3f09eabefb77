"""Run by the tests of techniques that change the network mid-fit: a 2-process DDP fit (gloo) whose technique
transforms the network after the first epoch (the DDP wrapper is rebuilt), saving each rank's weights at the end
of training (before QAT converts the network).

    python tests/callbacks/ddp_transform_script.py OUT_DIR qat|tt|lowrank
"""

import sys
from pathlib import Path

import lightning as L
import torch

from lightning_micro.callbacks import LowRankDecomposition, QuantizationAwareTraining, TTLayerSwap
from lightning_micro.data import DigitsDataModule
from lightning_micro.models import ClassifierModule


class SaveWeightsPerRank(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):  # before on_fit_end converts the network
        weights = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        torch.save({"weights": weights, "transforms": [e["transform"] for e in pl_module.transforms]},
                   self.out / f"rank{trainer.global_rank}.pt")


TECHNIQUES = {
    "qat": lambda: QuantizationAwareTraining(start=1),
    "tt": lambda: TTLayerSwap(swap_at=1, ranks=4, include=["fc1"]),
    "lowrank": lambda: LowRankDecomposition(swap_at=1, rank=8, include=["fc1", "fc2"]),
}

if __name__ == "__main__":
    out, technique = Path(sys.argv[1]), sys.argv[2]
    L.seed_everything(0)
    module = ClassifierModule(
        {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
        input_shape=[1, 8, 8],
    )
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TECHNIQUES[technique](), SaveWeightsPerRank(out)], default_root_dir=out)
    trainer.fit(module, DigitsDataModule(batch_size=32))
