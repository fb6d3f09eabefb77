"""Run by the tests of techniques that change the network mid-fit: a 2-process DDP fit (gloo) whose technique
transforms the network after the first epoch (the DDP wrapper is rebuilt), saving each rank's weights at the end
of training (before QAT converts the network). Started by ``tests.helpers.ddp.run_on_two_ranks``.

    python tests/helpers/ddp_transform_script.py OUT_DIR qat|tt|lowrank|tt_gmp|structured|layerdrop
"""

import sys
from pathlib import Path

import lightning as L
import torch

from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    LayerDropping,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule


class SaveWeightsPerRank(L.Callback):
    """Saves each rank's weights and record at the end of training, and the drop factors each training step's
    forward used (layer dropping; listed after it, so they are the step's own)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.factors: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        factors = {n: m.__dict__["_layerdrop_factor"] for n, m in pl_module.net.named_modules()
                   if m.__dict__.get("_layerdrop_factor") is not None}
        if factors:
            self.factors.append(factors)

    def on_train_end(self, trainer, pl_module):  # before on_fit_end converts the network
        weights = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        torch.save({"weights": weights, "transforms": [e["transform"] for e in pl_module.transforms],
                    "factors": self.factors}, self.out / f"rank{trainer.global_rank}.pt")


TECHNIQUES = {
    "qat": lambda: [QuantizationAwareTraining(start=1)],
    "tt": lambda: [TTLayerSwap(swap_at=1, ranks=4, include=["fc1"])],
    "lowrank": lambda: [LowRankDecomposition(swap_at=1, rank=8, include=["fc1", "fc2"])],
    # composed: the TT cores swapped in at epoch 1 are pruned from the next step on, masks broadcast from rank 0
    "tt_gmp": lambda: [TTLayerSwap(swap_at=1, ranks=4, include=["fc1"]),
                       GradualMagnitudePruning(final_sparsity=0.5, start=0, end=2, update_every=5,
                                               scope="layerwise")],
    # channels masked over epoch 0 (kept sets broadcast from rank 0), removed at epoch 1: parameters, optimizer
    # state and the DDP wrapper rebuilt thinner, then trained on
    "structured": lambda: [StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=5)],
    # blocks skipped over epoch 0 (the same on both ranks; a skipped block still runs, times 0, so the gradient
    # graph stays whole), two of the four removed at epoch 1 and the shallower network trained on
    "layerdrop": lambda: [LayerDropping(p=0.5, prune_at=1, remove=2)],
}
NETS = {  # a network with residual blocks where the technique needs one
    "layerdrop": {"_target_": "lightning_micro.models.ResNet20", "input_shape": [1, 8, 8], "blocks_per_stage": 2,
                  "widths": [8, 16, 16]},
}

if __name__ == "__main__":
    out, technique = Path(sys.argv[1]), sys.argv[2]
    L.seed_everything(0)
    module = ClassifierModule(
        NETS.get(technique, {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}),
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
        input_shape=[1, 8, 8],
    )
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[*TECHNIQUES[technique](), SaveWeightsPerRank(out)], default_root_dir=out)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    # gloo's threads must stop before the interpreter does, or the process can abort on exit
    # ("terminate called without an active exception", return code -6)
    torch.distributed.destroy_process_group()
