"""GradualMagnitudePruning against the dense model and Lightning's ModelPruning (issue: GMP bars).

    LM_DATA_DIR=../shared/data python bench/gmp.py accuracy [--seeds 0 1 2 3] [--jobs 2]
    LM_DATA_DIR=../shared/data python bench/gmp.py overhead [--reps 9]

accuracy: trains each configuration through the real command line (`python train.py experiment=...`), every
seed, and writes bench/results/gmp_accuracy.json (test accuracy per seed, mean, and difference to dense).
Parallel jobs run with one thread each; accuracy does not depend on timing.

overhead: in one process, fits LeNet-300-100 on MNIST for 2 epochs (one pruning, one retraining) with no pruning
callback, with GradualMagnitudePruning and with Lightning's ModelPruning, interleaved, `--reps` times; writes
bench/results/gmp_overhead.json with the median ratio to the plain run and its spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import write  # bench/ is on the path when a bench script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Same final sparsity and schedule span as experiment=gmp_lenet300, in the only form ModelPruning takes (epochs).
MODEL_PRUNING = ("+callbacks.lightning_model_pruning={_target_:lightning_baseline.CubicModelPruning,"
                 "final_sparsity:0.95,start_epoch:0,end_epoch:8}")
CONFIGS = {
    "lenet300_dense": ["experiment=baseline_lenet300_mnist"],
    "lenet300_gmp95": ["experiment=gmp_lenet300"],
    # 98% of the weights: fc1 98.5%, fc2 96%, fc3 80%.
    "lenet300_gmp98": ["experiment=gmp_lenet300", "compression.gmp.final_sparsity=0.985",
                       "compression.gmp.overrides={fc2.weight:0.96,fc3.weight:0.8}"],
    "lenet300_modelpruning95": ["experiment=baseline_lenet300_mnist", MODEL_PRUNING],
    "lenet5_dense": ["experiment=baseline_lenet5_mnist"],
    "lenet5_gmp95": ["experiment=gmp_lenet5"],
}


def run_one(name: str, seed: int) -> dict:
    run_dir = ROOT / "bench" / "runs" / f"gmp_{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    args = [*CONFIGS[name], f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "bench")}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
    report = json.loads((run_dir / "compression_report.json").read_text())
    print(f"{name} seed {seed}: test/acc {report['test/acc']:.4f}", flush=True)
    weights = [v for k, v in report.items() if k.startswith("sparsity/") and k.endswith("weight")]
    return {"seed": seed, "command": "python train.py " + " ".join(args[:-1]), "wall_s": time.perf_counter() - started,
            "test/acc": report["test/acc"], "sparsity/global": report["sparsity/global"],
            "gmp/pruned_sparsity": report.get("gmp/pruned_sparsity"), "weights_sparsity_mean": statistics.mean(weights),
            "size/artifact_bytes": report["size/artifact_bytes"], "size/ratio": report["size/ratio"]}


def accuracy(args: argparse.Namespace) -> None:
    jobs = [(name, seed) for name in args.configs for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(*job), jobs))
    results = {}
    for name in args.configs:
        mine = [r for (n, _), r in zip(jobs, runs, strict=True) if n == name]
        results[name] = {"overrides": CONFIGS[name], "runs": mine,
                         "test_acc_mean": statistics.mean(r["test/acc"] for r in mine)}
    for name, result in results.items():
        dense = results.get(name.split("_")[0] + "_dense")
        if dense and dense is not result:
            deltas = [r["test/acc"] - d["test/acc"] for r, d in zip(result["runs"], dense["runs"], strict=True)]
            result["delta_vs_dense_pp_mean"] = 100 * statistics.mean(deltas)
            result["delta_vs_dense_pp_per_seed"] = [100 * d for d in deltas]
    write(args.out, {"benchmark": "GMP accuracy vs dense and ModelPruning, MNIST, 20 epochs",
                                          "seeds": args.seeds, "results": results})


def overhead(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from lightning_baseline import CubicModelPruning

    from lightning_micro.callbacks import GradualMagnitudePruning
    from lightning_micro.data import MNISTDataModule
    from lightning_micro.run.classifier import ClassifierModule

    torch.set_num_threads(args.threads)
    datamodule = MNISTDataModule(data_dir=os.environ["LM_DATA_DIR"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    variants = {
        "plain": lambda: [],
        "gmp": lambda: [GradualMagnitudePruning(final_sparsity=0.95, start=0, end=1, update_every=50)],
        "modelpruning": lambda: [CubicModelPruning(final_sparsity=0.95, start_epoch=0, end_epoch=1)],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, callbacks in variants.items():
            L.seed_everything(rep, verbose=False)
            module = ClassifierModule(
                {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 28, 28]},
                {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
                input_shape=[1, 28, 28],
            )
            trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks(),
                                limit_val_batches=0, num_sanity_val_steps=0)
            started = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            times[name].append(time.perf_counter() - started)
        print(rep, {k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    result = {}
    for name in ("gmp", "modelpruning"):
        ratios = sorted(t / p for t, p in zip(times[name], times["plain"], strict=True))
        result[name] = {"ratio_median": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1],
                        "ratio_q1": ratios[len(ratios) // 4], "ratio_q3": ratios[(3 * len(ratios)) // 4],
                        "ratios": ratios}
    write(RESULTS / "gmp_overhead.json", {
        "benchmark": "fit time with the pruning callback / without, LeNet-300-100 MNIST, 2 epochs, interleaved",
        "reps": args.reps, "threads": args.threads, "seconds": times, "results": result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    acc.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    acc.add_argument("--jobs", type=int, default=2)
    acc.add_argument("--out", type=Path, default=RESULTS / "gmp_accuracy.json")
    ovh = sub.add_parser("overhead")
    ovh.add_argument("--reps", type=int, default=9)
    ovh.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("LM_DATA_DIR"):
        sys.exit("set LM_DATA_DIR to the folder holding MNIST/raw (here: LM_DATA_DIR=../shared/data)")
    if args.command == "accuracy":
        accuracy(args)
    else:
        overhead(args)


if __name__ == "__main__":
    main()
