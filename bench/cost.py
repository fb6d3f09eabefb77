"""Cost as the work grows: each technique's per-step overhead and its one-time costs, 0.3M to 25M parameters.

    python bench/cost.py [--steps 12] [--rounds 5] [--networks lenet300,mobilenet_v3_small,resnet50]

One process, one thread, batch 32 of 3x32x32 random images (1x28x28 for LeNet-300-100): for each network,
``--rounds`` rounds of a plain Lightning fit and one fit per technique, interleaved, ``--steps`` training steps each
(two epochs: the techniques act in the first, change structure at the second's start). Two callbacks, the first and
the last, time every training step (``batch start`` to ``batch end``: forward, backward, optimizer, and the
technique's batch hooks). The per-step figure is the median step of the second epoch against the same round's plain
fit, the median over the rounds, with its range (on a step of about a millisecond one fit's figure moves by 15%).
The masking techniques mask on every step there, between two updates of their default ``update_every``; TT and
low-rank run their factorized layers there, so theirs is the smaller network's step; ``first_step_s`` holds the
first step, an update among them. The one-time cost is the fit's time beyond the plain fit's that the per-step
difference does not explain: tracing and the removal trial (structured), decomposition (TT, low-rank), preparation
and conversion (int8), the checks. Writes
bench/results/cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from common import RESULTS, write  # noqa: I001 - bench/ is on the path when run as a script
from torch.utils.data import DataLoader, TensorDataset

from lightning_micro import CompressionMixin
from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    LayerDropping,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.models import LeNet300

NETWORKS = {
    "lenet300": (lambda: LeNet300([1, 28, 28]), (1, 28, 28)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=10), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None, num_classes=10), (3, 32, 32)),
}
TECHNIQUES = {
    # the masking techniques on their default update_every (25, 50 steps): the steps between two updates mask only
    "gmp": lambda: GradualMagnitudePruning(final_sparsity=0.8, start=0, end=0.95),
    "structured": lambda: StructuredPruning(channel_ratio=0.5, start=0, end=0.95),
    "layerdrop": lambda: LayerDropping(p=0.2, prune_at=None),
    "qat_int8": lambda: QuantizationAwareTraining(start=0),
    "qat_4bit": lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0),
    # ResNet-50's only Linear is its classifier, which TT's defaults leave dense: swapped here, on every network
    "tt": lambda: TTLayerSwap(swap_at=1, ranks=8, keep_output_layer=False),
    "lowrank": lambda: LowRankDecomposition(swap_at=1, compression_ratio=2),
}
MASKING = ("gmp", "structured", "layerdrop")  # the bar: at most 1.10x per step at every size


class Net(CompressionMixin, L.LightningModule):
    compressed_net_name = "net"

    def __init__(self, network: str) -> None:
        super().__init__()
        make, shape = NETWORKS[network]
        self.net = make()
        self.example_input_array = torch.zeros(1, *shape)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + self.compression_loss(batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class StepTimes(L.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.fit_start = self.fit_end = 0.0

    def on_fit_start(self, trainer, pl_module):
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        self.fit_end = time.perf_counter()


class StepEnd(L.Callback):
    """The end of a step for :class:`StepTimes`: the last callback, so the technique's own batch hooks, which run
    between the two, count in the step."""

    def __init__(self, timer: StepTimes) -> None:
        self.timer = timer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.timer.steps.append((trainer.current_epoch, time.perf_counter() - self.timer._start))


def fit(network: str, technique: str | None, steps: int) -> dict:
    shape = NETWORKS[network][1]
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32 * steps, *shape, generator=generator),
                         torch.randint(0, 10, (32 * steps,), generator=generator))
    timer = StepTimes()
    callbacks = [timer, *([TECHNIQUES[technique]()] if technique else []), StepEnd(timer)]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(Net(network), DataLoader(data, batch_size=32))
    total = time.perf_counter() - started
    second = [t for epoch, t in timer.steps if epoch == 1]
    return {"step_s": statistics.median(second), "first_step_s": timer.steps[0][1],
            "steps_s": sum(t for _, t in timer.steps), "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per epoch (two epochs)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one plain fit and one fit per technique")
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated, of {list(NETWORKS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for network in args.networks.split(","):
        params = sum(p.numel() for p in NETWORKS[network][0]().parameters())
        dense_rounds, measured_rounds, refused = [], {t: [] for t in TECHNIQUES}, {}
        for _ in range(args.rounds):  # interleaved: a slow spell of the shared machine hits every fit of a round
            dense_rounds.append(fit(network, None, args.steps))
            for technique in TECHNIQUES:
                if technique in refused:
                    continue
                try:
                    measured_rounds[technique].append(fit(network, technique, args.steps))
                except ValueError as err:  # refused before the first step: said, not timed
                    refused[technique] = str(err)
                    print(f"{network} {technique}: refused: {err}", flush=True)
        dense = {key: statistics.median(r[key] for r in dense_rounds) for key in dense_rounds[0]}
        rows = {}
        for technique in TECHNIQUES:
            if technique in refused:
                rows[technique] = {"refused": refused[technique]}
                continue
            mine = measured_rounds[technique]
            ratios = [m["step_s"] / d["step_s"] for m, d in zip(mine, dense_rounds, strict=True)]
            measured = {key: statistics.median(r[key] for r in mine) for key in mine[0]}
            rows[technique] = {
                # the median over rounds of the step against the same round's plain fit
                "step_ratio": statistics.median(ratios), "step_ratio_range": [min(ratios), max(ratios)],
                # the fit's time beyond the plain fit's that its per-step overhead does not explain (a swap or an
                # update runs inside a step's hooks, tracing and conversion outside them)
                "one_time_s": measured["total_s"] - dense["total_s"]
                - 2 * args.steps * (measured["step_s"] - dense["step_s"]),
                **measured}
            print(f"{network} ({params / 1e6:.2f}M): {technique} step {rows[technique]['step_ratio']:.3f}x "
                  f"({min(ratios):.3f}-{max(ratios):.3f}), one-time {rows[technique]['one_time_s']:.1f} s", flush=True)
        results[network] = {"params": params, "dense": dense, "techniques": rows}
    write(RESULTS / "cost.json", {"steps": args.steps, "rounds": args.rounds, "batch": 32, "threads": 1,
                                  "results": results, "masking": list(MASKING)})


if __name__ == "__main__":
    main()
