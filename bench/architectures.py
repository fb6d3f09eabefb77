"""Recipes on the zoo's library-style architectures against their dense recipes, trained in the same bench:
torchvision's MobileNetV3-Small (32x32 MNIST), the small vision transformer and the ShuffleNet-style CNN.

    LM_DATA_DIR=../shared/data python bench/architectures.py [--configs ...] [--seeds 42] [--jobs 2]
    python bench/architectures.py --speed [--rounds 9]   # after the runs: latencies re-measured together
    python bench/architectures.py --adopt NAME=RUN_DIR ...  # record runs whose bench process was stopped

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
import sys
from collections.abc import Callable
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
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
    # Fan et al. 2019 train with a higher rate where half the layers are to go: more of the run is spent shallow
    "vit_layerdrop_p05": ["experiment=layerdrop_vit_tiny", "compression.layerdrop.p=0.5",
                          "compression.layerdrop.prune_at=0.2"],
    # the same, distilled (alpha 0.5, T 4) from the dense recipe's network of the same seed (run first if needed)
    "vit_layerdrop_distill": ["experiment=layerdrop_vit_tiny", "compression=[layerdrop,distill]",
                              "compression.distill.teacher=<vit_dense run, same seed>"],
    "vit_int8": ["experiment=qat_int8_vit_tiny"],
    "shufflenet_dense": ["experiment=baseline_shufflenet_mnist"],
    "shufflenet_int8": ["experiment=qat_int8_shufflenet"],
}
# config -> the config whose run of the same seed is its distillation teacher
TEACHERS = {"vit_layerdrop_distill": "vit_dense"}
INPUT_SHAPES = {"mnv3": [1, 32, 32], "vit": [1, 28, 28], "shufflenet": [1, 28, 28]}
# The bars: figure -> threshold (every figure is "at least").
BARS = {
    "mnv3_structured": {"macs_removed_pct": 50.0, "delta_vs_dense_pp": -0.5, "speedup_b64": 1.5},
    "vit_heads": {"macs_removed_pct": 40.0, "delta_vs_dense_pp": -0.5, "speedup_b64": 1.4},
    "vit_layerdrop": {"delta_vs_dense_pp": -0.5, "speedup_b64": 1.6},
    "vit_layerdrop_distill": {"delta_vs_dense_pp": -0.5, "speedup_b64": 1.6},
    "vit_int8": {"delta_vs_dense_pp": -0.3, "speedup_b64": 1.0},
}
BENCHMARK = "recipes on library-style architectures vs the dense recipe of the same model, MNIST, 1 thread"
REPORT_KEYS = ("test/acc", "params/total", "params/dense_total", "size/artifact_bytes", "size/dense_bytes",
               "size/ratio", "macs/dense", "macs/effective", "latency/ms_b1", "latency/ms_b64",
               "latency/dense_ms_b1", "latency/dense_ms_b64", "latency/speedup_b1", "latency/speedup_b64",
               "structured/kept_fraction", "structured/left_whole", "layerdrop/removed", "quant/weight_bits",
               "quant/activation_bits")


def idle_speedups() -> dict[str, float]:
    """``{run: batch-64 speed-up against its dense run}`` from --speed, where it has measured."""
    path = RESULTS / "architectures_speed.json"
    if not path.exists():
        return {}
    measured = json.loads(path.read_text())["results"]
    return {name: value for model in measured.values() for name, value in model["b64"]["speedup_vs_dense"].items()}


def figures_of(name: str, results: dict) -> dict:
    result = results[name]
    first = result["runs"][0]
    idle = idle_speedups()
    # the bars' speed-up: re-measured on the idle machine (--speed) where it was, else the run's own figure
    figures = {"test_acc": result["test_acc_mean"], "speedup_b64": idle.get(name, first.get("latency/speedup_b64")),
               "speedup_b64_in_run": first.get("latency/speedup_b64"),
               "macs_removed_pct": 100 * (1 - first["macs/effective"] / first["macs/dense"]),
               "size_ratio": first.get("size/ratio")}
    dense = results.get(name.split("_")[0] + "_dense")
    if dense and dense is not result:
        figures["delta_vs_dense_pp"] = delta_vs_dense_pp(result, dense)
    return figures


def speed(rounds: int) -> None:
    """Re-measure every run whose artifact is on disk with its model's dense run (which must be), in one process;
    the figures of runs whose artifacts are gone stay as an earlier call measured them (``measured`` says when,
    each speed-up against the dense network timed in the same call)."""
    import time

    import torch

    results = json.loads((RESULTS / "architectures.json").read_text())["results"]
    present = {n: r for n, r in results.items() if (ROOT / r["runs"][0]["run_dir"] / "model.safetensors").exists()}
    models = tuple(sorted({name.split("_")[0] for name in present if f"{name.split('_')[0]}_dense" in present}))
    present = {n: r for n, r in present.items() if n.split("_")[0] in models}
    measured = speed_against_dense(present, models, rounds, INPUT_SHAPES)
    onnx = onnx_runtime_speed(present, models, rounds)
    path = RESULTS / "architectures_speed.json"
    earlier = json.loads(path.read_text()) if path.exists() else {"results": {}, "onnx_runtime": {}}
    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for model, batches in measured.items():
        kept = earlier["results"].setdefault(model, {})
        when = kept.setdefault("measured", {})
        when.update({name: day for name in batches["b64"]["ms"]})
        for batch, figures in batches.items():
            for key, values in figures.items():
                kept.setdefault(batch, {}).setdefault(key, {}).update(values)
        old_onnx = earlier["onnx_runtime"].setdefault(model, {})
        for key, values in onnx[model].items():
            old_onnx.setdefault(key, {}).update(values)
    write(path, {
        "benchmark": "forward of each run's reloaded artifact, CPU, 1 thread, no gradients, median of interleaved "
                     "rounds of torch.utils.benchmark medians; each speed-up against the dense network timed in the "
                     "same call", "cpu": cpu_name(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rounds": rounds,
        "results": earlier["results"], "onnx_runtime": earlier["onnx_runtime"]})
    payload = json.loads((RESULTS / "architectures.json").read_text())
    add_figures(payload["results"], figures_of, BARS)  # the bars now judge the idle machine's speed-ups
    write(RESULTS / "architectures.json", {k: v for k, v in payload.items() if k not in ("commit", "date")})


def onnx_runtime_speed(results: dict, models: tuple[str, ...], rounds: int) -> dict:
    """Each run's network in ONNX Runtime (exported from its artifact) beside the dense fp32 PyTorch network, in
    one process, batch 64, one thread: ``{model: {"ms": {...}, "vs_dense_pytorch": {...}, "not_exported": {...}}}``
    (a network torch's exporter cannot write is named with its error)."""
    import statistics

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.artifact.onnx import OnnxRuntimeNet, export_onnx
    from lightning_micro.report.measure import measure_latency_ms

    out = {}
    for model in models:
        names = [n for n in results if n.startswith(model + "_")]
        nets, failed = {}, {}
        dense = f"{model}_dense"
        nets[f"{dense} (PyTorch)"] = load_compressed(ROOT / results[dense]["runs"][0]["run_dir"] / "model.safetensors")
        for name in names:
            run_dir = ROOT / results[name]["runs"][0]["run_dir"]
            try:
                if not (run_dir / "model.onnx").exists():
                    export_onnx(run_dir)
                nets[f"{name} (ONNX Runtime)"] = OnnxRuntimeNet(run_dir / "model.onnx", threads=1)
            except Exception as err:  # noqa: BLE001 - the exporter's limits are reported, not hidden
                failed[name] = str(err).splitlines()[0][:200]
        per_round = [measure_latency_ms(nets, INPUT_SHAPES[model], 64, num_threads=1, min_run_time=0.3, rounds=1)
                     for _ in range(rounds)]
        ms = {n: statistics.median(r[n] for r in per_round) for n in nets}
        reference = ms[f"{dense} (PyTorch)"]
        out[model] = {"ms": ms, "vs_dense_pytorch": {n: reference / v for n, v in ms.items()}, "not_exported": failed}
    return out


def adopt(out: Path, runs: list[str]) -> None:
    """Record runs this bench's command trained whose bench process was stopped before it wrote them
    (``NAME=RUN_DIR``, e.g. ``vit_int8=bench/runs/arch_vit_int8_seed42_...``): the same fields, no wall time."""
    payload = json.loads(out.read_text())
    for item in runs:
        name, _, run_dir = item.partition("=")
        report = json.loads((ROOT / run_dir / "compression_report.json").read_text())
        seed = int(run_dir.rsplit("_seed", 1)[1].split("_")[0])
        args = [*CONFIGS[name], f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar"]
        # a run finished by resuming its own last checkpoint says so in its command
        overrides = (ROOT / run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
        args += [line.removeprefix("- ") for line in overrides if line.startswith("- ckpt_path=")]
        run = {"seed": seed, "command": "python train.py " + " ".join(args), "run_dir": run_dir,
               **{k: report.get(k) for k in REPORT_KEYS if report.get(k) is not None}}
        payload["results"][name] = {"overrides": CONFIGS[name], "runs": [run], "test_acc_mean": run["test/acc"]}
    add_figures(payload["results"], figures_of, BARS)
    write(out, {k: v for k, v in payload.items() if k not in ("commit", "date")})


def main() -> None:
    if "--adopt" in sys.argv:
        adopt(RESULTS / "architectures.json", sys.argv[sys.argv.index("--adopt") + 1:])
        return
    args = bench_arguments(__doc__, CONFIGS, list(CONFIGS), RESULTS / "architectures.json")
    if args.speed:
        speed(args.rounds)
        return
    students = [n for n in args.configs if n in TEACHERS]
    teachers = [n for n in args.configs if n not in TEACHERS]
    results = run_recipes("arch", CONFIGS, teachers, args.seeds, args.jobs, REPORT_KEYS, args.out)
    if students:
        # a teacher not run now is taken from an earlier call whose artifact is still on disk
        missing = sorted({TEACHERS[n] for n in students} - set(teachers))
        for name in missing:
            runs = results.get(name, {}).get("runs", [])
            if not all(any(r["seed"] == s and (ROOT / r["run_dir"] / "model.safetensors").exists() for r in runs)
                       for s in args.seeds):
                results.update(run_recipes("arch", CONFIGS, [name], args.seeds, args.jobs, REPORT_KEYS, args.out))
        write(args.out, {"benchmark": BENCHMARK, "results": results})  # the teachers are kept if a student fails

        def with_teacher(name: str) -> Callable[[int], list[str]]:
            def overrides(seed: int) -> list[str]:
                teacher = next(r for r in results[TEACHERS[name]]["runs"] if r["seed"] == seed)
                return [o if not o.startswith("compression.distill.teacher=") else
                        f"compression.distill.teacher={ROOT / teacher['run_dir']}" for o in CONFIGS[name]]
            return overrides

        results = run_recipes("arch", {**CONFIGS, **{n: with_teacher(n) for n in students}}, students, args.seeds,
                              args.jobs, REPORT_KEYS, args.out, shown=CONFIGS)
    add_figures(results, figures_of, BARS)
    write(args.out, {"benchmark": BENCHMARK, "results": results})


if __name__ == "__main__":
    main()
