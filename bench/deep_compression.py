"""Deep Compression's pipeline (prune, then train the survivors with few-bit weights, entropy-coded artifact) against
the paper's Table 1 (Han et al., ICLR 2016), LeNet-300-100 and LeNet-5 on MNIST (issue 14).

    LM_DATA_DIR=../shared/data python bench/deep_compression.py [--configs ...] [--seeds 0 1 42] [--jobs 2]

Configurations, each 20 epochs with its model's dense recipe (one thread per run):
- ``lenet300`` / ``lenet5``: ``experiment=deep_compression_<model>`` (95% pruned, 4-bit weights);
- ``lenet300_distill``: the same with distillation (alpha 0.5, T 4) from the dense LeNet-5 of the same seed
  (``experiment=baseline_lenet5_mnist``), taken from bench/results/distill.json (``teacher_lenet5``, run by
  bench/distill.py) or run here;
- ``lenet5_distill``: the same from the dense ResNet-20 of the same seed (``experiment=baseline_resnet20_mnist``, 5
  epochs, 99.6%), taken from bench/results/structured.json (``resnet20_dense``) or run here. A dense LeNet-5
  teacher did not help a LeNet-5 student (99.13% against 99.15% without, seed 42), so the stronger network teaches.
Writes bench/results/deep_compression.json: each run's test error, artifact bytes and ratio to the fp32 artifact,
the means over seeds, the paper's figures and the issue's bars (ratio and error).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor

from common import RESULTS, ROOT, run_recipe, write

OUT = RESULTS / "deep_compression.json"
KEYS = ("test/acc", "size/artifact_bytes", "size/dense_bytes", "size/ratio", "sparsity/global",
        "quant/weight_bits", "distill/teacher_share")
# per student: the teacher's recipe, and where an earlier bench recorded its runs (file, result name)
TEACHERS = {"lenet300": (["experiment=baseline_lenet5_mnist"], "distill.json", "teacher_lenet5"),
            "lenet5": (["experiment=baseline_resnet20_mnist"], "structured.json", "resnet20_dense")}
# Han et al. 2016, Table 1: compression rate and top-1 error of the compressed network (the dense network's error)
PAPER = {"lenet300": {"ratio": 40, "error_pct": 1.58, "dense_error_pct": 1.64},
         "lenet5": {"ratio": 39, "error_pct": 0.74, "dense_error_pct": 0.80}}
BARS = {"lenet300": {"ratio": 50, "error_pct": 1.58}, "lenet5": {"ratio": 39, "error_pct": 0.74}}
CONFIGS = ("lenet300", "lenet300_distill", "lenet5", "lenet5_distill")


def overrides(name: str, teacher_dir: str | None = None) -> list[str]:
    model, _, distill = name.partition("_")
    recipe = [f"experiment=deep_compression_{model}"]
    if not distill:
        return recipe
    return [*recipe, "compression=[gmp,qat,distill]",
            f"compression.distill.teacher={teacher_dir or f'<{TEACHERS[model][0][0]} run, same seed>'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 42])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    teachers: dict[tuple[str, int], str] = {}  # (student model, seed): teacher run directory
    with ThreadPoolExecutor(args.jobs) as pool:
        for model in {n.partition("_")[0] for n in args.configs if n.endswith("_distill")}:
            recipe, file, result = TEACHERS[model]
            known = json.loads((RESULTS / file).read_text())["results"].get(result, {}).get("runs", []) \
                if (RESULTS / file).exists() else []
            for run in known:
                if (ROOT / run["run_dir"] / "model.safetensors").exists():
                    teachers[model, run["seed"]] = run["run_dir"]
            missing = [s for s in args.seeds if (model, s) not in teachers]
            for seed, run in zip(missing, pool.map(lambda s, r=recipe, m=model: run_recipe(f"dc_teacher_{m}", r, s,
                                                                                            KEYS), missing),
                                 strict=True):
                teachers[model, seed] = run["run_dir"]

        def one(job):
            name, seed = job
            model = name.partition("_")[0]
            teacher = str(ROOT / teachers[model, seed]) if name.endswith("_distill") else None
            return run_recipe(f"dc_{name}", overrides(name, teacher), seed, KEYS)

        jobs = [(name, seed) for name in args.configs for seed in args.seeds]
        runs = list(pool.map(one, jobs))
    # read only now: another call may have written its results while these ran
    results = json.loads(OUT.read_text())["results"] if OUT.exists() else {}
    for name in args.configs:
        mine = [r for (n, _), r in zip(jobs, runs, strict=True) if n == name]
        for run in mine:
            run["error_pct"] = 100 * (1 - run["test/acc"])
            if name.endswith("_distill"):
                run["teacher_run_dir"] = teachers[name.partition("_")[0], run["seed"]]
        results[name] = {"overrides": overrides(name), "runs": mine}
    for name, result in results.items():
        model = name.partition("_")[0]
        runs = result["runs"]
        result["figures"] = {"error_pct_mean": statistics.mean(r["error_pct"] for r in runs),
                             "error_pct_max": max(r["error_pct"] for r in runs),
                             "ratio_mean": statistics.mean(r["size/ratio"] for r in runs)}
        result["paper"] = PAPER[model]
        figures, bars = result["figures"], BARS[model]
        result["bars"] = {"ratio": {"bar": bars["ratio"], "measured": figures["ratio_mean"],
                                    "met": figures["ratio_mean"] >= bars["ratio"]},
                          "error_pct": {"bar": bars["error_pct"], "measured": figures["error_pct_mean"],
                                        "met": figures["error_pct_mean"] <= bars["error_pct"]}}
    write(OUT, {"benchmark": "Deep Compression's pipeline (GMP 95%, 4-bit weights, LZMA-coded artifact) against Han "
                             "et al. 2016 Table 1, MNIST, 20 epochs, with and without distillation from a dense "
                             "teacher (LeNet-5 for LeNet-300-100, ResNet-20 for LeNet-5)",
                "seeds": args.seeds, "results": results})


if __name__ == "__main__":
    main()
