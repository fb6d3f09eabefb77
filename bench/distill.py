"""LeNet-300-100 pruned to 95% with and without distillation from a dense network of the same seed (issue 14).

    LM_DATA_DIR=../shared/data python bench/distill.py [--configs ...] [--seeds 0 1 42] [--jobs 2]

Per seed, all 20 epochs, MNIST, one thread per run:
- ``dense``: the dense recipe (``experiment=baseline_lenet300_mnist``), the reference and the first teacher;
- ``teacher_lenet5``: the dense LeNet-5 recipe (``experiment=baseline_lenet5_mnist``), the second teacher;
- ``gmp``: GMP alone (``experiment=gmp_lenet300``);
- ``gmp_distill``: GMP with distillation from ``dense`` of the same seed (``compression=[gmp,distill]``);
- ``gmp_distill_lenet5``: the same from ``teacher_lenet5`` of the same seed.
Distillation with the defaults, alpha 0.5, T 4. ``--configs`` runs a subset; the others are kept from an earlier
bench/results/distill.json (a teacher not run now is taken from there); ``--configs`` with no name only recomputes
the means and bars. Writes each run's test accuracy, artifact bytes and the teacher's share of the fit time, and
per recipe the mean over seeds against the dense mean (the issue's bar: at most 0.1 points below dense with
distillation).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor

from common import RESULTS, ROOT, check_bars, run_recipe, write

OUT = RESULTS / "distill.json"
KEYS = ("test/acc", "size/artifact_bytes", "size/ratio", "sparsity/global", "gmp/pruned_sparsity",
        "distill/teacher_share", "distill/teacher_s", "distill/fit_s")
GMP = ["experiment=gmp_lenet300"]
TEACHERS = {"dense": ["experiment=baseline_lenet300_mnist"], "teacher_lenet5": ["experiment=baseline_lenet5_mnist"]}
STUDENTS = {"gmp": None, "gmp_distill": "dense", "gmp_distill_lenet5": "teacher_lenet5"}  # name: its teacher


def overrides(name: str, teacher_dir: str | None = None) -> list[str]:
    if name in TEACHERS:
        return TEACHERS[name]
    if STUDENTS[name] is None:
        return GMP
    return [*GMP, "compression=[gmp,distill]",
            f"compression.distill.teacher={teacher_dir or f'<{TEACHERS[STUDENTS[name]][0]} run, same seed>'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=[*TEACHERS, *STUDENTS], choices=[*TEACHERS, *STUDENTS],
                        help="what to run (none: only recompute the means and bars of the results file)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 42])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    results = json.loads(OUT.read_text())["results"] if OUT.exists() else {}  # keep what an earlier call measured

    def run_all(names: list[str]) -> None:
        jobs = [(name, seed) for name in names if name in args.configs for seed in args.seeds]

        def one(job):
            name, seed = job
            teacher = STUDENTS.get(name)
            teacher_dir = None
            if teacher is not None:
                teacher_dir = str(ROOT / next(r["run_dir"] for r in results[teacher]["runs"] if r["seed"] == seed))
            return run_recipe(f"distill_{name}", overrides(name, teacher_dir), seed, KEYS)

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(one, jobs))
        for name in dict.fromkeys(n for n, _ in jobs):
            results[name] = {"overrides": overrides(name), "runs": [r for (n, _), r in zip(jobs, runs, strict=True)
                                                                    if n == name]}

    run_all(list(TEACHERS))
    run_all(list(STUDENTS))
    dense_mean = statistics.mean(r["test/acc"] for r in results["dense"]["runs"])
    for name, result in results.items():
        result["overrides"] = overrides(name)
        result["test_acc_mean"] = statistics.mean(r["test/acc"] for r in result["runs"])
        if name != "teacher_lenet5":
            result["delta_vs_dense_pp"] = 100 * (result["test_acc_mean"] - dense_mean)
        result.pop("bar", None)  # the first version's form
        if name.startswith("gmp_distill"):
            result["bars"] = check_bars({"delta_vs_dense_pp": result["delta_vs_dense_pp"]}, {"delta_vs_dense_pp": -0.1})
    write(OUT, {"benchmark": "LeNet-300-100 at 95% sparsity, GMP alone and with distillation from a dense run of the "
                             "same seed (LeNet-300-100 or LeNet-5), MNIST, 20 epochs",
                "seeds": args.seeds, "results": results})


if __name__ == "__main__":
    main()
