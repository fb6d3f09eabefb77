"""Print the README results rows from bench/results/*.json: python bench/table.py"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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


if __name__ == "__main__":
    for title, name, render in (("baselines", "baselines.json", baseline_rows),
                                ("gmp lenet300", "gmp_accuracy_lenet300.json", gmp_rows),
                                ("gmp lenet5", "gmp_accuracy_lenet5.json", gmp_rows),
                                ("gmp overhead", "gmp_overhead.json", overhead_rows),
                                ("qat accuracy", "qat_accuracy.json", qat_rows),
                                ("qat speed", "qat_speed.json", qat_speed_rows)):
        payload = load(name)
        if payload:
            print(f"\n{title}:\n" + "\n".join(render(payload)))
