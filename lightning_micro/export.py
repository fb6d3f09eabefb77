"""The compressed artifact: one safetensors file that rebuilds a runnable network, weights only.

Layout: the tensors of the network's ``state_dict`` (each stored by a named *codec*) and metadata strings:
``format`` (this module's version), ``net`` (the network's config node as JSON: ``_target_`` plus plain
arguments), ``transforms`` (the record of structural changes made to the network, see
:mod:`lightning_micro.core.transforms`), ``codecs`` (which codec stored each state-dict entry) and ``values``
(state-dict entries that are not tensors: tuples of tensors, dtypes, as the integer modules of torch.ao keep
them). No pickled code: loading imports the network's class by name, replays the transforms on it and fills
it with tensors.

Codecs are the extension point for compressed storage. A codec turns one state-dict tensor into one or more
stored tensors and back. ``dense`` stores the tensor as it is, ``bitmask`` stores a sparse tensor as one bit
per entry plus its non-zero values, ``codes`` stores integer codes bit-packed (sparse and entropy-coded
when that is smaller), ``qtensor`` stores a quantized tensor as such codes plus its scales and zero points
(chosen automatically for quantized tensors). Techniques register their own in :data:`CODECS` and name them
per tensor when saving (their callbacks' ``export_codecs(net)``).

Example:
    >>> from lightning_micro.models import LeNet300
    >>> spec = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
    >>> size = save_compressed(LeNet300([1, 8, 8]), spec, "/tmp/lenet.safetensors")  # doctest: +SKIP
    >>> net = load_compressed("/tmp/lenet.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lightning_micro.core import transforms
from lightning_micro.core.code_format import decode_codes, encode_codes
from lightning_micro.core.int8_backend import quantized_tensor_from_parts, quantized_tensor_parts
from lightning_micro.core.sparse_format import bitmask_decode, bitmask_encode
from lightning_micro.instantiate import instantiate

FORMAT = "lightning_micro.artifact/3"
READABLE_FORMATS = (FORMAT, "lightning_micro.artifact/2", "lightning_micro.artifact/1")  # /2: no submodule


@dataclass(frozen=True)
class Codec:
    """How one state-dict tensor is stored.

    ``encode(tensor) -> {suffix: tensor}`` gives the tensors to store (saved as ``"<name>::<suffix>"``);
    ``decode({suffix: tensor}) -> tensor`` rebuilds the original.
    """

    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    decode: Callable[[dict[str, torch.Tensor]], torch.Tensor]


# What one more stored tensor costs in the file's JSON header (its name, dtype, shape and offsets), roughly.
_ENTRY_BYTES = 100


def _qtensor_encode(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = quantized_tensor_parts(tensor)
    packed = encode_codes(parts["codes"])
    packed_bytes = packed["blob"].numel() + 8 * packed["header"].numel() + _ENTRY_BYTES
    if packed_bytes < parts["codes"].numel():  # sparse or narrow codes: worth the second entry
        del parts["codes"]
        parts.update({f"codes.{k}": v for k, v in packed.items()})
    return parts


def _qtensor_decode(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    if "codes" not in parts:
        parts = {**parts, "codes": decode_codes({"header": parts["codes.header"], "blob": parts["codes.blob"]})}
    return quantized_tensor_from_parts(parts)


CODECS: dict[str, Codec] = {
    "dense": Codec(encode=lambda t: {"data": t}, decode=lambda parts: parts["data"]),
    "bitmask": Codec(encode=bitmask_encode, decode=bitmask_decode),  # sparse: 1 bit per entry + non-zeros
    "codes": Codec(encode=encode_codes, decode=decode_codes),  # integer codes: bit-packed, sparse, LZMA
    "qtensor": Codec(encode=_qtensor_encode, decode=_qtensor_decode),  # torch quantized tensors
}


def _flatten_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors by key, and the entries that are not plain tensors: a tuple becomes ``key#0``, ``key#1``, ...
    (described in ``values`` as ``["tuple", n]``; ``None`` items as ``["none"]``), a dtype is kept as its
    name, ``None`` as ``["none"]``."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    versions = getattr(state, "_metadata", None)  # modules' state-dict versions: old ones load differently
    if versions:
        values["_metadata"] = ["versions", {k: dict(v) for k, v in versions.items()}]
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, tuple):
            values[key] = ["tuple", len(value)]
            for i, item in enumerate(value):
                if item is None:
                    values[f"{key}#{i}"] = ["none"]
                else:
                    tensors[f"{key}#{i}"] = item
        elif isinstance(value, torch.dtype):
            values[key] = ["dtype", str(value).removeprefix("torch.")]
        elif value is None:  # an integer convolution without bias keeps `bias: None` in its state dict
            values[key] = ["none"]
        else:
            raise ValueError(f"state-dict entry {key} is a {type(value).__name__}, which the artifact cannot store")
    return tensors, values


def _unflatten_state(tensors: dict[str, torch.Tensor], values: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = OrderedDict(tensors)
    for key, (kind, *rest) in values.items():
        if kind == "dtype":
            state[key] = getattr(torch, rest[0])
        elif kind == "none" and "#" not in key:
            state[key] = None
        elif kind == "versions":
            state._metadata = OrderedDict(rest[0])  # type: ignore[attr-defined]
    for key, (kind, *rest) in values.items():
        if kind == "tuple":
            state[key] = tuple(state.pop(f"{key}#{i}", None) for i in range(rest[0]))
    return state


def save_compressed(
    net: nn.Module,
    net_spec: Mapping[str, Any],
    path: str | os.PathLike,
    codecs: Mapping[str, str] | None = None,
    record: transforms.Record | None = None,
    submodule: str = "",
) -> int:
    """Write ``net`` as an artifact at ``path`` and return its size in bytes.

    Args:
        net: the network to store (its ``state_dict``).
        net_spec: config node that rebuilds the network's architecture (``_target_`` and plain arguments).
        path: file to create; an existing file is never overwritten.
        codecs: codec name per state-dict key; keys not named use ``dense`` (``qtensor`` if quantized).
        record: the structural transforms applied to the network built from ``net_spec`` (replayed on load).
        submodule: dotted name of the network inside the object ``net_spec`` builds (``""``: that object).

    Raises:
        FileExistsError: ``path`` exists.
        ValueError: an unknown codec, a codec for a key the network lacks, or a spec without ``_target_``.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"refusing to overwrite the existing artifact {path}")
    if "_target_" not in net_spec:
        raise ValueError(f"net_spec needs a _target_ naming the network class, got keys {sorted(net_spec)}")
    state, values = _flatten_state(net.state_dict())
    codecs = dict(codecs or {})
    unknown = sorted(set(codecs) - set(state))
    if unknown:
        raise ValueError(f"codecs name keys the network does not have: {unknown}")
    chosen = {name: "qtensor" if tensor.is_quantized else codecs.get(name, "dense") for name, tensor in state.items()}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if chosen[name] not in CODECS:
            raise ValueError(f"unknown codec {chosen[name]!r} for {name}; registered: {sorted(CODECS)}")
        for suffix, part in CODECS[chosen[name]].encode(tensor.detach().cpu()).items():
            tensors[f"{name}::{suffix}"] = part.contiguous()
    metadata = {"format": FORMAT, "net": json.dumps(dict(net_spec)), "codecs": json.dumps(chosen),
                "transforms": json.dumps(list(record or [])), "values": json.dumps(values), "submodule": submodule}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path.stat().st_size


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's metadata, JSON fields decoded."""
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    if raw.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is not a lightning_micro artifact (format {raw.get('format')!r}, want {FORMAT})")
    defaults = {"transforms": "[]", "values": "{}"}  # /1 had neither
    return {"format": raw["format"], "submodule": raw.get("submodule", ""),
            **{key: json.loads(raw.get(key, defaults.get(key))) for key in ("net", "codecs", "transforms", "values")}}


def load_compressed(path: str | os.PathLike) -> nn.Module:
    """Rebuild the network stored at ``path``, in eval mode, on the CPU: build it from its config, replay its
    structural transforms, load its tensors (strictly: every key, every shape). An artifact of a user's own
    LightningModule rebuilds that module from its class path and saved init arguments and returns the network
    inside it (``submodule``)."""
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
    built = instantiate(meta["net"], "artifact.net")
    net = built.get_submodule(meta["submodule"]) if meta["submodule"] else built
    net = transforms.replay(net, meta["transforms"])
    net.load_state_dict(_unflatten_state(state, meta["values"]), strict=True)
    return net.eval()


def export_compressed(trainer: Any, path: str | os.PathLike, pl_module: Any = None) -> int:
    """Write the compressed network of a finished fit as an artifact and return its size in bytes: the one call
    after ``trainer.fit`` for any LightningModule with the compression contract.

    Every compression technique of the trainer is finalized (int8 conversion, integer codes), their codecs are
    gathered (for the keys the network has), and the network is saved with its record of transforms and the spec
    that rebuilds it (:meth:`~lightning_micro.contract.CompressionMixin.compressed_net_spec`: the module's class
    path and saved init arguments, or a factory it names). :func:`load_compressed` rebuilds it in a fresh process.

    Args:
        trainer: the ``lightning.Trainer`` that ran the fit (its callbacks are the techniques).
        path: the file to create; an existing file is never overwritten.
        pl_module: the LightningModule (default: ``trainer.lightning_module``).

    Raises:
        FileExistsError: ``path`` exists.
        ValueError: the module's class cannot be imported by another process (defined in ``__main__``), or its
            init arguments were not saved.
        TypeError: the module does not adopt the compression contract.

    Example:
        >>> trainer.fit(module, datamodule)  # doctest: +SKIP
        >>> export_compressed(trainer, "model.safetensors")  # doctest: +SKIP
        >>> net = load_compressed("model.safetensors")  # doctest: +SKIP
    """
    from lightning_micro.callbacks.technique import CompressionTechnique
    from lightning_micro.contract import require_contract

    module = require_contract(pl_module if pl_module is not None else trainer.lightning_module, "export_compressed")
    if Path(path).exists():
        raise FileExistsError(f"refusing to overwrite the existing artifact {path}")
    spec, submodule = module.compressed_net_spec()  # refuses __main__ classes before anything is converted
    techniques = [c for c in trainer.callbacks if isinstance(c, CompressionTechnique)]
    for technique in techniques:
        technique.finalize(module)
    net = module.compressed_net
    state_keys = set(net.state_dict())
    codecs: dict[str, str] = {}
    for technique in techniques:  # later techniques win for a key two of them name
        codecs.update({k: v for k, v in technique.export_codecs(net).items() if k in state_keys})
    return save_compressed(net, spec, path, codecs, module.transforms, submodule=submodule)
