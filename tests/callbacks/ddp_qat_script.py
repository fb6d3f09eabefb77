"""Run by test_quantization_aware_training: a 2-process DDP fit (gloo) that prepares int8 QAT mid-fit (the
DDP wrapper is rebuilt) and saves each rank's weights before conversion.

    python tests/callbacks/ddp_qat_script.py OUT_DIR
"""

import sys
from pathlib import Path

import lightning as L
import torch

from lightning_micro.callbacks import QuantizationAwareTraining
from lightning_micro.data import DigitsDataModule
from lightning_micro.models import ClassifierModule


class SaveWeightsPerRank(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):  # before on_fit_end converts the network
        weights = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        torch.save({"weights": weights, "transforms": [e["transform"] for e in pl_module.transforms]},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    L.seed_everything(0)
    module = ClassifierModule(
        {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
        input_shape=[1, 8, 8],
    )
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[QuantizationAwareTraining(start=1), SaveWeightsPerRank(out)], default_root_dir=out)
    trainer.fit(module, DigitsDataModule(batch_size=32))
