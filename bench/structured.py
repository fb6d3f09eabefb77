"""Structured pruning recipes against the dense recipes of the same models, trained in the same bench.

    LM_DATA_DIR=../shared/data python bench/structured.py [--configs ...] [--seeds 42] [--jobs 2]
    python bench/structured.py --speed [--rounds 9]      # after the runs: batch-64 latencies re-measured together

Trains each recipe through the real command line (one thread per job; each structured recipe runs as many epochs
as its model's dense recipe) and writes bench/results/structured.json: per recipe the report's measured fields
(test accuracy, parameters, MACs per image counted by running the dense and the reloaded network, latency of the
reloaded artifact against the dense fp32 network measured side by side in the run's process, kept channels per
group) and the figures the issue sets bars on: MACs removed (%), accuracy against the dense recipe of the same
model and seed (points), speed-up at batch 64.

--speed loads every run's artifact again (``load_compressed``) and measures each model's dense and structured
networks in one process, interleaved rounds of ``torch.utils.benchmark`` medians, batch 64 and 1, one thread:
bench/results/structured_speed.json.
"""

from __future__ import annotations

import json

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
    "resnet20_dense": ["experiment=baseline_resnet20_mnist"],
    "resnet20_structured": ["experiment=structured_resnet20"],
    "mobilenet_dense": ["experiment=baseline_mobilenet_mnist"],
    "mobilenet_structured": ["experiment=structured_mobilenet"],
    "lenet5_dense": ["experiment=baseline_lenet5_mnist"],
    "lenet5_structured": ["experiment=structured_lenet5"],
    # the same schedule with kept channels rounded to multiples of 8 (8-16-176): fewer channels removed
    "lenet5_structured_r8": ["experiment=structured_lenet5", "compression.structured.channel_ratio=0.65",
                             "compression.structured.round_to=8"],
    "lenet5_structured_int8": ["experiment=structured_int8_lenet5"],
}
# The bars: figure -> threshold (every figure is "at least").
BARS = {
    "lenet5_structured": {"macs_removed_pct": 75.0, "delta_vs_dense_pp": -0.1, "speedup_b64": 3.0},
    "lenet5_structured_int8": {"speedup_b64": 8.0, "delta_vs_dense_pp": -0.2},
    "resnet20_structured": {"macs_removed_pct": 75.0, "delta_vs_dense_pp": -0.2, "speedup_b64": 2.5},
    "mobilenet_structured": {"macs_removed_pct": 50.0, "delta_vs_dense_pp": -0.3},
}
REPORT_KEYS = ("test/acc", "params/total", "params/dense_total", "size/artifact_bytes", "size/dense_bytes",
               "size/ratio", "macs/dense", "macs/effective", "latency/ms_b1", "latency/ms_b64",
               "latency/dense_ms_b1", "latency/dense_ms_b64", "latency/speedup_b1", "latency/speedup_b64",
               "structured/kept_fraction", "quant/weight_bits", "quant/activation_bits")


def speed(rounds: int) -> None:
    import torch

    from lightning_micro.artifact.format import load_compressed

    results = json.loads((RESULTS / "structured.json").read_text())["results"]
    measured = speed_against_dense(results, ("lenet5", "resnet20", "mobilenet"), rounds)
    # Where the time goes in the thin LeNet-5, fp32 (rounded to multiples of 8) against its int8 twin: each layer
    # timed alone on the input it gets in the forward pass, batch 64.
    x = torch.randn(64, 1, 28, 28)
    per_layer = {}
    for name in ("lenet5_structured_r8", "lenet5_structured_int8"):
        if name in results:
            net = load_compressed(ROOT / results[name]["runs"][0]["run_dir"] / "model.safetensors")
            per_layer[name] = layer_times(net, x)
    write(RESULTS / "structured_speed.json", {
        "benchmark": "forward of each run's reloaded artifact, CPU, 1 thread, no gradients, median of interleaved "
                     "rounds of torch.utils.benchmark medians", "cpu": cpu_name(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rounds": rounds, "results": measured,
        "lenet5_per_layer_ms_b64": per_layer})


def layer_times(net, x) -> dict[str, float]:
    """Median time (ms, one thread) of each leaf module of ``net`` run alone on the input it got in a forward pass
    of ``x`` (a module called twice, like a shared pooling layer, is timed for each call)."""
    import torch
    from torch.utils import benchmark

    calls = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, m, args[0])))
             for name, module in net.named_modules() if name and not list(module.children())]
    with torch.no_grad():
        net.eval()(x)
    for hook in hooks:
        hook.remove()
    times, seen = {}, {}
    for name, module, value in calls:
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}#{seen[name]}"
        timer = benchmark.Timer(stmt="with torch.no_grad(): m(v)", globals={"m": module, "v": value, "torch": torch},
                                num_threads=1)
        times[key] = timer.blocked_autorange(min_run_time=0.3).median * 1e3
    return times


def figures_of(name: str, results: dict) -> dict:
    result = results[name]
    first = result["runs"][0]
    figures = {"test_acc": result["test_acc_mean"], "speedup_b64": first.get("latency/speedup_b64"),
               "macs_removed_pct": 100 * (1 - first["macs/effective"] / first["macs/dense"])}
    dense = results.get(name.split("_")[0] + "_dense")
    if dense and dense is not result:
        figures["delta_vs_dense_pp"] = delta_vs_dense_pp(result, dense)
    return figures


def main() -> None:
    args = bench_arguments(__doc__, CONFIGS, list(CONFIGS), RESULTS / "structured.json")
    if args.speed:
        speed(args.rounds)
        return
    results = run_recipes("struct", CONFIGS, args.configs, args.seeds, args.jobs, REPORT_KEYS, args.out)
    add_figures(results, figures_of, BARS)
    write(args.out, {"benchmark": "structured pruning vs the dense recipe of the same model, MNIST, 1 thread",
                     "results": results})


if __name__ == "__main__":
    main()
