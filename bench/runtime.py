"""Pruned LeNet-300-100s in the runtime that runs them fastest, against the dense network trained in the same bench
(issue 25: sparse kernels, the fastest runtime named, the report's ONNX Runtime timing checked).

    LM_DATA_DIR=../shared/data python bench/runtime.py [--configs ...] [--seeds 42] [--jobs 1]
    python bench/runtime.py --speed [--rounds 9]   # after the runs: every form re-timed together

Trains each recipe through the real command line (one thread; `--jobs 1` by default, because each run's export
times its layers' kernels and a second job on a 2-core machine would time them under load) with the defaults
`report.sparse_kernels=auto` and `report.onnx=true`, then, in this process, loads every run's artifact (its pruned
layers on the kernels its export chose) and its `model.onnx` and times, interleaved, at batch 64 and 1, one
thread:

- each compressed network in PyTorch eager and in ONNX Runtime, and the dense fp32 network in both;
- the fastest form per batch size, its speed-up against dense fp32 in the same runtime and against dense fp32
  PyTorch eager, and that speed-up over the recipe's MAC reduction (dense MACs over the MACs its sparse kernels
  need: one per non-zero weight on a CSR layer; the share of the arithmetic saving that reaches the clock);
- the artifact on dense kernels (`sparse_kernels=never`), so the sparse kernels' own gain shows;
- a standalone ONNX Runtime benchmark of each `model.onnx` (a fresh Python process with onnxruntime and NumPy
  alone, a warmed session, the same thread count: a plain loop of `session.run`), against what the run's report
  said for the same file.

Writes bench/results/runtime.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from common import RESULTS, ROOT, bench_arguments, cpu_name, run_recipes, write

CONFIGS = {
    "lenet300_dense": ["experiment=baseline_lenet300_mnist"],
    "lenet300_gmp95": ["experiment=gmp_lenet300"],
    # 98% of the weights, as bench/gmp.py: fc1 98.5%, fc2 96%, fc3 80%
    "lenet300_gmp98": ["experiment=gmp_lenet300", "compression.gmp.final_sparsity=0.985",
                       "compression.gmp.overrides={fc2.weight:0.96,fc3.weight:0.8}"],
    "lenet300_dc": ["experiment=deep_compression_lenet300"],
    # LeNet-5's speed depends on the widths structured pruning leaves, not on how well they trained: one epoch each
    # (the recipes' schedules are fractions of the run), so these rows time the recipes' final structure; their
    # 20-epoch accuracies are bench/structured.py's (structured.json)
    "lenet5_dense": ["experiment=baseline_lenet5_mnist", "trainer.max_epochs=1"],
    "lenet5_structured": ["experiment=structured_lenet5", "trainer.max_epochs=1"],
    "lenet5_structured_int8": ["experiment=structured_int8_lenet5", "trainer.max_epochs=1"],
}
SHAPE_ONLY = {"lenet5_dense", "lenet5_structured", "lenet5_structured_int8"}
REPORT_KEYS = ("test/acc", "size/artifact_bytes", "size/dense_bytes", "size/ratio", "size/onnx_bytes",
               "sparsity/global", "macs/dense", "macs/effective", "kernels/sparse_layers", "kernels/fc1",
               "kernels/fc2", "kernels/fc3", "latency/onnx_ms_b1", "latency/onnx_ms_b64", "runtime/fastest_b64",
               "latency/fastest_speedup_b64")
# issue 25's bars: speed-up of the fastest form against dense fp32 at batch 64 (and never slower at batch 1)
BARS = {"lenet300_gmp95": 2.5, "lenet300_gmp98": 4.0, "lenet300_dc": 2.5, "lenet5_structured": 5.5}
# structured int8 LeNet-5: against dense fp32 PyTorch eager, in its fastest form
EAGER_BARS = {"lenet5_structured_int8": 8.0}
INPUT = [1, 28, 28]
STANDALONE = """
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
out = {}
for batch in (1, 64):
    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    for _ in range(200):
        session.run(None, {name: x})
    runs = []
    for _ in range(7):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.2:
            session.run(None, {name: x})
            n += 1
        runs.append((time.perf_counter() - start) / n * 1e3)
    out[f"b{batch}"] = statistics.median(runs)
print(json.dumps(out))
"""


def nonzero_macs(net) -> int:
    """Per-image MACs when every Linear skips its zero weights (what a CSR kernel does): the Linears' non-zeros, plus
    what the other layers count when run (``net`` on dense kernels, so that the count starts from the dense one)."""
    import torch
    from torch import nn

    from lightning_micro.report.measure import count_macs

    linear = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))
    kept = sum(int(torch.count_nonzero(m.weight)) for m in net.modules() if isinstance(m, nn.Linear))
    return count_macs(net, INPUT) - linear + kept


def speed(rounds: int) -> None:
    import torch

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.artifact.onnx import OnnxRuntimeNet
    from lightning_micro.core.memory_layout import layout_of
    from lightning_micro.report.measure import count_macs, measure_latency_ms

    payload = json.loads((RESULTS / "runtime.json").read_text())
    results = payload["results"]
    run_dir = {name: ROOT / r["runs"][0]["run_dir"] for name, r in results.items()}
    nets = {}
    for name, where in run_dir.items():
        nets[f"{name}|PyTorch eager"] = load_compressed(where / "model.safetensors")
        nets[f"{name}|ONNX Runtime"] = OnnxRuntimeNet(where / "model.onnx", threads=1)
        if not name.endswith("_dense"):
            nets[f"{name}|PyTorch eager, dense kernels"] = load_compressed(where / "model.safetensors",
                                                                          sparse_kernels="never")
    ms = {}
    for batch in (64, 1):
        per_round = [measure_latency_ms(nets, INPUT, batch, num_threads=1, min_run_time=0.3, rounds=1)
                     for _ in range(rounds)]
        ms[f"b{batch}"] = {n: statistics.median(r[n] for r in per_round) for n in nets}
    for name, result in results.items():
        model = name.split("_")[0]
        dense_macs = count_macs(nets[f"{model}_dense|PyTorch eager"], INPUT)
        figures = {}
        for batch, times in ms.items():
            forms = {form.split("|")[1]: t for form, t in times.items() if form.startswith(name + "|")}
            deployable = {f: t for f, t in forms.items() if f in ("PyTorch eager", "ONNX Runtime")}
            fastest = min(deployable, key=deployable.__getitem__)
            same_runtime_dense = times[f"{model}_dense|{fastest}"]
            figures[batch] = {
                "ms": forms, "fastest": fastest,
                "speedup_vs_dense_same_runtime": same_runtime_dense / deployable[fastest],
                "speedup_vs_dense_pytorch_eager": times[f"{model}_dense|PyTorch eager"] / deployable[fastest],
                "dense_ms": {"PyTorch eager": times[f"{model}_dense|PyTorch eager"],
                             "ONNX Runtime": times[f"{model}_dense|ONNX Runtime"]},
            }
        reduction = dense_macs / nonzero_macs(nets.get(f"{name}|PyTorch eager, dense kernels",
                                                        nets[f"{name}|PyTorch eager"]))
        figures["mac_reduction"] = reduction
        figures["clock_share_b64"] = figures["b64"]["speedup_vs_dense_same_runtime"] / reduction
        figures["onnx_over_artifact_bytes"] = (result["runs"][0]["size/onnx_bytes"]
                                               / result["runs"][0]["size/artifact_bytes"])
        alone = json.loads(subprocess.run([sys.executable, "-c", STANDALONE, str(run_dir[name] / "model.onnx")],
                                          capture_output=True, text=True, check=True).stdout)
        figures["onnx_standalone_ms"] = alone
        figures["report_onnx_over_standalone"] = {
            b: result["runs"][0][f"latency/onnx_ms_{b}"] / alone[b] for b in ("b1", "b64")}
        figures["layout"] = {"artifact": layout_of(nets[f"{name}|PyTorch eager"]),
                             "dense": layout_of(nets[f"{model}_dense|PyTorch eager"])}
        figures["shape_only"] = name in SHAPE_ONLY
        result["figures"] = figures
        bars = {}
        if name in BARS:
            bars["speedup_b64"] = figures["b64"]["speedup_vs_dense_same_runtime"], BARS[name]
        if name in EAGER_BARS:
            bars["speedup_b64_vs_dense_eager"] = figures["b64"]["speedup_vs_dense_pytorch_eager"], EAGER_BARS[name]
        if name.startswith("lenet300") and name in BARS:
            bars["b1_not_slower"] = figures["b1"]["speedup_vs_dense_same_runtime"], 1.0
        if bars:
            result["bars"] = {k: {"bar": bar, "measured": v, "met": v >= bar} for k, (v, bar) in bars.items()}
    write(RESULTS / "runtime.json", {**{k: v for k, v in payload.items() if k not in ("commit", "date")},
                                      "cpu": cpu_name(), "torch": torch.__version__, "rounds": rounds,
                                      "results": results})


def main() -> None:
    args = bench_arguments(__doc__, CONFIGS, list(CONFIGS), RESULTS / "runtime.json")
    if args.speed:
        speed(args.rounds)
        return
    results = run_recipes("rt", CONFIGS, args.configs, args.seeds, args.jobs,
                          REPORT_KEYS, args.out)
    write(args.out, {"benchmark": "pruned LeNet-300-100s on MNIST (20 epochs) in PyTorch eager with the sparse "
                                  "kernels their export chose and in ONNX Runtime, against the dense fp32 network "
                                  "trained in the same bench; 1 thread, medians of interleaved rounds in one process",
                     "seeds": args.seeds, "results": results})
    speed(args.rounds)


if __name__ == "__main__":
    main()
