"""The per-layer picture of a compressed run: what each technique left of each layer, drawn from the run's report.

Panels, each where the report has its fields: weights kept per tensor (``sparsity/<tensor>``, with the weight
bits), channels kept per group (``structured/kept/<group>``), compression of each factorized layer with its ranks
(``tt/<layer>/*``, ``lowrank/<layer>/*``), the blocks a layer-dropping run removed (``layerdrop/*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _panels(report: Mapping[str, Any]) -> list[tuple[str, list[str], list[float], list[str]]]:
    """``(title, labels, values, annotations)`` per panel, values in [0, 1] except compression ratios."""
    panels = []
    sparsity = {k.removeprefix("sparsity/"): v for k, v in report.items()
                if k.startswith("sparsity/") and k != "sparsity/global"}
    if sparsity:
        bits = report.get("quant/weight_bits")
        title = "weights kept (non-zero fraction)" + (f", {bits}-bit weights" if bits and bits != 32 else "")
        panels.append((title, list(sparsity), [1.0 - v for v in sparsity.values()],
                       [f"{1.0 - v:.0%}" for v in sparsity.values()]))
    kept = {k.removeprefix("structured/kept/"): str(v) for k, v in report.items() if k.startswith("structured/kept/")}
    if kept:
        fractions = [int(v.split("/")[0]) / int(v.split("/")[1]) for v in kept.values()]
        panels.append(("channels kept per group", list(kept), fractions, list(kept.values())))
    swapped = {}
    for kind, rank_key in (("tt", "ranks"), ("lowrank", "rank")):
        for key, value in report.items():
            if key.startswith(f"{kind}/") and key.endswith("/ratio"):
                layer = key[len(kind) + 1:-len("/ratio")]
                swapped[f"{layer} ({kind})"] = (float(value), str(report.get(f"{kind}/{layer}/{rank_key}", "")))
    if swapped:
        panels.append(("parameters: dense / factorized (ranks)", list(swapped), [v[0] for v in swapped.values()],
                       [f"{v[0]:.1f}x  r={v[1]}" for v in swapped.values()]))
    if report.get("layerdrop/droppable"):
        removed = [b for b in str(report.get("layerdrop/removed_blocks", "")).split(",") if b and b != "none"]
        droppable = int(report["layerdrop/droppable"])
        panels.append((f"droppable blocks removed: {len(removed)} of {droppable}", removed or ["none"],
                       [1.0] * max(len(removed), 1), ["removed"] * len(removed) or [""]))
    return panels


def layer_picture(report: Mapping[str, Any], path: str | Path, title: str = "") -> bool:
    """Draw the per-layer picture of ``report`` into ``path`` (PNG); ``False`` (and no file) when the report
    has no per-layer field."""
    panels = _panels(report)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1.2, 0.28 * len(labels) + 0.8) for _, labels, _, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (panel_title, labels, values, notes) in zip(axes[:, 0], panels, strict=True):
        positions = range(len(labels))
        ax.barh(list(positions), values, color="tab:blue")
        ax.set_yticks(list(positions), labels, fontsize=7)
        ax.invert_yaxis()
        for y, (value, note) in enumerate(zip(values, notes, strict=True)):
            ax.annotate(note, (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        if max(values, default=0) <= 1.0:
            ax.set_xlim(0, 1.15)
        ax.set_title(panel_title, fontsize=9)
    fig.suptitle(title or "per-layer compression", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
