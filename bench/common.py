"""What every bench script shares: the JSON writer (results carry the commit and date) and one recipe run
through the real command line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs"
if str(ROOT) not in sys.path:  # this checkout's lightning_micro, not another one installed in editable mode
    sys.path.insert(1, str(ROOT))


def write(path: Path, payload: dict) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    payload = {**payload, "commit": commit.stdout.strip() or None, "date": time.strftime("%Y-%m-%d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def run_recipe(tag: str, overrides: list[str], seed: int, report_keys: tuple[str, ...] | None = None) -> dict:
    """``python train.py <overrides> seed=<seed>`` with one thread into bench/runs/<tag>_seed<seed>_<time>; the
    command, run directory, wall time and the report's fields (all, or ``report_keys``)."""
    run_dir = RUNS / f"{tag}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    args = [*overrides, f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{tag} seed {seed} failed:\n{out.stderr[-3000:]}")
    report = json.loads((run_dir / "compression_report.json").read_text())
    print(f"{tag} seed {seed}: test/acc {report['test/acc']:.4f}", flush=True)
    fields = report if report_keys is None else {k: report.get(k) for k in report_keys}
    return {"seed": seed, "command": "python train.py " + " ".join(args[:-1]),
            "run_dir": str(run_dir.relative_to(ROOT)), "wall_s": round(time.perf_counter() - started, 1), **fields}


def run_recipes(prefix: str, configs: dict, names: list[str], seeds: list[int], jobs: int,
                report_keys: tuple[str, ...], out: Path, shown: dict[str, list[str]] | None = None) -> dict:
    """Run ``names`` (keys of ``configs``: overrides, or a function of the seed that returns them) for every seed,
    ``jobs`` at a time, and return the results of ``out`` (an earlier call's JSON, if any) updated with these:
    ``{name: {"overrides", "runs", "test_acc_mean"}}``; ``overrides`` is ``shown[name]`` where given."""
    todo = [(name, seed) for name in names for seed in seeds]

    def one(job: tuple[str, int]) -> dict:
        name, seed = job
        overrides = configs[name](seed) if callable(configs[name]) else configs[name]
        return run_recipe(f"{prefix}_{name}", overrides, seed, report_keys)

    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(one, todo))
    results = json.loads(out.read_text())["results"] if out.exists() else {}  # keep what an earlier call measured
    for name in names:
        mine = [{k: v for k, v in r.items() if v is not None} for (n, _), r in zip(todo, runs, strict=True)
                if n == name]
        results[name] = {"overrides": (shown or configs)[name], "runs": mine,
                         "test_acc_mean": statistics.mean(r["test/acc"] for r in mine)}
    return results


def delta_vs_dense_pp(result: dict, dense: dict) -> float:
    """Mean test accuracy of ``result`` minus the dense recipe's, over the seeds both ran, in points."""
    seeds = {r["seed"] for r in result["runs"]} & {r["seed"] for r in dense["runs"]}
    mine = statistics.mean(r["test/acc"] for r in result["runs"] if r["seed"] in seeds)
    theirs = statistics.mean(r["test/acc"] for r in dense["runs"] if r["seed"] in seeds)
    return 100 * (mine - theirs)


def check_bars(figures: dict, bars: dict) -> dict:
    """``{figure: {"bar", "measured", "met"}}`` for the issue's bars (each figure must be at least its bar)."""
    return {key: {"bar": bar, "measured": figures.get(key),
                  "met": figures.get(key) is not None and figures[key] >= bar} for key, bar in bars.items()}


def speed_against_dense(results: dict, models: tuple[str, ...], rounds: int,
                        input_shapes: dict[str, list[int]] | None = None) -> dict:
    """Reload the artifact of every ``<model>_*`` run of ``results`` and time them all in this process: per model
    and batch size (64, 1), the median over ``rounds`` interleaved rounds of ``torch.utils.benchmark`` medians (one
    thread) and the speed-up against ``<model>_dense``; inputs are ``input_shapes[model]`` (default 1x28x28)."""
    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.report.measure import measure_latency_ms

    measured = {}
    for model in models:
        names = [n for n in results if n.startswith(model + "_")]
        nets = {n: load_compressed(ROOT / results[n]["runs"][0]["run_dir"] / "model.safetensors") for n in names}
        for batch in (64, 1):
            shape = (input_shapes or {}).get(model, [1, 28, 28])
            per_round = [measure_latency_ms(nets, shape, batch, num_threads=1, min_run_time=0.3, rounds=1)
                         for _ in range(rounds)]
            ms = {n: statistics.median(r[n] for r in per_round) for n in nets}
            dense = ms[f"{model}_dense"]
            measured.setdefault(model, {})[f"b{batch}"] = {"ms": ms,
                                                           "speedup_vs_dense": {n: dense / v for n, v in ms.items()}}
    return measured


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def bench_arguments(doc: str, configs: dict, default_configs: list[str], out: Path) -> argparse.Namespace:
    """The command line every recipe bench takes: ``--configs``, ``--seeds``, ``--jobs``, ``--out``, ``--speed``
    (re-measure latencies from the runs' artifacts) and ``--rounds``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=default_configs, choices=list(configs))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--speed", action="store_true", help="re-measure latencies from the runs' artifacts")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--families", nargs="+", help="runtime.py --speed: re-time only these networks (lenet300)")
    return parser.parse_args()


def add_figures(results: dict, figures_of, bars: dict) -> dict:
    """Each result's ``figures`` (``figures_of(name, results)``) and, where ``bars`` names it, its bars."""
    for name, result in results.items():
        result["figures"] = figures_of(name, results)
        if name in bars:
            result["bars"] = check_bars(result["figures"], bars[name])
    return results
