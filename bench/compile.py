"""Does torch.compile help on this CPU? The runtime bench's networks compiled with inductor, timed beside PyTorch
eager and ONNX Runtime (issue 25: "and where it helps torch.compile on CPU").

    python bench/compile.py [--rows lenet300_dense lenet5_structured ...] [--rounds 7]

Run after `bench/runtime.py` (it reads that bench's runs from bench/results/runtime.json). For each row, one process
loads the artifact (pruned layers on the kernels its export chose, its recorded memory layout), compiles it with
`torch.compile(net, dynamic=False)` (inductor's C++ backend, one compile per batch size, compile time recorded), and
times eager, compiled and the run's `model.onnx` in ONNX Runtime interleaved, 9 rounds of `torch.utils.benchmark`
medians by default, one thread, at batch 64 and 1. A network that does not compile is recorded with the error.

Writes bench/results/compile.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import RESULTS, ROOT, cpu_name, write

ROWS = ["lenet300_dense", "lenet300_gmp95", "lenet5_dense", "lenet5_structured", "lenet5_structured_int8",
        "resnet20_dense", "resnet20_structured", "mobilenet_dense", "mobilenet_structured"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    import torch

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.artifact.onnx import OnnxRuntimeNet, artifact_input_shape
    from lightning_micro.report.measure import measure_latency_ms

    torch.set_num_threads(1)
    runs = json.loads((RESULTS / "runtime.json").read_text())["results"]
    results = {}
    for row in args.rows:
        where = ROOT / runs[row]["runs"][0]["run_dir"]
        shape = artifact_input_shape(where / "model.safetensors")
        eager = load_compressed(where / "model.safetensors").eval()
        entry: dict = {"run_dir": runs[row]["runs"][0]["run_dir"], "input_shape": shape}
        for batch in (64, 1):
            nets = {"PyTorch eager": eager}
            if (where / "model.onnx").exists():
                nets["ONNX Runtime"] = OnnxRuntimeNet(where / "model.onnx", threads=1)
            try:
                compiled = torch.compile(load_compressed(where / "model.safetensors").eval(), dynamic=False)
                started = time.perf_counter()
                with torch.no_grad():
                    compiled(torch.randn(batch, *shape))
                entry[f"compile_s_b{batch}"] = round(time.perf_counter() - started, 1)
                nets["torch.compile"] = compiled
            except Exception as err:  # noqa: BLE001 - any compile failure is the finding
                entry[f"compile_error_b{batch}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            per_round = [measure_latency_ms(nets, shape, batch, num_threads=1, min_run_time=0.3, rounds=1)
                         for _ in range(args.rounds)]
            ms = {n: statistics.median(r[n] for r in per_round) for n in nets}
            entry[f"b{batch}"] = {"ms": ms, "compiled_over_eager": (ms["PyTorch eager"] / ms["torch.compile"]
                                                                    if "torch.compile" in ms else None),
                                  "fastest": min(ms, key=ms.__getitem__)}
        results[row] = entry
        print(row, {b: entry[b] for b in ("b64", "b1")}, flush=True)
    write(RESULTS / "compile.json", {
        "benchmark": "bench/runtime.py's networks under torch.compile (inductor, CPU, dynamic=False) beside PyTorch "
                     "eager and ONNX Runtime; 1 thread, medians of interleaved rounds in one process",
        "cpu": cpu_name(), "torch": torch.__version__, "rounds": args.rounds, "results": results})


if __name__ == "__main__":
    main()
