"""TTLayerSwap and LowRankDecomposition against the dense recipes, and the TT layer's speed (issue: TT/low-rank bars).

    LM_DATA_DIR=../shared/data python bench/decomposition.py accuracy [--configs ...] [--seeds 42] [--jobs 2]
    python bench/decomposition.py speed [--rounds 7]
    PYTHONPATH=<dir with tensorly-torch> python bench/decomposition.py speed   # adds TensorLy-Torch's layers

accuracy: trains each recipe through the real command line (one thread per job) and writes
bench/results/decomposition_accuracy.json: test accuracy against the dense recipe of the same model and seed,
the swapped layer's parameters against the dense layer's (report fields ``tt/*`` / ``lowrank/*``), and the
convolution MACs per image counted by running the dense and the reloaded network (``macs/*_conv``).

speed: forward at batch 64 (and 1) on the CPU, one thread, in one process, interleaved rounds of
``torch.utils.benchmark`` medians (the median over rounds is reported):
- 4096 -> 4096: ``nn.Linear`` against our ``TTLinear`` at rank 8 (factors 8x8x8x8, TT-SVD of the dense weight);
- 784 -> 300 (LeNet-300-100's fc1): ``nn.Linear`` against ``TTLinear`` at ranks 8, 13 (the ``tt_lenet300`` recipe,
  30x) and 16; for each, also the two ways the layer can run, forced: the cheapest contraction plan, and
  rebuilding the matrix on every call (the layer itself picks by counting MACs; without gradients it may
  keep the rebuilt matrix while its cores do not change);
- with TensorLy-Torch importable: its ``FactorizedLinear.from_linear`` with ``factorization='blocktt'`` at the
  same ranks and factors, in its ``factorized`` and ``reconstructed`` implementations.
Writes bench/results/decomposition_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import RESULTS, ROOT, run_recipes, write

sys.path.insert(0, str(ROOT))

CONFIGS = {
    "lenet300_dense": ["experiment=baseline_lenet300_mnist"],
    "lenet300_tt": ["experiment=tt_lenet300"],
    "lenet5_dense": ["experiment=baseline_lenet5_mnist"],
    "lenet5_tucker2": ["experiment=lowrank_lenet5"],
    "lenet5_cp": ["experiment=lowrank_lenet5", "compression.lowrank.conv_method=cp", "compression.lowrank.rank=16"],
}
REPORT_KEYS = ("test/acc", "params/total", "size/artifact_bytes", "size/dense_bytes", "size/ratio", "macs/dense",
               "macs/effective", "macs/dense_conv", "macs/effective_conv", "latency/speedup_b1",
               "latency/speedup_b64", "tt/fc1/ranks", "tt/fc1/in_factors", "tt/fc1/out_factors", "tt/fc1/params",
               "tt/fc1/dense_params", "tt/fc1/ratio", "lowrank/conv2/method", "lowrank/conv2/rank",
               "lowrank/conv2/params", "lowrank/conv2/dense_params", "lowrank/conv2/ratio")


def accuracy(args: argparse.Namespace) -> None:
    results = run_recipes("decomp", CONFIGS, args.configs, args.seeds, args.jobs, REPORT_KEYS, args.out)
    for name, result in results.items():
        dense = results.get(name.split("_")[0] + "_dense")
        if dense and dense is not result:
            seeds = {r["seed"] for r in result["runs"]} & {r["seed"] for r in dense["runs"]}
            mine = statistics.mean(r["test/acc"] for r in result["runs"] if r["seed"] in seeds)
            theirs = statistics.mean(r["test/acc"] for r in dense["runs"] if r["seed"] in seeds)
            result["delta_vs_dense_pp"] = 100 * (mine - theirs)
        first = result["runs"][0]
        if first.get("macs/effective_conv"):
            result["conv_macs_fewer_x"] = first["macs/dense_conv"] / first["macs/effective_conv"]
        if first.get("tt/fc1/params"):
            result["fc1_params_fewer_x"] = first["tt/fc1/ratio"]
            result["fc1_weight_params_fewer_x"] = 784 * 300 / (first["tt/fc1/params"] - 300)  # cores vs weight
    write(args.out, {"benchmark": "TT and low-rank recipes vs dense, MNIST, test accuracy after retraining",
                     "results": results})


def speed(args: argparse.Namespace) -> None:
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_micro.core import tensor_train as tt
    from lightning_micro.report.measure import measure_latency_ms

    try:
        import tltorch
    except ImportError:
        tltorch = None
    torch.manual_seed(0)
    torch.set_num_threads(1)

    class Contract(nn.Module):  # the layer's cheapest contraction plan, forced
        def __init__(self, layer: tt.TTLinear) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return tt.run_plan(x, list(self.layer.cores), self.layer.cheapest_plan(x.shape[0])) + self.layer.bias

    class RebuildEachCall(nn.Module):  # the matrix rebuilt from the cores on every call, forced
        def __init__(self, layer: tt.TTLinear) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return x @ self.layer.weight_matrix().t() + self.layer.bias

    def macs(net: nn.Module, shape: list[int], batch: int) -> int:
        counter = FlopCounterMode(display=False)
        with torch.no_grad():
            net(torch.zeros(batch, *shape))  # a first call: what a layer keeps between calls is not per-call work
            with counter:
                net(torch.zeros(batch, *shape))
        return counter.get_total_flops() // 2

    cases = {"4096x4096": (4096, 4096, [8]), "784x300": (784, 300, [8, 13, 16])}
    results = {}
    for case, (n_in, n_out, ranks) in cases.items():
        dense = nn.Linear(n_in, n_out)
        for rank in ranks:
            ours = tt.TTLinear.from_linear(dense, ranks=rank)
            nets = {"dense": dense, "tt": ours, "tt_contract": Contract(ours),
                    "tt_rebuild_each_call": RebuildEachCall(ours)}
            if tltorch is not None:
                for implementation in ("factorized", "reconstructed"):
                    nets[f"tensorly_torch_blocktt_{implementation}"] = tltorch.FactorizedLinear.from_linear(
                        dense, rank=ours.ranks, auto_tensorize=False, in_tensorized_features=tuple(ours.in_factors),
                        out_tensorized_features=tuple(ours.out_factors), factorization="blocktt",
                        implementation=implementation)
            entry = {"in_factors": ours.in_factors, "out_factors": ours.out_factors, "ranks": ours.ranks,
                     "dense_params": n_in * n_out + n_out, "tt_params": sum(p.numel() for p in ours.parameters())}
            for batch in args.batches:
                x = torch.randn(batch, n_in)
                with torch.no_grad():  # every TT variant computes the same function
                    for name, net in nets.items():
                        if name != "dense":
                            torch.testing.assert_close(net(x), ours(x), rtol=1e-3, atol=1e-3)
                times = statistics_over_rounds(nets, n_in, batch, args.rounds, measure_latency_ms)
                plan = ours.plan(batch)
                entry[f"b{batch}"] = {
                    "ms": times, "speedup_vs_dense": {k: times["dense"] / v for k, v in times.items() if k != "dense"},
                    "macs": {"dense": macs(dense, [n_in], batch), "tt": macs(ours, [n_in], batch)},
                    "tt_runs": "rebuilt matrix (kept while the cores do not change)" if plan is None
                    else f"contraction plan {[list(g) for g in plan]}",
                }
                print(case, rank, batch, {k: f"{v:.3f}" for k, v in times.items()}, entry[f"b{batch}"]["tt_runs"],
                      flush=True)
            results[f"{case}_rank{rank}"] = entry
    write(RESULTS / "decomposition_speed.json", {
        "benchmark": "TT layer forward vs dense nn.Linear, CPU, 1 thread, no gradients, median of interleaved "
                     "rounds of torch.utils.benchmark medians",
        "tensorly_torch": getattr(tltorch, "__version__", None), "torch": torch.__version__, "rounds": args.rounds,
        "results": results})


def statistics_over_rounds(nets, n_in, batch, rounds, measure):
    per_round = [measure(nets, [n_in], batch, num_threads=1, min_run_time=0.3, rounds=1) for _ in range(rounds)]
    return {name: statistics.median(r[name] for r in per_round) for name in nets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    acc.add_argument("--seeds", nargs="+", type=int, default=[42])
    acc.add_argument("--jobs", type=int, default=2)
    acc.add_argument("--out", type=Path, default=RESULTS / "decomposition_accuracy.json")
    spd = sub.add_parser("speed")
    spd.add_argument("--rounds", type=int, default=7)
    spd.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    args = parser.parse_args()
    {"accuracy": accuracy, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()
