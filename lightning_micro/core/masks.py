"""Magnitude masks: which weights to keep so that a target fraction of them is zero.

``True`` in a mask keeps the weight. Ties at the threshold are broken by position (``topk`` order), so a mask
always prunes exactly ``round(sparsity * n)`` weights and is the same on every process given the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        keep[torch.topk(scores.reshape(-1), n_prune, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def layerwise_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: Mapping[str, float]
                              ) -> dict[str, torch.Tensor]:
    """Each tensor pruned to its own sparsity by absolute value."""
    return {
        name: _keep_largest(w.detach().abs(), int(round(sparsity[name] * w.numel()))) for name, w in weights.items()
    }


def floor_count(numel: int, min_density: float) -> int:
    """How many weights of a tensor of ``numel`` global pruning always keeps: ``min_density`` of them, at least
    one (with ``min_density > 0``), so that no layer is cut off whole."""
    return min(numel, max(1, math.ceil(min_density * numel))) if min_density > 0 else 0


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, min_density: float = 0.0
                           ) -> dict[str, torch.Tensor]:
    """All tensors pruned together: the ``sparsity`` fraction of smallest absolute values over their union.

    Each tensor keeps at least its :func:`floor_count` largest weights (``min_density``), whatever the others hold:
    global ranking can otherwise remove a whole small layer (a dead network). When the floors make the target
    unreachable, as many weights as allowed are pruned."""
    if not weights:
        return {}
    scores = []
    for w in weights.values():
        score = w.detach().abs().reshape(-1).clone()
        floor = floor_count(score.numel(), min_density)
        if floor:
            score[torch.topk(score, floor, sorted=False).indices] = math.inf
        scores.append(score)
    flat = torch.cat(scores)
    protected = int(torch.isinf(flat).sum())
    keep = _keep_largest(flat, min(int(round(sparsity * flat.numel())), flat.numel() - protected))
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset : offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    overrides: Mapping[str, float] | None = None,
    min_density: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Masks for ``weights`` at ``sparsity``: ``global`` ranks all weights together (each tensor keeping at least
    ``min_density`` of its weights), ``layerwise`` each tensor alone. Tensors named in ``overrides`` are pruned
    alone to their own sparsity either way."""
    overrides = dict(overrides or {})
    rest = {n: w for n, w in weights.items() if n not in overrides}
    if scope == "global":
        masks = global_magnitude_masks(rest, sparsity, min_density)
    elif scope == "layerwise":
        masks = layerwise_magnitude_masks(rest, {n: sparsity for n in rest})
    else:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    masks.update(layerwise_magnitude_masks({n: weights[n] for n in overrides}, overrides))
    return {n: masks[n] for n in weights}


def apply_masks_(tensors: Sequence[torch.Tensor], float_masks: Sequence[torch.Tensor]) -> None:
    """Zero the masked entries of every tensor in one vectorized call."""
    if tensors:
        torch._foreach_mul_(list(tensors), list(float_masks))


def mask_optimizer_state_(optimizers: Sequence[torch.optim.Optimizer],
                          masked: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero the optimizer state of masked entries: for each ``(parameter, mask)``, every state tensor shaped like
    the parameter (momentum buffer, Adam moments) is multiplied by the mask, so nothing pushes them back."""
    masks = {id(param): mask for param, mask in masked}
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            mask = masks.get(id(param))
            if mask is None:
                continue
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask)
