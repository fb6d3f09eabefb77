"""Every landed recipe in the runtime that runs it fastest, against its dense network trained in the same bench
(issue 25: sparse kernels, the fastest runtime named, the share of the MAC reduction that reaches the clock, the
report's ONNX Runtime timing checked).

    LM_DATA_DIR=../shared/data python bench/runtime.py [--configs ...] [--seeds 42] [--jobs 1]
    python bench/runtime.py --speed [--rounds 9] [--families lenet300]   # after the runs: re-timed together

The four LeNet-300-100 rows that carry accuracy bars (dense, GMP at 95% and 98%, Deep Compression) train their full
20 epochs; every other recipe runs one epoch (the larger networks 100 batches of it), because its speed and MACs
depend on the structure it leaves, not on how well it trained (the schedules are fractions of the run); their
accuracies are the other benches'.

Trains each recipe through the real command line (one thread; `--jobs 1` by default, because each run's export
times its layers' kernels and a second job on a 2-core machine would time them under load) with the defaults
`report.sparse_kernels=auto` and `report.onnx=true`, then, in this process, loads every run's artifact (its pruned
layers on the kernels its export chose) and its `model.onnx` and times, interleaved, at batch 64 and 1, one
thread:

- each compressed network in PyTorch eager and in ONNX Runtime, and the dense fp32 network in both;
- the fastest form per batch size, its speed-up against dense fp32 in the same runtime and against dense fp32
  PyTorch eager, and that speed-up over the recipe's MAC reduction (dense MACs over the MACs left when every zero
  weight of a convolution or Linear is skipped, whether or not a kernel skips it; the share of the arithmetic
  saving that reaches the clock);
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

# The other landed recipes, for the share of their MAC reduction that reaches the clock: like the LeNet-5 rows,
# their speed and MACs depend on the structure the recipe leaves, not on how well it trained, so they run one
# epoch (the schedules are fractions of the run), the larger networks on 100 training batches of it
SHORT = ["trainer.max_epochs=1"]
SHORTER = [*SHORT, "+trainer.limit_train_batches=100", "+trainer.limit_val_batches=10"]
TV_32 = ["data.pad=2", "data.input_shape=[1,32,32]"]  # torchvision's MobileNetV3-Small wants 32x32
CONFIGS = {
    "lenet300_dense": ["experiment=baseline_lenet300_mnist"],
    "lenet300_gmp95": ["experiment=gmp_lenet300"],
    # 98% of the weights, as bench/gmp.py: fc1 98.5%, fc2 96%, fc3 80%
    "lenet300_gmp98": ["experiment=gmp_lenet300", "compression.gmp.final_sparsity=0.985",
                       "compression.gmp.overrides={fc2.weight:0.96,fc3.weight:0.8}"],
    "lenet300_dc": ["experiment=deep_compression_lenet300"],
    "lenet300_qat4": ["experiment=qat_4bit_lenet300", *SHORT],
    "lenet300_binary": ["experiment=qat_binary_lenet300", *SHORT],
    "lenet300_tt": ["experiment=tt_lenet300", *SHORT],
    "lenet300_tt4": ["experiment=tt_4bit_lenet300", *SHORT],
    # the structured LeNet-5 rows' 20-epoch accuracies are bench/structured.py's (structured.json)
    "lenet5_dense": ["experiment=baseline_lenet5_mnist", *SHORT],
    "lenet5_structured": ["experiment=structured_lenet5", *SHORT],
    "lenet5_structured_int8": ["experiment=structured_int8_lenet5", *SHORT],
    "lenet5_gmp": ["experiment=gmp_lenet5", *SHORT],
    "lenet5_dc": ["experiment=deep_compression_lenet5", *SHORT],
    "lenet5_int8": ["experiment=qat_int8_lenet5", *SHORT],
    "lenet5_lowrank": ["experiment=lowrank_lenet5", *SHORT],
    "lenet5_lowrank_gmp": ["experiment=lowrank_gmp_lenet5", *SHORT],
    "lenet5_lowrank_int8": ["experiment=lowrank_int8_lenet5", *SHORT],
    "mobilenet_dense": ["experiment=baseline_mobilenet_mnist", *SHORTER],
    "mobilenet_structured": ["experiment=structured_mobilenet", *SHORTER],
    "mobilenet_int8": ["experiment=qat_int8_mobilenet", *SHORTER],
    "mobilenetv2_dense": ["experiment=baseline_mobilenetv2_mnist", *SHORTER],
    "mobilenetv2_layerdrop": ["experiment=layerdrop_mobilenetv2", *SHORTER],
    "resnet20_dense": ["experiment=baseline_resnet20_mnist", *SHORTER],
    "resnet20_structured": ["experiment=structured_resnet20", *SHORTER],
    "resnet20_layerdrop": ["experiment=layerdrop_resnet20", *SHORTER],
    "shufflenet_dense": ["experiment=baseline_shufflenet_mnist", *SHORTER],
    "shufflenet_int8": ["experiment=qat_int8_shufflenet", *SHORTER],
    "vittiny_dense": ["experiment=baseline_vit_tiny_mnist", *SHORTER],
    "vittiny_structured": ["experiment=structured_vit_tiny", *SHORTER],
    "vittiny_layerdrop": ["experiment=layerdrop_vit_tiny", *SHORTER],
    "vittiny_int8": ["experiment=qat_int8_vit_tiny", *SHORTER],
    "tvmnv3s_dense": ["experiment=baseline_tv_mobilenet_v3_small_mnist", *TV_32, *SHORTER],
    "tvmnv3s_structured": ["experiment=structured_tv_mobilenet_v3_small", *SHORTER],
}
FULL = {"lenet300_dense", "lenet300_gmp95", "lenet300_gmp98", "lenet300_dc"}  # 20 epochs: their accuracy counts
SHAPE_ONLY = set(CONFIGS) - FULL
REPORT_KEYS = ("test/acc", "size/artifact_bytes", "size/dense_bytes", "size/ratio", "size/onnx_bytes",
               "sparsity/global", "macs/dense", "macs/effective", "kernels/sparse_layers", "kernels/fc1",
               "kernels/fc2", "kernels/fc3", "latency/onnx_ms_b1", "latency/onnx_ms_b64", "runtime/fastest_b64",
               "latency/fastest_speedup_b64")
# issue 25's bars: speed-up of the fastest form against dense fp32 at batch 64 (and never slower at batch 1)
BARS = {"lenet300_gmp95": 2.5, "lenet300_gmp98": 4.0, "lenet300_dc": 2.5, "lenet5_structured": 5.5}
# structured int8 LeNet-5: against dense fp32 PyTorch eager, in its fastest form
EAGER_BARS = {"lenet5_structured_int8": 8.0}
# structured and layer-dropped recipes: at least 0.6 of their MAC reduction reaches the clock at batch 64
SHARE_BARS = {name: 0.6 for name in CONFIGS if "_structured" in name or name.endswith("_layerdrop")}
STANDALONE = """
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape[1:]
out = {}
for batch in (1, 64):
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
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


def nonzero_macs(net, input_shape) -> int:
    """Per-image MACs when every convolution and Linear skips its zero weights (the arithmetic pruning saves, whether
    or not a kernel skips them): what the network counts when run (on dense kernels, so the count starts from the
    dense one) less, for each such layer, its output size times its zero weights per output channel."""
    import torch
    from torch import nn

    from lightning_micro.report.measure import count_macs

    skipped = []

    def hook(module, _inputs, output):
        weight = module.weight
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        skipped.append(output[0].numel() * zeros // weight.shape[0])

    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
              and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.is_floating_point()]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return count_macs(net, input_shape) - sum(skipped)


def family(name: str) -> str:
    """The network a row compresses (``lenet5`` of ``lenet5_structured_int8``); its dense row is ``<family>_dense``."""
    return name.split("_")[0]


def speed(rounds: int, only: list[str] | None = None) -> None:
    """Re-time, together, every network family whose runs are all still on disk (bench/runs is not kept); the rows
    of the other families keep the figures of the commit that timed them (``figures.timed``)."""
    import torch

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.artifact.onnx import OnnxRuntimeNet, artifact_input_shape
    from lightning_micro.core.memory_layout import layout_of
    from lightning_micro.report.measure import count_macs, measure_latency_ms

    payload = json.loads((RESULTS / "runtime.json").read_text())
    every = payload["results"]
    on_disk = {name: (ROOT / r["runs"][0]["run_dir"]).is_dir() for name, r in every.items()}
    families = {family(name) for name in every if only is None or family(name) in only
                if all(there for other, there in on_disk.items() if family(other) == family(name))}
    if not families:
        raise SystemExit("no family of bench/results/runtime.json has all its runs on disk; train them first")
    for r in every.values():  # rows timed before figures said which commit timed them: the file's commit then
        if "figures" in r:
            r["figures"].setdefault("timed", {"commit": payload.get("commit"), "rounds": payload.get("rounds")})
    results = {name: r for name, r in every.items() if family(name) in families}
    run_dir = {name: ROOT / r["runs"][0]["run_dir"] for name, r in results.items()}
    timed = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True).stdout.strip(), "rounds": rounds}
    shapes = {f: artifact_input_shape(run_dir[f"{f}_dense"] / "model.safetensors") for f in families}
    nets: dict[str, dict] = {f: {} for f in families}
    for name, where in run_dir.items():
        forms = nets[family(name)]
        forms[f"{name}|PyTorch eager"] = load_compressed(where / "model.safetensors")
        if (where / "model.onnx").exists():  # a run whose export failed has no ONNX file (its report says why)
            forms[f"{name}|ONNX Runtime"] = OnnxRuntimeNet(where / "model.onnx", threads=1)
        if not name.endswith("_dense"):
            forms[f"{name}|PyTorch eager, dense kernels"] = load_compressed(where / "model.safetensors",
                                                                           sparse_kernels="never")
    ms = {}
    for batch in (64, 1):
        # each round times every family once, each family's forms interleaved (one input shape per family)
        per_round = [{k: v for f in sorted(families)
                      for k, v in measure_latency_ms(nets[f], shapes[f], batch, num_threads=1, min_run_time=0.3,
                                                     rounds=1).items()}
                     for _ in range(rounds)]
        ms[f"b{batch}"] = {n: statistics.median(r[n] for r in per_round) for n in per_round[0]}
    for name, result in results.items():
        model = family(name)
        forms_of = nets[model]
        dense_macs = count_macs(forms_of[f"{model}_dense|PyTorch eager"], shapes[model])
        figures = {}
        for batch, times in ms.items():
            forms = {form.split("|")[1]: t for form, t in times.items() if form.startswith(name + "|")}
            deployable = {f: t for f, t in forms.items()
                          if f in ("PyTorch eager", "ONNX Runtime") and f"{model}_dense|{f}" in times}
            fastest = min(deployable, key=deployable.__getitem__)
            same_runtime_dense = times[f"{model}_dense|{fastest}"]
            figures[batch] = {
                "ms": forms, "fastest": fastest,
                "speedup_vs_dense_same_runtime": same_runtime_dense / deployable[fastest],
                "speedup_vs_dense_pytorch_eager": times[f"{model}_dense|PyTorch eager"] / deployable[fastest],
                "dense_ms": {form: times[f"{model}_dense|{form}"] for form in ("PyTorch eager", "ONNX Runtime")
                             if f"{model}_dense|{form}" in times},
            }
        reduction = dense_macs / nonzero_macs(forms_of.get(f"{name}|PyTorch eager, dense kernels",
                                                           forms_of[f"{name}|PyTorch eager"]), shapes[model])
        figures["mac_reduction"] = reduction
        figures["clock_share_b64"] = figures["b64"]["speedup_vs_dense_same_runtime"] / reduction
        run = result["runs"][0]
        if (run_dir[name] / "model.onnx").exists():
            figures["onnx_over_artifact_bytes"] = run["size/onnx_bytes"] / run["size/artifact_bytes"]
            alone = json.loads(subprocess.run([sys.executable, "-c", STANDALONE, str(run_dir[name] / "model.onnx")],
                                              capture_output=True, text=True, check=True).stdout)
            figures["onnx_standalone_ms"] = alone
            figures["report_onnx_over_standalone"] = {
                b: run[f"latency/onnx_ms_{b}"] / alone[b] for b in ("b1", "b64")}
        figures["layout"] = {"artifact": layout_of(forms_of[f"{name}|PyTorch eager"]),
                             "dense": layout_of(forms_of[f"{model}_dense|PyTorch eager"])}
        figures["shape_only"] = name in SHAPE_ONLY
        figures["timed"] = timed
        result["figures"] = figures
        bars = {}
        if name in BARS:
            bars["speedup_b64"] = figures["b64"]["speedup_vs_dense_same_runtime"], BARS[name]
        if name in EAGER_BARS:
            bars["speedup_b64_vs_dense_eager"] = figures["b64"]["speedup_vs_dense_pytorch_eager"], EAGER_BARS[name]
        if name in SHARE_BARS:
            bars["clock_share_b64"] = figures["clock_share_b64"], SHARE_BARS[name]
        if name.startswith("lenet300") and name in BARS:
            bars["b1_not_slower"] = figures["b1"]["speedup_vs_dense_same_runtime"], 1.0
        if bars:
            result["bars"] = {k: {"bar": bar, "measured": v, "met": v >= bar} for k, (v, bar) in bars.items()}
    write(RESULTS / "runtime.json", {**{k: v for k, v in payload.items() if k not in ("commit", "date")},
                                      "cpu": cpu_name(), "torch": torch.__version__, "results": every})


def main() -> None:
    args = bench_arguments(__doc__, CONFIGS, list(CONFIGS), RESULTS / "runtime.json")
    if args.speed:
        speed(args.rounds, args.families)
        return
    failed = {}
    for name in args.configs:  # one recipe at a time, written as it lands, so a failing recipe costs only itself
        try:
            results = run_recipes("rt", CONFIGS, [name], args.seeds, args.jobs, REPORT_KEYS, args.out)
        except RuntimeError as err:
            failed[name] = str(err)[-2000:]
            print(f"{name} failed; the others go on:\n{failed[name]}", flush=True)
            continue
        write(args.out, {"benchmark": "compressed networks on MNIST in PyTorch eager (pruned Linears on the kernels "
                                      "their export chose) and in ONNX Runtime, against the dense fp32 network "
                                      "trained in the same bench; 1 thread, medians of interleaved rounds in one "
                                      "process", "seeds": args.seeds, "results": results})
    if failed:
        raise SystemExit(f"recipes that failed: {sorted(failed)}; rerun them with --configs")
    speed(args.rounds)


if __name__ == "__main__":
    main()
