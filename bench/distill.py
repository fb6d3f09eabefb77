"""LeNet-300-100 pruned to 95% with and without distillation from the dense network of the same seed (issue 14).

    LM_DATA_DIR=../shared/data python bench/distill.py [--seeds 0 1 42] [--jobs 2]

Per seed: the dense recipe (``experiment=baseline_lenet300_mnist``, the teacher and the reference), GMP alone
(``experiment=gmp_lenet300``) and GMP with distillation from that dense run (``compression=[gmp,distill]``,
alpha 0.5, T 4), all 20 epochs, MNIST, one thread per run. Writes bench/results/distill.json: each run's test
accuracy, artifact bytes and the distillation's teacher share of the fit time, and per recipe the mean over seeds
against the dense mean (the issue's bar: at most 0.1 points below dense with distillation).
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor

from common import RESULTS, ROOT, run_recipe, write

KEYS = ("test/acc", "size/artifact_bytes", "size/ratio", "sparsity/global", "gmp/pruned_sparsity",
        "distill/teacher_share", "distill/teacher_s", "distill/fit_s")
DENSE = ["experiment=baseline_lenet300_mnist"]
GMP = ["experiment=gmp_lenet300"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 42])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        dense = dict(zip(args.seeds, pool.map(lambda s: run_recipe("distill_dense", DENSE, s, KEYS), args.seeds),
                         strict=True))

        def compressed(job):
            name, seed = job
            extra = ([] if name == "gmp" else
                     ["compression=[gmp,distill]", f"compression.distill.teacher={ROOT / dense[seed]['run_dir']}"])
            return name, run_recipe(f"distill_{name}", [*GMP, *extra], seed, KEYS)

        runs = list(pool.map(compressed, [(n, s) for n in ("gmp", "gmp_distill") for s in args.seeds]))
    results = {"dense": {"overrides": DENSE, "runs": list(dense.values())}}
    for name in ("gmp", "gmp_distill"):
        mine = [r for n, r in runs if n == name]
        results[name] = {"overrides": GMP if name == "gmp" else [*GMP, "compression=[gmp,distill]",
                                                                 "compression.distill.teacher=<dense run, same seed>"],
                         "runs": mine}
    dense_mean = statistics.mean(r["test/acc"] for r in results["dense"]["runs"])
    for result in results.values():
        result["test_acc_mean"] = statistics.mean(r["test/acc"] for r in result["runs"])
        result["delta_vs_dense_pp"] = 100 * (result["test_acc_mean"] - dense_mean)
    results["gmp_distill"]["bar"] = {"delta_vs_dense_pp": -0.1,
                                     "met": results["gmp_distill"]["delta_vs_dense_pp"] >= -0.1}
    write(RESULTS / "distill.json", {"benchmark": "LeNet-300-100 at 95% sparsity, GMP alone and with distillation "
                                                  "from the dense run of the same seed, MNIST, 20 epochs",
                                     "seeds": args.seeds, "results": results})


if __name__ == "__main__":
    main()
