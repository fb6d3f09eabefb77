"""Layer dropping recipes against the full-depth network and against the same shallow depth reached without
LayerDrop, trained for the same epochs.

    LM_DATA_DIR=../shared/data python bench/layerdrop.py [--configs ...] [--seeds 42] [--jobs 2]
    python bench/layerdrop.py --speed [--rounds 9]      # after the runs: latencies re-measured together

Per model, four runs of the same length (ResNet-20 5 epochs, MobileNetV2 2, MNIST, seed 42, one thread per job):

- ``<model>_dense``: the full-depth network (ResNet-20's is the 5-epoch dense run of bench/structured.py, same
  recipe and seed, read from bench/results/structured.json when this script does not run it);
- ``<model>_layerdrop``: the recipe: LayerDrop while training, half of the droppable blocks removed, retrained;
- ``<model>_removed_no_layerdrop``: the same blocks removed at the same epoch from a network trained without
  LayerDrop (p=0), then retrained the same epochs: what LayerDrop bought;
- ``<model>_shallow_scratch``: the same shallow network (those blocks removed before the first step) trained from
  scratch for all the epochs.

Writes bench/results/layerdrop.json: per run the report's fields (test accuracy, MACs per image counted by running
the dense and the reloaded network, latency of the reloaded artifact against the full-depth fp32 network measured
side by side in the run's process, the blocks removed, the validation loss right before the removal and with the
blocks skipped) and the figures the issue sets bars on. --speed loads every run's artifact and measures them in one
process (interleaved rounds of torch.utils.benchmark medians, batch 64 and 1, one thread):
bench/results/layerdrop_speed.json.
"""

from __future__ import annotations

import json

from common import (
    RESULTS,
    add_figures,
    bench_arguments,
    cpu_name,
    delta_vs_dense_pp,
    run_recipes,
    speed_against_dense,
    write,
)

NO_DROP = ["compression.layerdrop.p=0.0"]
CONFIGS = {
    "resnet20_dense": ["experiment=baseline_resnet20_mnist"],
    "resnet20_layerdrop": ["experiment=layerdrop_resnet20"],
    "resnet20_removed_no_layerdrop": ["experiment=layerdrop_resnet20", *NO_DROP],
    "resnet20_shallow_scratch": ["experiment=layerdrop_resnet20", *NO_DROP, "compression.layerdrop.prune_at=0"],
    "mobilenetv2_dense": ["experiment=baseline_mobilenetv2_mnist"],
    "mobilenetv2_layerdrop": ["experiment=layerdrop_mobilenetv2"],
    "mobilenetv2_removed_no_layerdrop": ["experiment=layerdrop_mobilenetv2", *NO_DROP],
    "mobilenetv2_shallow_scratch": ["experiment=layerdrop_mobilenetv2", *NO_DROP, "compression.layerdrop.prune_at=0"],
}
# The bars: figure -> threshold (every figure is "at least").
BARS = {
    "resnet20_layerdrop": {"delta_vs_dense_pp": -0.5, "speedup_b64": 1.3, "blocks_removed_pct": 50.0},
    "mobilenetv2_layerdrop": {"delta_vs_dense_pp": -0.5, "blocks_removed_pct": 50.0},
}
REPORT_KEYS = ("test/acc", "params/total", "params/dense_total", "size/artifact_bytes", "size/dense_bytes",
               "macs/dense", "macs/effective", "latency/ms_b1", "latency/ms_b64", "latency/dense_ms_b1",
               "latency/dense_ms_b64", "latency/speedup_b1", "latency/speedup_b64", "layerdrop/p",
               "layerdrop/droppable", "layerdrop/removed", "layerdrop/removed_blocks",
               "layerdrop/val_loss_before_removal", "layerdrop/val_loss_blocks_removed")
MODELS = ("resnet20", "mobilenetv2")


def speed(rounds: int) -> None:
    import torch

    results = json.loads((RESULTS / "layerdrop.json").read_text())["results"]
    measured = speed_against_dense(results, MODELS, rounds)
    write(RESULTS / "layerdrop_speed.json", {
        "benchmark": "forward of each run's reloaded artifact, CPU, 1 thread, no gradients, median of interleaved "
                     "rounds of torch.utils.benchmark medians", "cpu": cpu_name(), "torch": torch.__version__,
        "rounds": rounds, "results": measured})


def figures_of(name: str, results: dict) -> dict:
    result = results[name]
    first = result["runs"][0]
    figures = {"test_acc": result["test_acc_mean"], "speedup_b64": first.get("latency/speedup_b64"),
               "macs_removed_pct": 100 * (1 - first["macs/effective"] / first["macs/dense"])}
    if first.get("layerdrop/droppable"):
        figures["blocks_removed_pct"] = 100 * first["layerdrop/removed"] / first["layerdrop/droppable"]
    dense = results.get(name.split("_")[0] + "_dense")
    if dense and dense is not result:
        figures["delta_vs_dense_pp"] = delta_vs_dense_pp(result, dense)
    return figures


def main() -> None:
    args = bench_arguments(__doc__, CONFIGS, [c for c in CONFIGS if c != "resnet20_dense"],
                           RESULTS / "layerdrop.json")
    if args.speed:
        speed(args.rounds)
        return
    results = run_recipes("layerdrop", CONFIGS, args.configs, args.seeds, args.jobs, REPORT_KEYS, args.out)
    structured = RESULTS / "structured.json"
    if "resnet20_dense" not in results and structured.exists():  # the same recipe and seed, trained there
        dense = json.loads(structured.read_text())["results"].get("resnet20_dense")
        if dense and dense["overrides"] == CONFIGS["resnet20_dense"]:
            results["resnet20_dense"] = {**{k: v for k, v in dense.items() if k not in ("figures", "bars")},
                                         "source": "bench/results/structured.json"}
    add_figures(results, figures_of, BARS)
    write(args.out, {"benchmark": "layer dropping vs the full-depth recipe of the same model and the same shallow "
                                  "depth without LayerDrop, MNIST, 1 thread", "results": results})


if __name__ == "__main__":
    main()
