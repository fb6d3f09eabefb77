"""GMP at 95% with per-layer targets from the sensitivity analysis against every layer at 95% (issue 14).

    LM_DATA_DIR=../shared/data python bench/sensitivity.py [--seeds 0 1 42] [--jobs 2]

Per seed: the dense recipe (``experiment=baseline_lenet300_mnist``); ``lightning-micro-sensitivity <that run>
--target 0.95`` on it (each layer pruned alone, the whole validation set), which writes ``overrides.yaml``; then
``experiment=gmp_lenet300`` (20 epochs) once with ``compression.gmp.overrides=<that file>`` and once uniform
(``compression.gmp.overrides=null``: every layer at 95%). Writes bench/results/sensitivity.json: each run's test
accuracy and bytes, the per-layer sparsities chosen, the means over seeds (the issue's bar: sensitivity at least as
accurate as uniform).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import yaml
from common import RESULTS, ROOT, check_bars, run_recipe, write

KEYS = ("test/acc", "size/artifact_bytes", "size/ratio", "sparsity/global", "sparsity/fc1.weight",
        "sparsity/fc2.weight", "sparsity/fc3.weight")
DENSE = ["experiment=baseline_lenet300_mnist"]
GMP95 = ["experiment=gmp_lenet300", "compression.gmp.final_sparsity=0.95"]


def analyse(dense_run: dict) -> str:
    """Run the sensitivity tool on a dense run; the overrides file's path (relative to the repository)."""
    run_dir = ROOT / dense_run["run_dir"]
    done = subprocess.run([sys.executable, "-m", "lightning_micro.tools.sensitivity", str(run_dir), "--target", "0.95"],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sensitivity on {run_dir} failed:\n{done.stderr[-3000:]}")
    return str((run_dir / "sensitivity" / "overrides.yaml").relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 42])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        dense = dict(zip(args.seeds, pool.map(lambda s: run_recipe("sens_dense", DENSE, s, KEYS), args.seeds),
                         strict=True))
        files = dict(zip(args.seeds, pool.map(analyse, dense.values()), strict=True))

        def compressed(job):
            name, seed = job
            chosen = f"compression.gmp.overrides={ROOT / files[seed]}" if name == "sensitivity" else \
                "compression.gmp.overrides=null"
            return name, run_recipe(f"sens_{name}", [*GMP95, chosen], seed, KEYS)

        runs = list(pool.map(compressed, [(n, s) for n in ("sensitivity", "uniform") for s in args.seeds]))
    for run in dense.values():
        run["overrides_file"] = files[run["seed"]]
        run["chosen"] = yaml.safe_load((ROOT / files[run["seed"]]).read_text())["overrides"]
    results = {"dense": {"overrides": DENSE, "runs": list(dense.values())},
               "sensitivity": {"overrides": [*GMP95, "compression.gmp.overrides=<dense run>/sensitivity/"
                                                     "overrides.yaml"],
                               "runs": [r for n, r in runs if n == "sensitivity"]},
               "uniform": {"overrides": [*GMP95, "compression.gmp.overrides=null"],
                           "runs": [r for n, r in runs if n == "uniform"]}}
    dense_mean = statistics.mean(r["test/acc"] for r in results["dense"]["runs"])
    for result in results.values():
        result["test_acc_mean"] = statistics.mean(r["test/acc"] for r in result["runs"])
        result["delta_vs_dense_pp"] = 100 * (result["test_acc_mean"] - dense_mean)
    gain = 100 * (results["sensitivity"]["test_acc_mean"] - results["uniform"]["test_acc_mean"])
    results["sensitivity"]["bars"] = check_bars({"vs_uniform_pp": gain}, {"vs_uniform_pp": 0.0})
    write(RESULTS / "sensitivity.json", {
        "benchmark": "LeNet-300-100 pruned to 95% by GMP, per-layer targets from lightning-micro-sensitivity on the "
                     "dense run of the same seed against every layer at 95%, MNIST, 20 epochs",
        "seeds": args.seeds, "results": results})


if __name__ == "__main__":
    main()
