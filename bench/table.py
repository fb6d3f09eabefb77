"""The results rows from bench/results/*.json: ``python bench/table.py`` prints them all;
``python bench/table.py --readme`` rewrites, in place, README's table against the papers and the tables of
docs/results.md that lie between markers (tests/test_readme.py checks that both files match what this renders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
RESULTS_PAGE = ROOT / "docs" / "results.md"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def baseline_rows(payload: dict) -> list[str]:
    rows = []
    for recipe, result in payload["results"].items():
        run = result["runs"][0]
        acc = ", ".join(f"{r['test/acc']:.2%}" for r in result["runs"])
        rows.append(
            f"| `{recipe}` | {acc} | {run['params/total']:,} | {run['macs/dense']:,} | "
            f"{run['size/artifact_bytes']:,} | {run['latency/ms_b1']:.3f} / {run['latency/ms_b64']:.3f} |"
        )
    return rows


def gmp_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        runs = result["runs"]
        per_seed = " ".join(f"{r['test/acc']:.2%}" for r in runs)
        delta = result.get("delta_vs_dense_pp_mean")
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | "
            f"{runs[0]['sparsity/global']:.1%} | {result['test_acc_mean']:.2%} ({per_seed}) | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {runs[0]['size/ratio']:.1f}x |"
        )
    return rows


def overhead_rows(payload: dict) -> list[str]:
    return [
        f"| {name} | {r['ratio_median']:.3f}x | {r['ratio_q1']:.3f} - {r['ratio_q3']:.3f} | "
        f"{r['ratio_min']:.3f} - {r['ratio_max']:.3f} | {payload['reps']} |"
        for name, r in payload["results"].items()
    ]


def cost_rows(payload: dict) -> list[str]:
    rows = []
    for network, result in payload["results"].items():
        for technique, r in result["techniques"].items():
            if "refused" in r:
                rows.append(f"| {network} | {result['params'] / 1e6:.2f}M | {technique} | refused: "
                            f"{r['refused'].split(' (')[0]} | - | - |")
                continue
            spread = r.get("step_ratio_range")  # over the rounds, where the bench ran more than one
            spread = f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
            rows.append(f"| {network} | {result['params'] / 1e6:.2f}M | {technique} | {r['step_ratio']:.3f}x{spread} | "
                        f"{r['step_s'] * 1000:.1f} (dense {result['dense']['step_s'] * 1000:.1f}) | "
                        f"{r['one_time_s']:.1f} |")
    return rows


def qat_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        run = result["runs"][0]
        delta = result.get("delta_vs_fp32_pp")
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {100 * (1 - result['test_acc_mean']):.2f}% | "
            f"{run['size/artifact_bytes']:,} | {run['size/artifact_bytes'] / run['size/dense_bytes']:.3f} "
            f"({run['size/ratio']:.1f}x) | {run['latency/speedup_b64']:.2f}x |"
        )
    return rows


def qat_speed_rows(payload: dict) -> list[str]:
    rows = []
    for model, r in payload["results"].items():
        ms = r["ms_b64"]
        rows.append(
            f"| {model} | {ms['fp32']:.2f} | {ms['fp32_fused_channels_last']:.2f} | {ms['torch_ao_direct']:.2f} | "
            f"{ms['ours']:.2f} | {r['speedup_vs_fp32_b64']:.2f}x | {r['direct_speedup_vs_fp32_b64']:.2f}x | "
            f"{r['ours_over_direct_time_b64']:.3f} | {r['speedup_vs_fp32_fused_channels_last_b64']:.2f}x | "
            f"{r['bytes_ratio']:.3f} |"
        )
    return rows


def decomposition_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        run = result["runs"][0]
        delta = result.get("delta_vs_dense_pp")
        if "tt/fc1/ranks" in run:
            layer = (f"fc1 TT {run['tt/fc1/out_factors']} by {run['tt/fc1/in_factors']}, ranks {run['tt/fc1/ranks']}: "
                     f"{run['tt/fc1/params']:,} vs {run['tt/fc1/dense_params']:,} ({run['tt/fc1/ratio']:.1f}x)")
        elif "lowrank/conv2/method" in run:
            layer = (f"conv2 {run['lowrank/conv2/method']} rank {run['lowrank/conv2/rank']}: "
                     f"{run['lowrank/conv2/params']:,} vs {run['lowrank/conv2/dense_params']:,} "
                     f"({run['lowrank/conv2/ratio']:.1f}x)")
        else:
            layer = "dense"
        conv = (f"{run['macs/effective_conv']:,} ({run['macs/dense_conv'] / run['macs/effective_conv']:.2f}x fewer)"
                if run.get("macs/effective_conv") else "-")
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {layer} | {run['params/total']:,} | {conv} | "
            f"{run['size/ratio']:.2f}x | {run['latency/speedup_b1']:.2f}x / {run['latency/speedup_b64']:.2f}x |"
        )
    return rows


def decomposition_speed_rows(payload: dict) -> list[str]:
    rows = []
    for case, r in payload["results"].items():
        for batch in ("b64", "b1"):
            ms = r[batch]["ms"]
            tltorch = " / ".join(f"{ms[k]:.3f}" for k in ("tensorly_torch_blocktt_factorized",
                                                           "tensorly_torch_blocktt_reconstructed") if k in ms) or "-"
            runs = "rebuilt matrix" if r[batch]["tt_runs"].startswith("rebuilt") else r[batch]["tt_runs"]
            rows.append(
                f"| {case} | {batch[1:]} | {r['tt_params']:,} vs {r['dense_params']:,} | {ms['dense']:.3f} | "
                f"{ms['tt']:.3f} ({runs}) | {ms['tt_contract']:.3f} | "
                f"{ms['tt_rebuild_each_call']:.3f} | "
                f"{tltorch} | {r[batch]['speedup_vs_dense']['tt']:.2f}x | "
                f"{r[batch]['macs']['dense'] / r[batch]['macs']['tt']:.2f}x |"
            )
    return rows


def bars_text(result: dict) -> str:
    return "; ".join(f"{key} {b['measured']:.4g} vs {b['bar']:g}: {'met' if b['met'] else 'NOT met'}"
                     for key, b in result.get("bars", {}).items()) or "-"


def composition_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        run, figures = result["runs"][0], result["figures"]
        delta = figures.get("delta_vs_dense_pp")
        conv = figures.get("conv_macs_fewer_x")
        bars = bars_text(result)
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | "
            f"{run['size/artifact_bytes']:,} ({run['size/ratio']:.1f}x) | "
            f"{'-' if conv is None else f'{conv:.2f}x'} | {run['latency/speedup_b64']:.2f}x | {bars} |"
        )
    return rows


def structured_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        run, figures = result["runs"][0], result["figures"]
        delta = figures.get("delta_vs_dense_pp")
        bars = bars_text(result)
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {run['params/total']:,} | {run['macs/effective']:,} "
            f"({figures['macs_removed_pct']:.1f}% removed) | {run['latency/speedup_b64']:.2f}x | {bars} |"
        )
    return rows


def structured_speed_rows(payload: dict) -> list[str]:
    rows = []
    for batches in payload["results"].values():
        for name in batches["b64"]["ms"]:
            b64, b1 = batches["b64"], batches["b1"]
            rows.append(f"| {name} | {b64['ms'][name]:.3f} ({b64['speedup_vs_dense'][name]:.2f}x) | "
                        f"{b1['ms'][name]:.3f} ({b1['speedup_vs_dense'][name]:.2f}x) |")
    return rows


def architecture_rows(payload: dict) -> list[str]:
    rows = []
    for name, result in payload["results"].items():
        run, figures = result["runs"][0], result["figures"]
        delta = figures.get("delta_vs_dense_pp")
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {run['params/total']:,} | {run['macs/effective']:,} "
            f"({figures['macs_removed_pct']:.1f}% removed) | {run['size/artifact_bytes']:,} ({run['size/ratio']:.1f}x) "
            f"| {run['latency/speedup_b64']:.2f}x | {bars_text(result)} |"
        )
    return rows


def _timed_in(payload: dict, model: str, name: str) -> str:
    """When a --speed call timed ``name`` beside its dense network: a later call re-measures only the runs whose
    artifacts are still on disk."""
    return payload["results"].get(model, {}).get("measured", {}).get(name.split(" (")[0], "the first call")


def architecture_speed_rows(payload: dict) -> list[str]:
    rows = []
    for model, batches in payload["results"].items():
        b64, b1 = batches["b64"], batches["b1"]
        for name in b64["ms"]:
            rows.append(f"| {name} | {b64['ms'][name]:.3f} ({b64['speedup_vs_dense'][name]:.2f}x) | "
                        f"{b1['ms'][name]:.3f} ({b1['speedup_vs_dense'][name]:.2f}x) | "
                        f"{_timed_in(payload, model, name)} |")
    return rows


def architecture_runtime_rows(payload: dict) -> list[str]:
    rows = []
    for key, model in payload.get("onnx_runtime", {}).items():
        for name, ms in model["ms"].items():
            rows.append(f"| {name} | {ms:.3f} | {model['vs_dense_pytorch'][name]:.2f}x | "
                        f"{_timed_in(payload, key, name)} |")
        for name, error in model["not_exported"].items():
            rows.append(f"| {name} (ONNX Runtime) | not exported: `{error[:90]}` | - | "
                        f"{_timed_in(payload, key, name)} |")
    return rows


def runtime_rows(payload: dict) -> list[str]:
    """bench/runtime.py: each recipe's fastest form per batch size against dense fp32 in the same runtime."""
    rows = []
    for name, result in payload["results"].items():
        run, figures = result["runs"][0], result.get("figures")
        if figures is None:
            continue
        cells = []
        for batch in ("b64", "b1"):
            f = figures[batch]
            forms = ", ".join(f"{form} {ms:.3f}" for form, ms in f["ms"].items())
            cells.append(f"**{f['speedup_vs_dense_same_runtime']:.2f}x** {f['fastest']} "
                         f"({f['speedup_vs_dense_pytorch_eager']:.2f}x vs dense eager; {forms})")
        alone = figures.get("report_onnx_over_standalone")
        onnx = (f"{run['size/onnx_bytes']:,} ({figures['onnx_over_artifact_bytes']:.2f})" if alone else "no ONNX file")
        met = ", ".join(f"{k} {'met' if v['met'] else 'not met'} (bar {v['bar']})"
                        for k, v in result.get("bars", {}).items()) or "-"
        accuracy = ("1 epoch: structure only" if figures.get("shape_only") else f"{run['test/acc']:.2%}")
        layout = figures.get("layout", {}).get("artifact", "contiguous")
        timing = f"{alone['b1']:.2f} / {alone['b64']:.2f}" if alone else "-"
        rows.append(f"| {name} ({layout}) | {accuracy} | {run['size/artifact_bytes']:,} / {onnx} | {cells[0]} | "
                    f"{cells[1]} | {figures['mac_reduction']:.1f}x / {figures['clock_share_b64']:.2f} | "
                    f"{timing} | {met} |")
    return rows


LAYERDROP_ORDER = ("dense", "layerdrop", "removed_no_layerdrop", "shallow_scratch")


def layerdrop_rows(payload: dict) -> list[str]:
    rows = []

    def order(name: str) -> tuple[bool, int]:
        model, _, kind = name.partition("_")
        return model != "resnet20", LAYERDROP_ORDER.index(kind) if kind in LAYERDROP_ORDER else len(LAYERDROP_ORDER)

    for name in sorted(payload["results"], key=order):
        result = payload["results"][name]
        run, figures = result["runs"][0], result["figures"]
        delta = figures.get("delta_vs_dense_pp")
        bars = bars_text(result)
        removed = (f"{run['layerdrop/removed']}/{run['layerdrop/droppable']}" if run.get("layerdrop/droppable")
                   else "0")
        losses = (f"{run['layerdrop/val_loss_before_removal']:.3f} -> {run['layerdrop/val_loss_blocks_removed']:.3f}"
                  if run.get("layerdrop/val_loss_blocks_removed") is not None else "-")
        rows.append(
            f"| {name} | `{' '.join(result['overrides'])}` | {result['test_acc_mean']:.2%} | "
            f"{'-' if delta is None else f'{delta:+.2f}'} | {removed} | {run['macs/effective']:,} "
            f"({figures['macs_removed_pct']:.1f}% removed) | {losses} | {run['latency/speedup_b64']:.2f}x | {bars} |"
        )
    return rows


def per_seed(runs: list[dict], key: str = "test/acc") -> str:
    return " ".join(f"{r[key]:.2%}" for r in runs)


def command(result: dict) -> str:
    """The result's command line, overrides with brackets or braces quoted for the shell."""
    quoted = [f"'{o}'" if any(c in o for c in "[]{}") else o for o in result["overrides"]]
    return "`python train.py " + " ".join(quoted) + " seed=<seed>`"


NETS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "resnet20": "ResNet-20"}


def papers_rows(payloads: dict) -> list[str]:
    """One row per claim against a paper or an issue's bar: the paper's figure, ours, the bar, the command."""
    rows = []
    dc = (payloads.get("deep_compression.json") or {}).get("results", {})
    for name in sorted(dc, key=lambda n: (not n.startswith("lenet300"), n)):
        result = dc[name]
        model, _, distilled = name.partition("_")
        runs, paper, figures = result["runs"], result["paper"], result["figures"]
        errors = " ".join(f"{r['error_pct']:.2f}%" for r in runs)
        teacher = re.search(r"<experiment=baseline_(\w+?)_mnist run", " ".join(result["overrides"]))
        rows.append(
            f"| Deep Compression, {'LeNet-300-100' if model == 'lenet300' else 'LeNet-5'}, 20 epochs"
            f"{f' + distillation from dense {NETS[teacher.group(1)]}' if distilled and teacher else ''} | "
            f"{paper['ratio']}x at {paper['error_pct']}% "
            f"error | **{figures['ratio_mean']:.1f}x at {figures['error_pct_mean']:.2f}%** ({errors}) | "
            f"{bars_text(result)} | {command(result)} |")
    distill = payloads.get("distill.json")
    names = {"dense": "LeNet-300-100 dense", "gmp": "LeNet-300-100, 95% pruned (GMP)",
             "gmp_distill": "95% pruned + distillation from dense LeNet-300-100",
             "gmp_distill_lenet5": "95% pruned + distillation from dense LeNet-5"}
    for name, label in names.items():
        result = (distill or {}).get("results", {}).get(name)
        if result is None:
            continue
        paper = {"dense": "1.64% error (Han et al. 2015)",
                 "gmp": "92% pruned, 1.59% error (-0.05 vs dense; Han et al. 2015)"}
        delta = result.get("delta_vs_dense_pp")
        rows.append(f"| {label} | {paper.get(name, '-')} | {result['test_acc_mean']:.2%} "
                    f"({'' if name == 'dense' else f'{delta:+.2f} vs dense; '}{per_seed(result['runs'])}) | "
                    f"{bars_text(result)} | {command(result)} |")
    sens = payloads.get("sensitivity.json")
    for name in ("sensitivity", "uniform"):
        result = (sens or {}).get("results", {}).get(name)
        if result is None:
            continue
        chosen = ", ".join(f"{k.split('.')[0]} {v:g}" for k, v in sens["results"]["dense"]["runs"][0]["chosen"].items())
        label = (f"95% pruned, per-layer targets from the sensitivity analysis (seed {sens['seeds'][0]}: {chosen})"
                 if name == "sensitivity" else "95% pruned, every layer at 95%")
        rows.append(f"| {label} | - | {result['test_acc_mean']:.2%} ({result['delta_vs_dense_pp']:+.2f} vs dense; "
                    f"{per_seed(result['runs'])}) | {bars_text(result)} | {command(result)} |")
    return rows


PAPERS_HEADER = ("| claim | paper | ours: mean (per seed) | bar | command |", "|---|---|---|---|---|")
README_MARKERS = ("<!-- papers:start (python bench/table.py --readme) -->", "<!-- papers:end -->")


def papers_table() -> str:
    papers = {name: load(name) for name in ("deep_compression.json", "distill.json", "sensitivity.json")}
    return "\n".join([*PAPERS_HEADER, *papers_rows({k: v for k, v in papers.items() if v})])


def onnx_rows(payload: dict) -> list[str]:
    """bench/export_onnx.py: per recipe, the artifact against its ONNX model in ONNX Runtime (one thread)."""
    rows = ["| recipe | artifact / ONNX bytes | argmax agreement (max abs diff) | batch 1: PyTorch / ORT ms | "
            "batch 64: PyTorch / ORT ms | ORT integer kernels | command |", "|---|---|---|---|---|---|---|"]
    for name, r in payload["results"].items():
        kernels = ", ".join(r["integer_kernels"]) or "-"
        rows.append(
            f"| `{name}` | {r['artifact_bytes']:,} / {r['onnx_bytes']:,} | {r['argmax_agreement']:.2%} "
            f"({r['max_abs_diff']:.2g}) | {r['torch_ms_b1']:.3f} / {r['onnx_ms_b1']:.3f} "
            f"(**{r['onnx_speedup_b1']:.2f}x**) | {r['torch_ms_b64']:.2f} / {r['onnx_ms_b64']:.2f} "
            f"(**{r['onnx_speedup_b64']:.2f}x**) | {kernels} | `python bench/export_onnx.py --recipes {name}` |")
    return rows


ONNX_MARKERS = ("<!-- onnx:start (python bench/table.py --readme) -->", "<!-- onnx:end -->")


def onnx_table() -> str:
    payload = load("onnx.json")
    return "\n".join(onnx_rows(payload)) if payload else "(not measured yet: python bench/export_onnx.py)"


# docs/results.md's tables rendered from one or more JSON files: marker name -> (header, [(JSON file, rows)])
DOCS_TABLES = {
    "baselines": (
        ("| recipe (`python train.py experiment=...`) | test acc | params | MACs / image | artifact bytes | "
         "latency b1 / b64 (ms, 1 thread) |", "|---|---|---|---|---|---|"),
        [("baselines.json", baseline_rows)]),
    "gmp_accuracy": (
        ("| run | overrides | zeros | test acc, mean (per seed) | vs dense (pp) | artifact |",
         "|---|---|---|---|---|---|"),
        [("gmp_accuracy_lenet300.json", gmp_rows), ("gmp_accuracy_lenet5.json", gmp_rows)]),
    "gmp_overhead": (
        ("| callback | median ratio | interquartile range | min - max | reps |", "|---|---|---|---|---|"),
        [("gmp_overhead.json", overhead_rows)]),
    "qat_accuracy": (
        ("| run | overrides | test acc | vs fp32 (pp) | test error | artifact bytes | bytes vs fp32 | "
         "report speedup b64 |", "|---|---|---|---|---|---|---|---|"),
        [("qat_accuracy.json", qat_rows)]),
    "qat_speed": (
        ("| model | fp32 ms | fp32 fastest ms | torch.ao direct ms | ours ms | ours vs fp32 | direct vs fp32 | "
         "ours / direct (time) | ours vs fp32 fastest | bytes vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|"),
        [("qat_speed.json", qat_speed_rows)]),
    "decomposition_accuracy": (
        ("| recipe | overrides | test acc | vs dense (pp) | swapped layer | params | conv MACs / image | artifact | "
         "speedup b1 / b64 |", "|---|---|---|---|---|---|---|---|---|"),
        [("decomposition_accuracy.json", decomposition_rows)]),
    "decomposition_speed": (
        ("| layer | batch | params (TT vs dense) | dense ms | tt ms | contract ms | rebuild ms | "
         "TensorLy-Torch blocktt factorized / reconstructed ms | tt speedup | MACs fewer |",
         "|---|---|---|---|---|---|---|---|---|---|"),
        [("decomposition_speed.json", decomposition_speed_rows)]),
    "cost": (
        ("| network | params | technique | step vs dense (range over rounds) | step ms (dense) | one-time s |",
         "|---|---|---|---|---|---|"),
        [("cost.json", cost_rows)]),
    "architectures": (
        ("| run | overrides | test acc | vs dense (pp) | params | MACs / image | artifact bytes (smaller) | "
         "speed-up b64 (in the run) | bars |", "|---|---|---|---|---|---|---|---|---|"),
        [("architectures.json", architecture_rows)]),
    "architectures_speed": (
        ("| network | batch 64 ms (vs dense) | batch 1 ms (vs dense) | timed beside its dense in |",
         "|---|---|---|---|"),
        [("architectures_speed.json", architecture_speed_rows)]),
    "architectures_runtimes": (
        ("| network (runtime) | batch 64 ms | vs dense fp32 PyTorch | timed in |", "|---|---|---|---|"),
        [("architectures_speed.json", architecture_runtime_rows)]),
    "runtime": (
        ("| recipe | test acc | artifact / ONNX bytes (ratio) | batch 64: fastest form vs dense fp32 in its runtime "
         "(ms per form) | batch 1: the same | MAC reduction / share reaching the clock (b64) | report's ORT ms / "
         "standalone ORT (b1 / b64) | bars |", "|---|---|---|---|---|---|---|---|"),
        [("runtime.json", runtime_rows)]),
    "composition": (
        ("| run | overrides | test acc | vs dense (pp) | artifact bytes (smaller) | conv MACs fewer | speed-up b64 | "
         "bars |", "|---|---|---|---|---|---|---|---|"),
        [("composition.json", composition_rows)]),
    "composition_seeds": (
        ("| run | overrides | test acc | vs dense (pp) | artifact bytes (smaller) | conv MACs fewer | speed-up b64 | "
         "bars |", "|---|---|---|---|---|---|---|---|"),
        [("composition_seeds.json", composition_rows)]),
}


def table_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start (python bench/table.py --readme) -->", f"<!-- {name}:end -->"


def docs_table(name: str) -> str:
    header, sources = DOCS_TABLES[name]
    rows = [row for file, render in sources if (payload := load(file)) for row in render(payload)]
    return "\n".join([*header, *rows]) if rows else f"(not measured yet: no {sources[0][0]})"


def _replace_block(text: str, markers: tuple[str, str], table: str) -> str:
    start, end = markers
    if start not in text:
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def with_tables(text: str) -> str:
    """``text`` (README.md or docs/results.md) with every block between markers replaced by the current table:
    against the papers, ONNX Runtime, and each of :data:`DOCS_TABLES`."""
    text = _replace_block(_replace_block(text, README_MARKERS, papers_table()), ONNX_MARKERS, onnx_table())
    for name in DOCS_TABLES:
        text = _replace_block(text, table_markers(name), docs_table(name))
    return text


if __name__ == "__main__":
    import sys

    if "--readme" in sys.argv:
        for path in (README, RESULTS_PAGE):
            path.write_text(with_tables(path.read_text()))
            print(f"wrote the current tables into {path.relative_to(ROOT)}")
        raise SystemExit(0)
    print("\nagainst the papers:\n" + papers_table())
    for title, name, render in (("baselines", "baselines.json", baseline_rows),
                                ("gmp lenet300", "gmp_accuracy_lenet300.json", gmp_rows),
                                ("gmp lenet5", "gmp_accuracy_lenet5.json", gmp_rows),
                                ("gmp overhead", "gmp_overhead.json", overhead_rows),
                                ("qat accuracy", "qat_accuracy.json", qat_rows),
                                ("qat speed", "qat_speed.json", qat_speed_rows),
                                ("decomposition accuracy", "decomposition_accuracy.json", decomposition_rows),
                                ("decomposition speed", "decomposition_speed.json", decomposition_speed_rows),
                                ("composition", "composition.json", composition_rows),
                                ("composition seeds", "composition_seeds.json", composition_rows),
                                ("structured", "structured.json", structured_rows),
                                ("structured seeds", "structured_seeds.json", structured_rows),
                                ("structured speed", "structured_speed.json", structured_speed_rows),
                                ("layerdrop", "layerdrop.json", layerdrop_rows),
                                ("layerdrop speed", "layerdrop_speed.json", structured_speed_rows),
                                ("architectures", "architectures.json", architecture_rows),
                                ("architectures speed", "architectures_speed.json", architecture_speed_rows),
                                ("onnx", "onnx.json", onnx_rows),
                                ("runtime", "runtime.json", runtime_rows),
                                ("cost", "cost.json", cost_rows)):
        payload = load(name)
        if payload:
            print(f"\n{title}:\n" + "\n".join(render(payload)))
