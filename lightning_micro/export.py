"""The compressed artifact: one safetensors file that rebuilds a runnable network, weights only.

Layout: the tensors of the network's ``state_dict`` (each stored by a named *codec*) and three metadata
strings: ``format`` (this module's version), ``net`` (the network's config node as JSON: ``_target_`` plus
plain arguments) and ``codecs`` (which codec stored each state-dict entry, as JSON). No pickled code: loading
imports the network's class by name and fills it with tensors.

Codecs are the extension point for compressed storage. A codec turns one state-dict tensor into one or more
stored tensors and back. ``dense`` stores the tensor as it is, ``bitmask`` stores a sparse tensor as one bit
per entry plus its non-zero values; techniques register their own (packed low-bit integers, ...) in
:data:`CODECS` and name them per tensor when saving (their callbacks' ``export_codecs(net)``).

Example:
    >>> from lightning_micro.models import LeNet300
    >>> spec = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
    >>> size = save_compressed(LeNet300([1, 8, 8]), spec, "/tmp/lenet.safetensors")  # doctest: +SKIP
    >>> net = load_compressed("/tmp/lenet.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lightning_micro.core.sparse_format import bitmask_decode, bitmask_encode
from lightning_micro.instantiate import instantiate

FORMAT = "lightning_micro.artifact/1"


@dataclass(frozen=True)
class Codec:
    """How one state-dict tensor is stored.

    ``encode(tensor) -> {suffix: tensor}`` gives the tensors to store (saved as ``"<name>::<suffix>"``);
    ``decode({suffix: tensor}) -> tensor`` rebuilds the original.
    """

    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    decode: Callable[[dict[str, torch.Tensor]], torch.Tensor]


CODECS: dict[str, Codec] = {
    "dense": Codec(encode=lambda t: {"data": t}, decode=lambda parts: parts["data"]),
    "bitmask": Codec(encode=bitmask_encode, decode=bitmask_decode),  # sparse: 1 bit per entry + non-zeros
}


def save_compressed(
    net: nn.Module,
    net_spec: Mapping[str, Any],
    path: str | os.PathLike,
    codecs: Mapping[str, str] | None = None,
) -> int:
    """Write ``net`` as an artifact at ``path`` and return its size in bytes.

    Args:
        net: the network to store (its ``state_dict``).
        net_spec: config node that rebuilds the network's architecture (``_target_`` and plain arguments).
        path: file to create; an existing file is never overwritten.
        codecs: codec name per state-dict key; keys not named use ``dense``.

    Raises:
        FileExistsError: ``path`` exists.
        ValueError: an unknown codec, a codec for a key the network lacks, or a spec without ``_target_``.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"refusing to overwrite the existing artifact {path}")
    if "_target_" not in net_spec:
        raise ValueError(f"net_spec needs a _target_ naming the network class, got keys {sorted(net_spec)}")
    state = net.state_dict()
    codecs = dict(codecs or {})
    unknown = sorted(set(codecs) - set(state))
    if unknown:
        raise ValueError(f"codecs name keys the network does not have: {unknown}")
    chosen = {name: codecs.get(name, "dense") for name in state}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if chosen[name] not in CODECS:
            raise ValueError(f"unknown codec {chosen[name]!r} for {name}; registered: {sorted(CODECS)}")
        for suffix, part in CODECS[chosen[name]].encode(tensor.detach().cpu()).items():
            tensors[f"{name}::{suffix}"] = part.contiguous()
    metadata = {"format": FORMAT, "net": json.dumps(dict(net_spec)), "codecs": json.dumps(chosen)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path.stat().st_size


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's metadata, JSON fields decoded."""
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lightning_micro artifact (format {raw.get('format')!r}, want {FORMAT})")
    return {"format": raw["format"], "net": json.loads(raw["net"]), "codecs": json.loads(raw["codecs"])}


def load_compressed(path: str | os.PathLike) -> nn.Module:
    """Rebuild the network stored at ``path``, in eval mode, on the CPU."""
    meta = read_metadata(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            name, suffix = key.rsplit("::", 1)
            parts.setdefault(name, {})[suffix] = handle.get_tensor(key)
    state = {}
    for name, codec_name in meta["codecs"].items():
        if codec_name not in CODECS:
            raise ValueError(f"{path}: {name} uses codec {codec_name!r}, which this version does not know "
                             f"(known: {sorted(CODECS)})")
        state[name] = CODECS[codec_name].decode(parts[name])
    net = instantiate(meta["net"], "artifact.net")
    net.load_state_dict(state, strict=True)
    return net.eval()
