"""Pareto pictures of a sweep: every run's test accuracy against its artifact's bytes, the front, a CSV and a PNG.

    python train.py -m experiment=gmp_lenet300 compression.gmp.final_sparsity=0.5,0.8,0.9,0.95,0.98
    lightning-micro-pareto logs/multiruns/<time>        # -> pareto.csv, pareto.png there, and a table
    lightning-micro-pareto logs/multiruns/<time> --wandb offline   # the same table and picture in a W&B run

Each run directory under the sweep directory holding a ``compression_report.json`` is one point; its techniques come
from the run's saved config (``.hydra/config.yaml``: the ``compression`` node's keys, in order), its overrides from
``.hydra/overrides.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_micro.tools.wandb_upload import add_wandb_arguments, upload

REPORT = "compression_report.json"
MIN_SPAN_PP = 0.5  # the accuracy axis spans at least this many points, so that run-to-run noise does not fill it
COLUMNS = ("run", "techniques", "overrides", "test/acc", "size/artifact_bytes", "size/dense_bytes", "size/ratio",
           "macs/effective", "latency/speedup_b64", "pareto")


def techniques_of(run_dir: Path) -> str:
    """The run's compression techniques joined by ``+`` (``dense`` for none), from its saved config."""
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return "unknown"
    compression = (yaml.safe_load(config.read_text()) or {}).get("compression") or {}
    return "+".join(compression) if isinstance(compression, dict) and compression else "dense"


def gather(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per run under ``sweep_dir`` (any depth), smallest artifact first.

    Raises:
        ValueError: ``sweep_dir`` is not a directory, or holds no run report.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: give a sweep directory (logs/multiruns/<time>)")
    rows = []
    for report_path in sorted(root.rglob(REPORT)):
        run_dir = report_path.parent
        report = json.loads(report_path.read_text())
        if "test/acc" not in report or "size/artifact_bytes" not in report:
            continue
        overrides_path = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
        rows.append({"run": str(run_dir.relative_to(root)) or ".", "techniques": techniques_of(run_dir),
                     "overrides": " ".join(overrides or []),
                     **{key: report.get(key) for key in COLUMNS[3:-1]}})
    if not rows:
        raise ValueError(f"{root} holds no run report ({REPORT}): is it a sweep directory whose runs finished?")
    rows.sort(key=lambda r: (r["size/artifact_bytes"], -r["test/acc"]))
    front = set(pareto_front([(r["size/artifact_bytes"], r["test/acc"]) for r in rows]))
    for index, row in enumerate(rows):
        row["pareto"] = index in front
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(size, accuracy)`` that no other point beats: none is at most as large and at least
    as accurate, and better in one of the two (ties: the first of equal points)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Test accuracy against artifact bytes (log axis): each technique its own marker, the front drawn, the dense
    fp32 artifact's size marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^Dv<>pP*Xh"
    for index, technique in enumerate(sorted({r["techniques"] for r in rows})):
        mine = [r for r in rows if r["techniques"] == technique]
        ax.scatter([r["size/artifact_bytes"] for r in mine], [100 * r["test/acc"] for r in mine],
                   marker="*" if technique == "dense" else markers[index % len(markers)], s=60, label=technique)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["size/artifact_bytes"])
    ax.step([r["size/artifact_bytes"] for r in front], [100 * r["test/acc"] for r in front], where="post",
            color="black", linewidth=1, label="Pareto front")
    dense_bytes = {r["size/dense_bytes"] for r in rows if r.get("size/dense_bytes")}
    for value in sorted(dense_bytes):
        ax.axvline(value, color="grey", linestyle="--", linewidth=1)
        ax.annotate("dense fp32", (value, 0.02), xycoords=("data", "axes fraction"), rotation=90, va="bottom",
                    ha="right", fontsize=8, color="grey")
    low, high = ax.get_ylim()
    if high - low < MIN_SPAN_PP:
        middle = (low + high) / 2
        ax.set_ylim(middle - MIN_SPAN_PP / 2, middle + MIN_SPAN_PP / 2)
    ax.set_xscale("log")
    ax.set_xlabel("artifact bytes (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy against size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runs by artifact size (* on the Pareto front)")
    for column in ("", "run", "techniques", "test acc", "bytes", "x smaller", "speed-up b64", "overrides"):
        table.add_column(column)
    for row in rows:
        ratio, speed = row.get("size/ratio"), row.get("latency/speedup_b64")
        table.add_row("*" if row["pareto"] else "", row["run"], row["techniques"], f"{row['test/acc']:.2%}",
                      f"{row['size/artifact_bytes']:,}", "-" if ratio is None else f"{ratio:.1f}x",
                      "-" if speed is None else f"{speed:.2f}x", row["overrides"])
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-micro-pareto", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a sweep directory (logs/multiruns/<time>)")
    parser.add_argument("--out", help="where pareto.csv and pareto.png go (default: the sweep directory)")
    add_wandb_arguments(parser)
    args = parser.parse_args(argv)
    try:
        rows = gather(args.sweep_dir)
    except ValueError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "pareto.csv")
    plot(rows, out / "pareto.png", title=Path(args.sweep_dir).resolve().name)
    print_table(rows)
    print(f"wrote {out / 'pareto.csv'} and {out / 'pareto.png'}")
    wandb_dir = upload(args.wandb, args.wandb_project, out, "pareto", f"pareto {Path(args.sweep_dir).name}",
                       {"pareto/table": (COLUMNS, [[row[c] for c in COLUMNS] for row in rows])},
                       {"pareto/plot": out / "pareto.png"})
    if wandb_dir is not None:
        print(f"W&B ({args.wandb}): {wandb_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
