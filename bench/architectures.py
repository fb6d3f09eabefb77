"""Recipes on the zoo's library-style architectures against their dense recipes, trained in the same bench:
torchvision's MobileNetV3-Small (32x32 MNIST), the small vision transformer and the ShuffleNet-style CNN.

    LM_DATA_DIR=../shared/data python bench/architectures.py [--configs ...] [--seeds 42] [--jobs 2]
    python bench/architectures.py --speed [--rounds 9]   # after the runs: latencies re-measured together

Trains each recipe through the real command line (one thread per job) and writes bench/results/architectures.json:
per recipe the report's measured fields (test accuracy, MACs per image counted by running the dense and the
reloaded network, artifact bytes, latency of the reloaded artifact against the dense fp32 network measured side
by side in the run's process) and the figures the issue sets bars on: MACs removed (%), accuracy against the dense
recipe of the same model and seed (points), speed-up at batch 64.

--speed loads every run's artifact again and measures each model's dense and compressed networks in one process,
interleaved rounds of ``torch.utils.benchmark`` medians, batch 64 and 1, one thread:
bench/results/architectures_speed.json.
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

CONFIGS = {
    "mnv3_dense": ["experiment=baseline_tv_mobilenet_v3_small_mnist"],
    "mnv3_structured": ["experiment=structured_tv_mobilenet_v3_small"],
    "vit_dense": ["experiment=baseline_vit_tiny_mnist"],
    "vit_heads": ["experiment=structured_vit_tiny"],
    "vit_layerdrop": ["experiment=layerdrop_vit_tiny"],
    "vit_int8": ["experiment=qat_int8_vit_tiny"],
    "shufflenet_dense": ["experiment=baseline_shufflenet_mnist"],
    "shufflenet_int8": ["experiment=qat_int8_shufflenet"],
}
INPUT_SHAPES = {"mnv3": [1, 32, 32], "vit": [1, 28, 28], "shufflenet": [1, 28, 28]}
# The bars: figure -> threshold (every figure is "at least").
BARS = {
    "mnv3_structured": {"macs_removed_pct": 50.0, "delta_vs_dense_pp": -0.5, "speedup_b64": 1.5},
    "vit_heads": {"macs_removed_pct": 40.0, "delta_vs_dense_pp": -0.5, "speedup_b64": 1.4},
    "vit_layerdrop": {"delta_vs_dense_pp": -0.5, "speedup_b64": 1.6},
    "vit_int8": {"delta_vs_dense_pp": -0.3, "speedup_b64": 1.0},
}
REPORT_KEYS = ("test/acc", "params/total", "params/dense_total", "size/artifact_bytes", "size/dense_bytes",
               "size/ratio", "macs/dense", "macs/effective", "latency/ms_b1", "latency/ms_b64",
               "latency/dense_ms_b1", "latency/dense_ms_b64", "latency/speedup_b1", "latency/speedup_b64",
               "structured/kept_fraction", "structured/left_whole", "layerdrop/removed", "quant/weight_bits",
               "quant/activation_bits")


def figures_of(name: str, results: dict) -> dict:
    result = results[name]
    first = result["runs"][0]
    figures = {"test_acc": result["test_acc_mean"], "speedup_b64": first.get("latency/speedup_b64"),
               "macs_removed_pct": 100 * (1 - first["macs/effective"] / first["macs/dense"]),
               "size_ratio": first.get("size/ratio")}
    dense = results.get(name.split("_")[0] + "_dense")
    if dense and dense is not result:
        figures["delta_vs_dense_pp"] = delta_vs_dense_pp(result, dense)
    return figures


def speed(rounds: int) -> None:
    import torch

    results = json.loads((RESULTS / "architectures.json").read_text())["results"]
    models = tuple(sorted({name.split("_")[0] for name in results}))
    measured = speed_against_dense(results, models, rounds, INPUT_SHAPES)
    write(RESULTS / "architectures_speed.json", {
        "benchmark": "forward of each run's reloaded artifact, CPU, 1 thread, no gradients, median of interleaved "
                     "rounds of torch.utils.benchmark medians", "cpu": cpu_name(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rounds": rounds, "results": measured})


def main() -> None:
    args = bench_arguments(__doc__, CONFIGS, list(CONFIGS), RESULTS / "architectures.json")
    if args.speed:
        speed(args.rounds)
        return
    results = run_recipes("arch", CONFIGS, args.configs, args.seeds, args.jobs, REPORT_KEYS, args.out)
    add_figures(results, figures_of, BARS)
    write(args.out, {"benchmark": "recipes on library-style architectures vs the dense recipe of the same model, "
                                  "MNIST, 1 thread", "results": results})


if __name__ == "__main__":
    main()
