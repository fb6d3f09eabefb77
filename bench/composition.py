"""Techniques composed in one fit against the dense recipes of the same models, trained in the same bench.

    LM_DATA_DIR=../shared/data python bench/composition.py [--configs ...] [--seeds 42] [--jobs 2]

Trains each recipe through the real command line (one thread per job, 20 epochs as the dense recipes) and writes
bench/results/composition.json: per recipe the report's measured fields (test accuracy, artifact and dense fp32
file bytes, MACs per image counted by running the dense and the reloaded network, batch-64 and batch-1 latency of
the reloaded artifact against the dense fp32 network measured side by side in the run's process) and, per recipe,
the figures the issue sets bars on: accuracy against the dense recipe of the same model and seed, convolution MACs
fewer (dense / reloaded), speed-up at batch 64, artifact size ratio.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import RESULTS, run_recipes, write

CONFIGS = {
    "lenet5_dense": ["experiment=baseline_lenet5_mnist"],
    "lenet5_lowrank_int8": ["experiment=lowrank_int8_lenet5"],
    "lenet5_lowrank_gmp": ["experiment=lowrank_gmp_lenet5"],
    "lenet300_dense": ["experiment=baseline_lenet300_mnist"],
    "lenet300_tt_4bit": ["experiment=tt_4bit_lenet300"],
}
# The bars of the issue, per recipe: (what, threshold) checked against the measured figure.
BARS = {
    "lenet5_lowrank_int8": {"conv_macs_fewer_x": 2.0, "speedup_b64": 6.0, "delta_vs_dense_pp": -0.3},
    "lenet300_tt_4bit": {"size_ratio": 50.0, "test_acc": 0.982},
    "lenet5_lowrank_gmp": {"size_ratio": 20.0, "delta_vs_dense_pp": -0.3},
}
REPORT_KEYS = ("test/acc", "params/total", "params/nonzero", "size/artifact_bytes", "size/dense_bytes", "size/ratio",
               "macs/dense", "macs/effective", "macs/dense_conv", "macs/effective_conv", "latency/ms_b1",
               "latency/ms_b64", "latency/dense_ms_b1", "latency/dense_ms_b64", "latency/speedup_b1",
               "latency/speedup_b64", "sparsity/global", "quant/weight_bits", "quant/activation_bits",
               "quant/layers", "gmp/pruned_sparsity", "tt/fc1/ranks", "tt/fc1/ratio", "lowrank/conv2/rank",
               "lowrank/conv2/ratio", "lowrank/fc1/rank", "lowrank/fc1/ratio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "composition.json")
    args = parser.parse_args()
    # Longest first, so two jobs finish close together.
    order = sorted(args.configs, key=lambda n: ("int8" not in n, "lenet5" not in n))
    results = run_recipes("comp", CONFIGS, order, args.seeds, args.jobs, REPORT_KEYS, args.out)
    for name, result in results.items():
        dense = results.get(name.split("_")[0] + "_dense")
        first = result["runs"][0]
        figures = {"test_acc": result["test_acc_mean"], "size_ratio": first["size/ratio"],
                   "speedup_b64": first.get("latency/speedup_b64")}
        if first.get("macs/effective_conv"):
            figures["conv_macs_fewer_x"] = first["macs/dense_conv"] / first["macs/effective_conv"]
        if dense and dense is not result:
            seeds = {r["seed"] for r in result["runs"]} & {r["seed"] for r in dense["runs"]}
            mine = statistics.mean(r["test/acc"] for r in result["runs"] if r["seed"] in seeds)
            theirs = statistics.mean(r["test/acc"] for r in dense["runs"] if r["seed"] in seeds)
            figures["delta_vs_dense_pp"] = 100 * (mine - theirs)
        result["figures"] = figures
        if name in BARS:
            result["bars"] = {key: {"bar": bar, "measured": figures.get(key),
                                    "met": figures.get(key) is not None and figures[key] >= bar}
                              for key, bar in BARS[name].items()}
    write(args.out, {"benchmark": "techniques composed in one fit vs the dense recipe, MNIST, 20 epochs, 1 thread",
                     "results": results})


if __name__ == "__main__":
    main()
