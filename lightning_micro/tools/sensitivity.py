"""Sensitivity analysis (as in Distiller): each layer of a trained network pruned, or quantized, alone at several
levels, the validation accuracy measured each time; from the pruning curves, per-layer sparsities that reach a
target overall sparsity where the layers lose least, written as the overrides ``compression=gmp`` takes.

    lightning-micro-sensitivity logs/runs/<a dense run> --target 0.95
    python train.py experiment=gmp_lenet300 compression.gmp.overrides=logs/runs/<run>/sensitivity/overrides.yaml

Writes into ``<run>/sensitivity/`` (or ``--out``): ``sensitivity.json`` (the curves), ``sensitivity.png`` and, for
pruning, ``overrides.yaml``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_micro.core.masks import layerwise_magnitude_masks
from lightning_micro.core.quantizers import WeightQuantSpec, fake_quantize
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import instantiate
from lightning_micro.tools.wandb_upload import add_wandb_arguments, upload

PRUNE_LEVELS = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
QUANT_LEVELS = (8, 6, 4, 3, 2)
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_names(net: nn.Module) -> list[str]:
    """The ``weight`` of every Linear and convolution of ``net``, in model order (what GMP prunes)."""
    return [f"{name}.weight" for name, module in net.named_modules() if isinstance(module, LAYER_TYPES)]


def accuracy(net: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in batches)
    return correct / max(sum(len(y) for _, y in batches), 1)


def degraded(weight: torch.Tensor, method: str, level: float) -> torch.Tensor:
    """``weight`` pruned to sparsity ``level`` (smallest magnitudes zeroed) or fake-quantized to ``level`` bits
    (symmetric, per output channel)."""
    if method == "prune":
        return weight * layerwise_magnitude_masks({"w": weight}, {"w": level})["w"]
    return fake_quantize(weight, WeightQuantSpec(int(level), per_channel=True, symmetric=True))


def sensitivity(net: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], method: str = "prune",
                levels: Sequence[float] = PRUNE_LEVELS) -> tuple[float, dict[str, dict[float, float]]]:
    """The baseline accuracy and ``{weight: {level: accuracy}}`` with that weight alone degraded at each level."""
    if method not in ("prune", "quantize"):
        raise ValueError(f"method must be 'prune' or 'quantize', got {method!r}")
    params = dict(net.named_parameters())
    baseline = accuracy(net, batches)
    curves: dict[str, dict[float, float]] = {}
    for name in weight_names(net):
        weight = params[name]
        original = weight.detach().clone()
        curves[name] = {}
        for level in levels:
            with torch.no_grad():
                weight.copy_(degraded(original, method, level))
            curves[name][level] = accuracy(net, batches)
        with torch.no_grad():
            weight.copy_(original)
    return baseline, curves


def allocate(curves: Mapping[str, Mapping[float, float]], sizes: Mapping[str, int], target: float,
             baseline: float, resolution: int = 2000) -> dict[str, float]:
    """Per-layer sparsities, one measured level each (or 0), whose size-weighted mean is at least ``target`` and
    whose summed accuracy losses (each layer's measured alone, so assumed to add up) are the smallest: a knapsack
    solved exactly by dynamic programming over the pruned weights, counted in ``1/resolution`` of the total and
    rounded down, so that the target is always reached.

    Raises:
        ValueError: ``target`` cannot be reached with the measured levels.
    """
    total = sum(sizes.values())
    need = math.ceil(target * resolution - 1e-9)
    # best[pruned units] = (summed loss, -weights pruned, choice); the units are capped at ``need`` (more pruning
    # than asked is fine); of two choices losing the same, the one pruning more wins
    best: dict[int, tuple[float, float, dict[str, float]]] = {0: (0.0, 0.0, {})}
    for name, curve in curves.items():
        options = [(0.0, 0.0)] + [(level, max(0.0, baseline - acc)) for level, acc in curve.items()]
        step: dict[int, tuple[float, float, dict[str, float]]] = {}
        for units, (loss, pruned, chosen) in best.items():
            for level, cost in options:
                reached = min(need, units + math.floor(level * sizes[name] * resolution / total))
                candidate = (round(loss + cost, 12), pruned - level * sizes[name], {**chosen, name: level})
                if reached not in step or candidate[:2] < step[reached][:2]:
                    step[reached] = candidate
        best = step
    if need not in best:
        most = sum(max(curve) * sizes[name] for name, curve in curves.items()) / total
        raise ValueError(f"target={target} cannot be reached: every layer at its highest measured level gives "
                         f"{most:.4f}; measure higher levels")
    return best[need][2]


def plot(curves: Mapping[str, Mapping[float, float]], baseline: float, method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot(list(curve), [100 * a for a in curve.values()], marker="o", markersize=3, label=name)
    ax.axhline(100 * baseline, color="grey", linestyle="--", linewidth=1, label="unchanged")
    ax.set_xlabel("sparsity of the layer alone" if method == "prune" else "weight bits of the layer alone")
    ax.set_ylabel("validation accuracy (%)")
    if method == "quantize":
        ax.invert_xaxis()
    ax.set_title(f"sensitivity: each layer {'pruned' if method == 'prune' else 'quantized'} alone")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_run(run_dir: Path, batches: int | None) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The trained network of a run (its last checkpoint, read as data only) and its validation batches (the
    run's own data config).

    Raises:
        ValueError: not a run directory with a saved config and a checkpoint.
    """
    from omegaconf import OmegaConf

    config, checkpoint = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not config.is_file() or not checkpoint.is_file():
        raise ValueError(f"{run_dir} is not a finished run directory (it needs .hydra/config.yaml and "
                         "checkpoints/last.ckpt)")
    cfg = OmegaConf.load(config)
    module = ClassifierModule.load_from_checkpoint(checkpoint, map_location="cpu")
    if module.transforms:
        raise ValueError(f"{run_dir} trained a compressed network ({[e['transform'] for e in module.transforms]}); "
                         "analyse a dense run (compression=[])")
    data = instantiate(OmegaConf.to_container(cfg.data, resolve=True), "data")
    data.setup("fit")
    loader = data.val_dataloader()
    chosen = []
    for x, y in loader:
        if batches is not None and len(chosen) == batches:
            break
        chosen.append((x, y))
    return module.net, chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-micro-sensitivity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished dense run (logs/runs/<time>)")
    parser.add_argument("--method", choices=("prune", "quantize"), default="prune")
    parser.add_argument("--levels", type=float, nargs="+", help="sparsities (prune) or bits (quantize) to measure")
    parser.add_argument("--target", type=float, default=0.95, help="overall sparsity the overrides reach (prune)")
    parser.add_argument("--batches", type=int, help="validation batches to measure on (default: all)")
    parser.add_argument("--out", help="output directory (default: <run_dir>/sensitivity)")
    add_wandb_arguments(parser)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    levels = args.levels or (PRUNE_LEVELS if args.method == "prune" else QUANT_LEVELS)
    try:
        if args.method == "prune" and not all(0 <= v < 1 for v in levels):
            raise ValueError(f"--levels for pruning are sparsities in [0, 1), got {list(levels)}")
        if args.method == "quantize" and not all(v == int(v) and 1 <= v <= 16 for v in levels):
            raise ValueError(f"--levels for quantization are bit widths 1 to 16, got {list(levels)}")
        if not 0 < args.target < 1:
            raise ValueError(f"--target must be a sparsity in (0, 1), got {args.target}")
        net, batches = load_run(run_dir, args.batches)
        baseline, curves = sensitivity(net, batches, args.method, levels)
        overrides = None
        if args.method == "prune":
            sizes = {name: p.numel() for name, p in net.named_parameters() if name in curves}
            overrides = allocate(curves, sizes, args.target, baseline)
    except ValueError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run_dir / "sensitivity"
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"run": str(run_dir), "method": args.method, "baseline_acc": baseline,
                               "batches": len(batches), "curves": {n: {str(k): v for k, v in c.items()}
                                                                   for n, c in curves.items()}}
    if overrides is not None:
        payload["target"] = args.target
        payload["overrides"] = overrides
        lines = [f"# GMP per-layer final sparsities from {run_dir} (pruning each layer alone, {len(batches)} "
                 f"validation batches; baseline {baseline:.4f}), reaching {args.target} overall:",
                 f"# python train.py compression=gmp compression.gmp.overrides={out / 'overrides.yaml'}",
                 "overrides:"] + [f"  {name}: {value}" for name, value in overrides.items()]
        (out / "overrides.yaml").write_text("\n".join(lines) + "\n")
    (out / "sensitivity.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(curves, baseline, args.method, out / "sensitivity.png")
    for name, curve in curves.items():
        print(f"{name}: " + ", ".join(f"{k:g} -> {v:.2%}" for k, v in curve.items())
              + (f"  => {overrides[name]:g}" if overrides else ""))
    print(f"baseline {baseline:.2%}; wrote {out}")
    columns = ["layer", "level", "val_acc"] + (["allocated"] if overrides else [])
    table = [[name, level, acc] + ([overrides[name]] if overrides else [])
             for name, curve in curves.items() for level, acc in curve.items()]
    wandb_dir = upload(args.wandb, args.wandb_project, out, "sensitivity", f"sensitivity {args.method} {run_dir.name}",
                       {"sensitivity/curves": (columns, table)}, {"sensitivity/plot": out / "sensitivity.png"})
    if wandb_dir is not None:
        print(f"W&B ({args.wandb}): {wandb_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
