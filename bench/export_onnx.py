"""Every recipe's artifact as ONNX, run by ONNX Runtime: outputs against the artifact's, and latency beside it.

    LM_DATA_DIR=../shared/data python bench/export_onnx.py [--recipes ...] [--jobs 2]   # runs, then measures
    python bench/export_onnx.py --measure-only [--rounds 5]                            # re-measure the runs recorded

For each recipe in conf/experiment (and ``qat_int8_lenet5`` once more with ``compression.qat.backend=pt2e``):

1. one short run of the recipe through the real command line (``trainer.max_epochs=1``, and only part of that
   epoch for the three larger networks, int8 MobileNet excepted, see ``TRAIN_BATCHES``): every transform of the
   recipe happens, on a schedule given as fractions of the run, so the artifact has the recipe's structure and
   storage, not its accuracy;
2. ``lightning_micro.artifact.onnx.export_onnx`` of its artifact, as ``lightning-micro-export <run>`` writes it;
3. in this process, one thread: the artifact (reloaded with ``load_compressed``) and the ONNX model in ONNX Runtime
   on all 10,000 MNIST test images (max abs difference of the logits, argmax agreement), then their latency at
   batch 1 and 64, measured in alternation (median over ``--rounds`` rounds of torch.utils.benchmark medians), and
   the integer kernels in ONNX Runtime's optimized graph.

Writes bench/results/onnx.json; ``python bench/table.py --readme`` renders it into docs/results.md's table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import RESULTS, ROOT, cpu_name, run_recipe, write

OUT = RESULTS / "onnx.json"
RECIPES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
EXTRA = {"qat_int8_lenet5_pt2e": ["experiment=qat_int8_lenet5", "compression.qat.backend=pt2e"],
         # shortened to one epoch, the recipe freezes BatchNorm and the observers 54 steps after QAT starts and the
         # loss jumps from 0.04 to 15: a network that predicts one class, whose 100% agreement says nothing. Without
         # the freezes it learns, and its int8 outputs can be compared.
         "qat_int8_mobilenet_no_freeze": ["experiment=qat_int8_mobilenet", "compression.qat.freeze_bn=null",
                                          "compression.qat.freeze_observers=null"]}
# Fractions of an MNIST epoch for the networks whose full epoch takes minutes at one thread.
TRAIN_BATCHES = {"resnet20": 0.1, "mobilenet": 0.1, "mobilenetv2": 0.05}
# int8 recipes train a whole epoch: an int8 network that has not learned predicts one class for every image, and
# agreeing with it says nothing about how the integer kernels round.
WHOLE_EPOCH = {"qat_int8_mobilenet", "qat_int8_mobilenet_no_freeze"}
QUICK = ["trainer.max_epochs=1", "+trainer.limit_val_batches=0.2", "report.latency_batch_sizes=[1]",
         "report.latency_min_run_time=0.02"]
BATCHES = (1, 64)


def overrides(name: str) -> list[str]:
    base = EXTRA.get(name, [f"experiment={name}"])
    recipe = base[0].split("=", 1)[1]
    model = next((m for m in sorted(TRAIN_BATCHES, key=len, reverse=True) if f"_{m}" in recipe), None)
    model = None if recipe in WHOLE_EPOCH or name in WHOLE_EPOCH else model
    limit = [f"+trainer.limit_train_batches={TRAIN_BATCHES[model]}"] if model else []
    return [*base, *QUICK, *limit]


def measure(run_dir: Path, rounds: int) -> dict:
    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.artifact.onnx import OnnxRuntimeNet, compare_outputs, export_onnx, integer_kernels
    from lightning_micro.data import MNISTDataModule
    from lightning_micro.report.measure import measure_latency_ms

    artifact = run_dir / "model.safetensors"
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.exists():
        started = time.perf_counter()
        export_onnx(run_dir)
        export_s = time.perf_counter() - started
    else:
        export_s = None
    net = load_compressed(artifact)
    onnx_net = OnnxRuntimeNet(onnx_path, threads=1)
    data = MNISTDataModule(data_dir=str(_data_dir()), mean=[0.1307], std=[0.3081], batch_size=500, download=False)
    data.setup("test")
    parity = compare_outputs(net, onnx_net, (x for x, _ in data.test_dataloader()))
    row = {"artifact_bytes": artifact.stat().st_size, "onnx_bytes": onnx_path.stat().st_size,
           "export_s": export_s, "max_abs_diff": parity["max_abs_diff"],
           "argmax_agreement": parity["argmax_agreement"], "test_images": parity["count"],
           "integer_kernels": integer_kernels(onnx_path), "network": type(net).__name__}
    for batch in BATCHES:
        times = measure_latency_ms({"torch": net, "onnx": onnx_net}, [1, 28, 28], batch, num_threads=1,
                                   min_run_time=0.2, rounds=rounds)
        row[f"torch_ms_b{batch}"] = times["torch"]
        row[f"onnx_ms_b{batch}"] = times["onnx"]
        row[f"onnx_speedup_b{batch}"] = times["torch"] / times["onnx"]
    return row


def _data_dir() -> Path:
    return Path(os.environ.get("LM_DATA_DIR", ROOT / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [*RECIPES, *EXTRA]
    parser.add_argument("--recipes", nargs="+", default=names, choices=names)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--measure-only", action="store_true", help="re-measure the runs bench/results/onnx.json names")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = json.loads(OUT.read_text())["results"] if OUT.exists() else {}
    if not args.measure_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda n: run_recipe(f"onnx_{n}", overrides(n), 42, ("test/acc",)), args.recipes))
        for name, run in zip(args.recipes, runs, strict=True):
            results[name] = {"command": run["command"], "run_dir": run["run_dir"], "test_acc": run["test/acc"]}
    for name in args.recipes:
        results[name].update(measure(ROOT / results[name]["run_dir"], args.rounds))
        row = results[name]
        print(f"{name}: argmax {row['argmax_agreement']:.4%}, max diff {row['max_abs_diff']:.2g}, ORT/torch speed "
              f"b1 {row['onnx_speedup_b1']:.2f}x b64 {row['onnx_speedup_b64']:.2f}x", flush=True)
    int8 = results.get("qat_int8_lenet5")
    figures = {
        "float_recipes_all_100pct": all(r["argmax_agreement"] == 1.0 for r in results.values()
                                        if not r["integer_kernels"]),
        "int8_recipes_min_agreement": min((r["argmax_agreement"] for r in results.values() if r["integer_kernels"]),
                                          default=None),
        "int8_lenet5_ort_vs_torch_ao_b64": int8["onnx_speedup_b64"] if int8 else None,
    }
    bars = {"float_recipes_all_100pct": True, "int8_recipes_min_agreement": 0.999,
            "int8_lenet5_ort_vs_torch_ao_b64": 1.0}
    met = {k: (figures[k] is not None and (figures[k] is True if isinstance(bars[k], bool) else figures[k] >= bars[k]))
           for k in bars}
    write(OUT, {"bench": "onnx", "cpu": cpu_name(), "threads": 1, "torch": torch.__version__,
                "onnxruntime": __import__("onnxruntime").__version__, "test_set": "MNIST test, 10,000 images",
                "figures": figures, "bars": bars, "met": met, "results": dict(sorted(results.items()))})


if __name__ == "__main__":
    main()
