"""The two int8 backends on the real recipe: `experiment=qat_int8_lenet5` (LeNet-5, MNIST, 20 epochs) with
`compression.qat.backend=x86` (torch.ao FX) and `=pt2e` (torchao PT2E), same seed.

    LM_DATA_DIR=../shared/data python bench/qat_backend.py accuracy [--seeds 42]   # both recipes, then summary
    python bench/qat_backend.py summary [--rounds 7]    # from the latest run of each: accuracy, bytes, latency

summary writes bench/results/qat_backend.json: test accuracy of each converted network (as trainer.test
measured it after fit) and the difference, artifact bytes (the files, and the same networks saved again by this
commit), and latency at batch 1 and 64, one
thread, interleaved `torch.utils.benchmark` medians in this process of:
- fp32: LeNet-5 in float (same architecture; dense fp32 time does not depend on the values);
- torch_ao_fx: the x86 run's artifact as `load_compressed` rebuilds it (fbgemm/x86 int8 kernels, eager);
- pt2e_eager: the pt2e run's artifact as `load_compressed` rebuilds it (reference quantize/dequantize graph);
- pt2e_compiled: that network through `int8_pt2e.compile_for_cpu` (inductor, oneDNN int8 kernels; compiled
  once per batch size before timing, the compile time reported apart).
The default backend rule (issue): pt2e becomes the default if its accuracy is within 0.1 points of x86 and
its latency at batch 64, as the artifact runs, within 10% of FX's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import RESULTS, ROOT, RUNS, run_recipe, write

BACKENDS = ("x86", "pt2e")
RECIPE = ["experiment=qat_int8_lenet5"]
REPORT_KEYS = ("test/acc", "size/artifact_bytes", "size/dense_bytes", "quant/kernels", "latency/speedup_b64")


def latest_run(backend: str):
    runs = [r for r in sorted(RUNS.glob(f"qat_backend_{backend}_seed*"), key=lambda p: p.stat().st_mtime)
            if (r / "model.safetensors").exists()]
    if not runs:
        sys.exit(f"no finished run of backend {backend} under {RUNS}: run `python bench/qat_backend.py accuracy`")
    return runs[-1]


def resaved_bytes(net, artifact) -> int:
    """Bytes of the reloaded network saved again by this commit's export (its codecs may store the same tensors
    smaller than the code that ran the recipe did)."""
    import tempfile

    from lightning_micro.artifact.format import read_metadata, save_compressed
    from lightning_micro.core import int8_backend

    meta = read_metadata(artifact)
    with tempfile.TemporaryDirectory() as folder:
        return save_compressed(net, meta["net"], f"{folder}/model.safetensors", int8_backend.export_codecs(net),
                               meta["transforms"], meta["submodule"])


def accuracy(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    if not os.environ.get("LM_DATA_DIR"):
        sys.exit("set LM_DATA_DIR to the folder holding MNIST/raw (here: LM_DATA_DIR=../shared/data)")
    jobs = [(backend, seed) for backend in BACKENDS for seed in args.seeds]  # one thread each
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: run_recipe(f"qat_backend_{job[0]}", [*RECIPE, f"compression.qat.backend={job[0]}"],
                                             job[1], REPORT_KEYS), jobs))
    summary(args)


def summary(args: argparse.Namespace) -> None:
    import torch

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.core import int8_pt2e
    from lightning_micro.models import LeNet5
    from lightning_micro.report.measure import measure_latency_ms

    torch.set_num_threads(1)
    runs = {backend: latest_run(backend) for backend in BACKENDS}
    reports = {b: json.loads((d / "compression_report.json").read_text()) for b, d in runs.items()}
    fx = load_compressed(runs["x86"] / "model.safetensors")
    pt2e = load_compressed(runs["pt2e"] / "model.safetensors")
    compiled = int8_pt2e.compile_for_cpu(pt2e)
    compile_s = {}
    for batch in (1, 64):  # compiled once per batch size (dynamic=False), outside the timing
        started = time.perf_counter()
        compiled(torch.randn(batch, 1, 28, 28))
        compile_s[f"b{batch}"] = round(time.perf_counter() - started, 1)
    nets = {"fp32": LeNet5([1, 28, 28]).eval(), "torch_ao_fx": fx, "pt2e_eager": pt2e, "pt2e_compiled": compiled}
    latency = {}
    for batch in (1, 64):
        ms = measure_latency_ms(nets, [1, 28, 28], batch, num_threads=1, min_run_time=0.3, rounds=args.rounds)
        latency[f"b{batch}"] = {"ms": ms, "speedup_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
                                "pt2e_compiled_over_fx_time": ms["pt2e_compiled"] / ms["torch_ao_fx"],
                                "pt2e_eager_over_fx_time": ms["pt2e_eager"] / ms["torch_ao_fx"]}
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
    acc = {b: reports[b]["test/acc"] for b in BACKENDS}
    results = {b: {"run_dir": str(runs[b].relative_to(ROOT)), "test_acc": acc[b],
                   "artifact_bytes": (runs[b] / "model.safetensors").stat().st_size,
                   "artifact_bytes_this_commit": resaved_bytes(net, runs[b] / "model.safetensors"),
                   "kernels": reports[b].get("quant/kernels")} for b, net in (("x86", fx), ("pt2e", pt2e))}
    delta_pp = 100 * (acc["pt2e"] - acc["x86"])
    b64 = latency["b64"]
    result = {
        "benchmark": "int8 backends on experiment=qat_int8_lenet5 (MNIST, 20 epochs): torch.ao FX x86 vs torchao "
                     "PT2E; latency 1 thread, interleaved medians",
        "command": "python train.py experiment=qat_int8_lenet5 compression.qat.backend=<x86|pt2e> seed=42",
        "torch": torch.__version__, "rounds": args.rounds, "results": results, "pt2e_minus_x86_acc_pp": delta_pp,
        "latency": latency, "pt2e_compile_s": compile_s,
        "bars": {"accuracy_within_0.1pp": abs(delta_pp) <= 0.1,
                 "pt2e_eager_within_10pct_of_fx_b64": b64["pt2e_eager_over_fx_time"] <= 1.1,
                 "pt2e_compiled_within_10pct_of_fx_b64": b64["pt2e_compiled_over_fx_time"] <= 1.1},
        "seeds": sorted({int(str(d).rsplit("seed", 1)[1].split("_")[0]) for d in runs.values()}),
    }
    write(RESULTS / "qat_backend.json", result)
    print(json.dumps({k: result[k] for k in ("results", "pt2e_minus_x86_acc_pp", "bars")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--seeds", nargs="+", type=int, default=[42])
    for p in (acc, sub.add_parser("summary")):
        p.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    accuracy(args) if args.command == "accuracy" else summary(args)


if __name__ == "__main__":
    main()
