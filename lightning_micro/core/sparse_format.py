"""Bitmask storage of a sparse tensor: one bit per entry plus the non-zero values.

For a tensor with ``n`` entries of which ``k`` are non-zero, in fp32: ``n / 8 + 4k`` bytes instead of ``4n``;
smaller than dense from about 3% sparsity on, and about 12x smaller at 95%.
"""

from __future__ import annotations

import numpy as np
import torch


def bitmask_encode(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"bits": uint8 packed mask, "values": non-zeros in order, "shape": int64 shape}``."""
    mask = tensor != 0
    bits = np.packbits(mask.reshape(-1).cpu().numpy())
    return {
        "bits": torch.from_numpy(bits),
        "values": tensor[mask].contiguous(),
        "shape": torch.tensor(list(tensor.shape), dtype=torch.int64),
    }


def bitmask_decode(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor back from :func:`bitmask_encode`'s parts."""
    shape = [int(v) for v in parts["shape"]]
    numel = int(np.prod(shape)) if shape else 1
    mask = torch.from_numpy(np.unpackbits(parts["bits"].numpy(), count=numel).astype(bool))
    out = torch.zeros(numel, dtype=parts["values"].dtype)
    out[mask] = parts["values"]
    return out.view(shape)
