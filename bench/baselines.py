"""Dense MNIST baselines: train each recipe through the real command line and collect its compression report.

    LM_DATA_DIR=../shared/data python bench/baselines.py [--seeds 42 43] [--recipes baseline_lenet300_mnist]

Writes bench/results/baselines.json: per recipe, the command, each seed's report and the mean test accuracy.
Runs go to bench/runs/ (ignored by git). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("baseline_lenet300_mnist", "baseline_lenet5_mnist")
KEPT = ("test/acc", "params/total", "macs/dense", "size/artifact_bytes", "latency/ms_b1", "latency/ms_b64")


def run_recipe(recipe: str, seed: int, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"{recipe}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "train.py", f"experiment={recipe}", f"seed={seed}", "logger=csv",
               "~callbacks.rich_progress_bar", f"hydra.run.dir={run_dir}"]
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    report = json.loads((run_dir / "compression_report.json").read_text())
    return {"seed": seed, "run_dir": str(run_dir.relative_to(ROOT)), "wall_s": time.perf_counter() - started,
            **{k: report[k] for k in KEPT}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "baselines.json")
    args = parser.parse_args()
    if not os.environ.get("LM_DATA_DIR"):
        sys.exit("set LM_DATA_DIR to the folder holding MNIST/raw (here: LM_DATA_DIR=../shared/data)")
    results = {}
    for recipe in args.recipes:
        runs = [run_recipe(recipe, seed, ROOT / "bench" / "runs") for seed in args.seeds]
        accs = [r["test/acc"] for r in runs]
        results[recipe] = {
            "command": f"LM_DATA_DIR=../shared/data python train.py experiment={recipe} seed=<seed>",
            "seeds": args.seeds,
            "test_acc_mean": statistics.mean(accs),
            "test_acc_min": min(accs),
            "runs": runs,
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    payload = {"benchmark": "dense MNIST baselines", "commit": commit.stdout.strip() or None,
               "date": time.strftime("%Y-%m-%d"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({r: v["test_acc_mean"] for r, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
