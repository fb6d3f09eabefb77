"""How LayerDrop's residual scaling decides whether the shallower network survives the removal (digits, ResNet-20).

    python bench/layerdrop_rescale.py

For each drop probability and scaling, trains ResNet-20 on the embedded digits set for 6 epochs with every droppable
block dropping (no removal), then measures on the test set, in eval: the full network as it validates (with
``rescale: eval``, each residual scaled by its survival probability), and the network with every other droppable
block skipped and the others run as written (what the shallower network computes right after the removal). One
thread. Writes bench/results/layerdrop_rescale.json.
"""

from __future__ import annotations

import torch
from common import RESULTS, write

BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
# (p, scaling while training): "train" scales kept residuals by 1/(1-p) (drop-path); "eval" trains them as they are
SETTINGS = [(0.0, "none"), (0.3, "train"), (0.3, "eval"), (0.5, "train"), (0.5, "eval")]


def measure(p: float, scaling: str, epochs: int = 6) -> dict:
    import lightning as L
    import torch.nn.functional as F

    from lightning_micro.callbacks import LayerDropping
    from lightning_micro.core import block_removal
    from lightning_micro.data import DigitsDataModule
    from lightning_micro.run.classifier import ClassifierModule

    L.seed_everything(0)
    module = ClassifierModule({"_target_": "lightning_micro.models.ResNet20", "input_shape": [1, 8, 8]},
                              {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
                              input_shape=[1, 8, 8])
    # training is the same under "eval" and "none" (kept blocks unscaled); eval's scaling is applied below
    callbacks = [LayerDropping(p=p, rescale="train" if scaling == "train" else "none", prune_at=None)] if p else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=callbacks)
    data = DigitsDataModule(batch_size=64)
    trainer.fit(module, data)
    data.setup("test")
    x, y = data.test_set.tensors
    net = module.net.eval()

    def evaluate(skipped: list[str]) -> dict:
        with torch.no_grad(), block_removal.skipping(net, skipped):
            out = net(x)
        return {"loss": F.cross_entropy(out, y).item(), "acc": (out.argmax(1) == y).float().mean().item()}

    removed = [BLOCKS[i] for i in block_removal.every_other(len(BLOCKS), 4)]
    shallow = evaluate(removed)
    if scaling == "eval":
        block_removal.make_droppable(net, BLOCKS, eval_scales={b: 1 - p for b in BLOCKS})
        net.eval()
    return {"p": p, "scaling": scaling, "full_network": evaluate([]), "every_other_removed": shallow,
            "removed": removed}


def main() -> None:
    torch.set_num_threads(1)
    results = [measure(p, scaling) for p, scaling in SETTINGS]
    for r in results:
        print(f"p={r['p']} {r['scaling']}: full loss {r['full_network']['loss']:.3f}, every other removed "
              f"{r['every_other_removed']['loss']:.3f} ({r['every_other_removed']['acc']:.1%})")
    write(RESULTS / "layerdrop_rescale.json", {
        "benchmark": "ResNet-20 on digits, 6 epochs of LayerDrop at p with each scaling; test-set loss of the full "
                     "network in eval and of the network with every other droppable block skipped", "results": results})


if __name__ == "__main__":
    main()
