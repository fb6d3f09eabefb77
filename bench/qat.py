"""QuantizationAwareTraining against fp32 and against torch.ao used directly (issue: QAT bars).

    LM_DATA_DIR=../shared/data python bench/qat.py accuracy [--configs ...] [--seeds 42] [--jobs 2]
    LM_DATA_DIR=../shared/data python bench/qat.py speed [--rounds 7]
    python bench/qat.py merge FILE[:SUFFIX] ...   # the files of parallel runs into qat_accuracy.json

accuracy: trains each recipe through the real command line (`python train.py experiment=...`) and writes
bench/results/qat_accuracy.json: test accuracy (of the converted network, as `trainer.test` measures it after
fit), artifact bytes against the fp32 artifact of the same architecture, and the report's latencies. Parallel
jobs run with one thread each; accuracy does not depend on timing.

speed: for LeNet-5 and the MobileNet-style CNN, in one process and interleaved, one thread, medians of
`torch.utils.benchmark` rounds at batch 64 (and 1):
- fp32: the trained fp32 network of the baseline recipe, reloaded from its artifact;
- fp32 fused: the same with BatchNorm folded into the convolutions (torch.fx's eval fusion);
- fp32 fused channels-last: that, in channels-last memory format (input converted inside, counted): the
  fastest fp32 form here;
- torch.ao direct: that fp32 network put through torch.ao's own x86 QAT flow (default qconfig mapping,
  `prepare_qat_fx`, 20 calibration batches of MNIST, `convert_fx`), no lightning_micro code involved;
- ours: the QAT recipe's artifact as `load_compressed` rebuilds it in this process.
Writes bench/results/qat_speed.json with the ratios; "ours / direct" is the cost of our wrapping.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import write  # bench/ is on the path when a bench script runs: one JSON writer for all

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs"
CONFIGS = {
    "lenet5_fp32": ["experiment=baseline_lenet5_mnist"],
    "lenet5_int8": ["experiment=qat_int8_lenet5"],
    "mobilenet_fp32": ["experiment=baseline_mobilenet_mnist"],
    "mobilenet_int8": ["experiment=qat_int8_mobilenet"],
    "lenet300_fp32": ["experiment=baseline_lenet300_mnist"],
    "lenet300_4bit": ["experiment=qat_4bit_lenet300"],
    "lenet300_binary": ["experiment=qat_binary_lenet300"],
    "lenet300_deep_compression": ["experiment=deep_compression_lenet300"],
}
REPORT_KEYS = ("test/acc", "size/artifact_bytes", "size/dense_bytes", "size/ratio", "sparsity/global",
               "params/total", "params/nonzero", "macs/effective", "latency/speedup_b1", "latency/speedup_b64")


def run_one(name: str, seed: int, extra: list[str]) -> dict:
    run_dir = RUNS / f"qat_{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    args = [*CONFIGS[name], *extra, f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
    report = json.loads((run_dir / "compression_report.json").read_text())
    print(f"{name} seed {seed}: test/acc {report['test/acc']:.4f} size/ratio {report['size/ratio']:.2f}", flush=True)
    return {"seed": seed, "command": "python train.py " + " ".join(args[:-1]),
            "run_dir": str(run_dir.relative_to(ROOT)), "wall_s": round(time.perf_counter() - started, 1),
            **{k: report.get(k) for k in REPORT_KEYS}}


def accuracy(args: argparse.Namespace) -> None:
    jobs = [(name, seed) for name in args.configs for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(*job, args.extra), jobs))
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
    results = dict(previous)  # keep configurations measured by an earlier call
    for name in args.configs:
        mine = [r for (n, _), r in zip(jobs, runs, strict=True) if n == name]
        results[name] = {"overrides": CONFIGS[name] + args.extra, "runs": mine,
                         "test_acc_mean": statistics.mean(r["test/acc"] for r in mine)}
    write(args.out, summarize(results, args.seeds))


def collect(args: argparse.Namespace) -> None:
    """The entry of a run this script started but did not see finish (its parent was stopped): read from its
    run directory (report, and the command from .hydra/overrides.yaml)."""
    import yaml

    run_dir = Path(args.run_dir).resolve()
    report = json.loads((run_dir / "compression_report.json").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    seed = int(next(o.split("=", 1)[1] for o in overrides if o.startswith("seed=")))
    run = {"seed": seed, "command": "python train.py " + " ".join(overrides),
           "run_dir": str(run_dir.relative_to(ROOT)), "wall_s": None, **{k: report.get(k) for k in REPORT_KEYS}}
    configured = [o for o in overrides if o not in (f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar")
                  and not o.startswith("ckpt_path=")]  # a resume of the recipe's own checkpoint: same recipe
    resumed = [o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")]
    if resumed:
        run["resumed_from"] = str(Path(resumed[0]).resolve().relative_to(ROOT))
    results = {args.name: {"overrides": configured, "runs": [run], "test_acc_mean": run["test/acc"]}}
    write(args.out, summarize(results, [seed]))


def summarize(results: dict, seeds: list[int]) -> dict:
    """Each recipe against the fp32 recipe of its model (same seeds): accuracy difference, error, bytes."""
    for name, result in results.items():
        result["test_error_pct"] = 100 * (1 - result["test_acc_mean"])
        result["bytes_vs_fp32"] = result["runs"][0]["size/artifact_bytes"] / result["runs"][0]["size/dense_bytes"]
        reference = results.get(name.split("_")[0] + "_fp32")
        if reference and reference is not result:
            result["delta_vs_fp32_pp"] = 100 * (result["test_acc_mean"] - reference["test_acc_mean"])
    return {"benchmark": "QAT recipes vs fp32, MNIST, test accuracy of the converted network", "seeds": seeds,
            "results": results}


def merge(args: argparse.Namespace) -> None:
    """Several accuracy files (written by runs in parallel) into one, deltas computed across them."""
    results: dict = {}
    for spec in args.inputs:
        path, _, suffix = str(spec).partition(":")
        for name, result in json.loads(Path(path).read_text())["results"].items():
            results[f"{name}_{suffix}" if suffix else name] = result
    order = [name for name in CONFIGS if name in results] + sorted(set(results) - set(CONFIGS))
    write(args.out, summarize({name: results[name] for name in order}, sorted(
        {run["seed"] for result in results.values() for run in result["runs"]})))


def latest_run(name: str) -> Path:
    runs = sorted(RUNS.glob(f"qat_{name}_seed*"), key=lambda p: p.name.rsplit("_", 1)[-1])
    runs = [r for r in runs if (r / "model.safetensors").exists()]
    if not runs:
        sys.exit(f"no finished run of {name} under {RUNS}: run `python bench/qat.py accuracy --configs {name}` first")
    return runs[-1]


def speed(args: argparse.Namespace) -> None:
    import torch
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx
    from torch.fx.experimental.optimization import fuse

    from lightning_micro.artifact.format import load_compressed
    from lightning_micro.data import MNISTDataModule
    from lightning_micro.report.measure import measure_latency_ms

    class ChannelsLast(torch.nn.Module):
        """A float network run in channels-last memory format, the input converted on the way in (counted)."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.net(x.contiguous(memory_format=torch.channels_last))

    torch.set_num_threads(args.threads)
    datamodule = MNISTDataModule(data_dir=os.environ["LM_DATA_DIR"], batch_size=64)
    datamodule.prepare_data()
    datamodule.setup("fit")
    calibration = [x for _, (x, _) in zip(range(20), datamodule.train_dataloader(), strict=False)]
    results = {}
    for model in ("lenet5", "mobilenet"):
        fp32_dir, int8_dir = latest_run(f"{model}_fp32"), latest_run(f"{model}_int8")
        fp32 = load_compressed(fp32_dir / "model.safetensors").eval()
        fused = fuse(copy.deepcopy(fp32)).eval()
        prepared = prepare_qat_fx(copy.deepcopy(fp32).train(), get_default_qat_qconfig_mapping("x86"),
                                  (calibration[0],))
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        direct = convert_fx(prepared.eval())
        ours = load_compressed(int8_dir / "model.safetensors")
        channels_last = ChannelsLast(copy.deepcopy(fused)).eval()
        nets = {"fp32": fp32, "fp32_fused": fused, "fp32_fused_channels_last": channels_last,
                "torch_ao_direct": direct, "ours": ours}
        entry = {"fp32_run": str(fp32_dir.relative_to(ROOT)), "int8_run": str(int8_dir.relative_to(ROOT))}
        for batch in (64, 1):
            ms = measure_latency_ms(nets, [1, 28, 28], batch, args.threads, min_run_time=0.5, rounds=args.rounds)
            entry[f"ms_b{batch}"] = ms
            entry[f"speedup_vs_fp32_b{batch}"] = ms["fp32"] / ms["ours"]
            entry[f"speedup_vs_fp32_fused_b{batch}"] = ms["fp32_fused"] / ms["ours"]
            entry[f"speedup_vs_fp32_fused_channels_last_b{batch}"] = ms["fp32_fused_channels_last"] / ms["ours"]
            entry[f"direct_speedup_vs_fp32_b{batch}"] = ms["fp32"] / ms["torch_ao_direct"]
            entry[f"ours_over_direct_time_b{batch}"] = ms["ours"] / ms["torch_ao_direct"]
        entry["artifact_bytes"] = (int8_dir / "model.safetensors").stat().st_size
        entry["fp32_artifact_bytes"] = (fp32_dir / "model.safetensors").stat().st_size
        entry["bytes_ratio"] = entry["artifact_bytes"] / entry["fp32_artifact_bytes"]
        print(model, json.dumps(entry, indent=1), flush=True)
        results[model] = entry
    write(RESULTS / "qat_speed.json", {
        "benchmark": "int8 latency vs fp32 and vs torch.ao direct, MNIST nets, CPU, interleaved medians",
        "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__, "results": results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    acc.add_argument("--seeds", nargs="+", type=int, default=[42])
    acc.add_argument("--jobs", type=int, default=2)
    acc.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    acc.add_argument("--out", type=Path, default=RESULTS / "qat_accuracy.json")
    mrg = sub.add_parser("merge")
    mrg.add_argument("inputs", nargs="+", help="files; FILE:SUFFIX renames its runs to <name>_SUFFIX")
    mrg.add_argument("--out", type=Path, default=RESULTS / "qat_accuracy.json")
    col = sub.add_parser("collect")
    col.add_argument("name", choices=list(CONFIGS))
    col.add_argument("run_dir")
    col.add_argument("--out", type=Path, required=True)
    spd = sub.add_parser("speed")
    spd.add_argument("--rounds", type=int, default=7)
    spd.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.command in ("merge", "collect"):
        return merge(args) if args.command == "merge" else collect(args)
    if not os.environ.get("LM_DATA_DIR"):
        sys.exit("set LM_DATA_DIR to the folder holding MNIST/raw (here: LM_DATA_DIR=../shared/data)")
    accuracy(args) if args.command == "accuracy" else speed(args)


if __name__ == "__main__":
    main()
