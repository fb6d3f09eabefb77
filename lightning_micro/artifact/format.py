"""The compressed artifact: one safetensors file that rebuilds a runnable network, weights only.

Layout: the tensors of the network's ``state_dict`` (each stored by a named *codec*) and one metadata entry,
``lightning_micro``, a JSON object with sorted keys: ``format`` (this module's version), ``net`` (the network's
config node: ``_target_`` plus plain arguments), ``submodule``, ``transforms`` (the record of structural changes
made to the network, see :mod:`lightning_micro.core.transforms`), ``codecs`` (which codec stored each state-dict
entry), ``values`` (state-dict entries that are not tensors: tuples of tensors, dtypes, as the integer modules of
torch.ao keep them), ``kernels`` (the sparse kernel measured fastest for each pruned ``Linear`` and batch size, see
:mod:`lightning_micro.core.sparse_kernels`), ``layout`` (``contiguous`` or ``channels_last``, measured at export) and
``checksum`` (SHA-256 of all the rest and of every stored tensor, verified on load). The same network with the same
kernel and layout choices gives the same bytes.

No pickled code, and loading runs none: ``net`` is resolved only to a trusted class (the zoo, or what the caller
names; :mod:`lightning_micro.artifact.trust`), called with plain arguments; the transforms are looked up in a registry.

Codecs are the extension point for compressed storage. A codec turns one state-dict tensor into one or more
stored tensors and back. ``dense`` stores the tensor as it is, ``bitmask`` stores a sparse tensor as one bit
per entry plus its non-zero values, ``codes`` stores integer codes bit-packed (sparse and entropy-coded
when that is smaller), ``qtensor`` stores a quantized tensor as such codes plus its scales and zero points
(chosen automatically for quantized tensors). Techniques register their own in :data:`CODECS` and name them
per tensor when saving (their callbacks' ``export_codecs(net)``).

Example:
    >>> from lightning_micro.models import LeNet300
    >>> spec = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "lenet.safetensors"
    >>> size = save_compressed(LeNet300([1, 8, 8]), spec, path)
    >>> type(load_compressed(path)).__name__
    'LeNet300'
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lightning_micro.artifact.trust import Trusted, UntrustedSpecError, build
from lightning_micro.core import sparse_kernels, transforms
from lightning_micro.core.code_format import decode_codes, encode_codes
from lightning_micro.core.int8_backend import quantized_tensor_from_parts, quantized_tensor_parts
from lightning_micro.core.memory_layout import LAYOUTS, apply_layout
from lightning_micro.core.sparse_format import bitmask_decode, bitmask_encode

FORMAT = "lightning_micro.artifact/4"
# /3: no checksum, /2: no submodule either. Older formats load without the check (they were written before it).
READABLE_FORMATS = (FORMAT, "lightning_micro.artifact/3", "lightning_micro.artifact/2", "lightning_micro.artifact/1")


METADATA_KEY = "lightning_micro"  # format /4: all fields in one JSON metadata entry
ARTIFACT_NAME = "model.safetensors"  # the artifact's name in a run's directory


class ArtifactError(ValueError):
    """A file that is not a readable artifact: not safetensors, truncated, another format, or changed since export
    (its checksum does not match). The message names the file and what is wrong with it."""


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


def _is_packed_linear(value: Any) -> bool:
    """Whether ``value`` is torch's packed int8 linear weight (a ScriptObject FX convert creates for
    ``F.linear`` calls, kept in the converted network's state dict)."""
    return isinstance(value, torch.ScriptObject) and value._type().qualified_name().endswith(
        "quantized.LinearPackedParamsBase")


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
        elif _is_packed_linear(value):  # FX convert's int8 weight of a functional linear (timm's Linear)
            weight, bias = torch.ops.quantized.linear_unpack(value)
            values[key] = ["packed_linear"]
            tensors[f"{key}#weight"] = weight
            if bias is not None:
                tensors[f"{key}#bias"] = bias
        else:
            raise ValueError(f"state-dict entry {key} is a {type(value).__name__}, which the artifact cannot store")
    return tensors, values


def _unflatten_state(tensors: dict[str, torch.Tensor], values: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = OrderedDict(tensors)
    for key, (kind, *rest) in values.items():
        if kind == "dtype":
            dtype = getattr(torch, str(rest[0]), None)
            if not isinstance(dtype, torch.dtype):
                raise ArtifactError(f"state-dict entry {key} names {rest[0]!r}, which is not a torch dtype")
            state[key] = dtype
        elif kind == "none" and "#" not in key:
            state[key] = None
        elif kind == "versions":
            state._metadata = OrderedDict(rest[0])  # type: ignore[attr-defined]
        elif kind == "packed_linear":  # packed again from its stored int8 weight and float bias (no code is read)
            weight, bias = state.pop(f"{key}#weight", None), state.pop(f"{key}#bias", None)
            if weight is None or not weight.is_quantized:
                raise ArtifactError(f"state-dict entry {key} is a packed linear weight without its int8 weight")
            state[key] = torch.ops.quantized.linear_prepack(weight, bias)
    for key, (kind, *rest) in values.items():
        if kind == "tuple":
            state[key] = tuple(state.pop(f"{key}#{i}", None) for i in range(rest[0]))
    return state


def _checksum(tensors: Mapping[str, torch.Tensor], fields: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata fields (but the checksum) and every stored tensor's name, dtype, shape and bytes,
    in sorted order: any changed byte of what the loader reads changes it."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in fields.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"\ntensor:{name}:{str(tensor.dtype)}:{list(tensors[name].shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_compressed(
    net: nn.Module,
    net_spec: Mapping[str, Any],
    path: str | os.PathLike,
    codecs: Mapping[str, str] | None = None,
    record: transforms.Record | None = None,
    submodule: str = "",
    kernels: Mapping[str, Mapping[str, str]] | None = None,
    layout: str = "contiguous",
) -> int:
    """Write ``net`` as an artifact at ``path`` and return its size in bytes.

    Args:
        net: the network to store (its ``state_dict``).
        net_spec: config node that rebuilds the network's architecture (``_target_`` and plain arguments).
        path: file to create; an existing file is never overwritten.
        codecs: codec name per state-dict key; keys not named use ``dense`` (``qtensor`` if quantized).
        record: the structural transforms applied to the network built from ``net_spec`` (replayed on load).
        submodule: dotted name of the network inside the object ``net_spec`` builds (``""``: that object).
        kernels: the sparse kernel of each layer and batch size, as :func:`~lightning_micro.core.sparse_kernels.
            choose_kernels` gives them (replayed on load).
        layout: the memory layout the network runs in once loaded (``contiguous`` or ``channels_last``).

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
    fields = json.loads(json.dumps({"format": FORMAT, "net": dict(net_spec), "codecs": chosen,
                                    "transforms": list(record or []), "values": values, "submodule": submodule,
                                    "kernels": {k: dict(v) for k, v in (kernels or {}).items()},
                                    "layout": layout}))
    fields["checksum"] = _checksum(tensors, fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata entry, its JSON keys sorted: safetensors writes several entries in a random (hash) order, which
    # would make two exports of the same network differ in bytes.
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(fields, sort_keys=True)})
    return path.stat().st_size


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata fields and stored tensors of an artifact file, checked: readable, a known format, and (from
    format /4) matching its checksum."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = dict(handle.metadata() or {})
            stored = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own error types for a damaged header or data
        raise ArtifactError(f"{path} is not a readable artifact: {type(err).__name__}: {err}") from err
    try:
        if METADATA_KEY in raw:
            fields = json.loads(raw[METADATA_KEY])
        else:  # formats /1 to /3: one metadata entry per field, JSON-encoded but format and submodule
            fields = {key: json.loads(raw[key]) for key in ("net", "codecs", "transforms", "values") if key in raw}
            fields.update({key: raw[key] for key in ("format", "submodule") if key in raw})
    except (TypeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: its metadata is not valid JSON ({err})") from err
    if not isinstance(fields, dict) or fields.get("format") not in READABLE_FORMATS:
        found = fields.get("format") if isinstance(fields, dict) else None
        raise ArtifactError(f"{path} is not a lightning_micro artifact (format {found!r}, want {FORMAT})")
    if fields["format"] == FORMAT:
        recorded, computed = fields.get("checksum", ""), _checksum(stored, fields)
        if recorded != computed:
            raise ArtifactError(f"{path} was changed or damaged after export: its checksum does not match what it "
                                f"holds (recorded {str(recorded)[:16] or 'none'}..., computed {computed[:16]}...); "
                                "nothing was loaded")
    return {"transforms": [], "values": {}, "submodule": "", "codecs": {}, "kernels": {}, "layout": "contiguous",
            **fields}, stored


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's metadata (``format``, ``net``, ``codecs``, ``transforms``, ``values``, ``submodule``,
    ``kernels``, ``layout``), the file checked first (see :func:`load_compressed`)."""
    meta, _ = _read(path)
    keys = ("format", "net", "codecs", "transforms", "values", "submodule", "kernels", "layout")
    return {key: meta[key] for key in keys}


def load_compressed(path: str | os.PathLike, trusted: Iterable[Trusted] = (), sparse_kernels: str = "auto"
                    ) -> nn.Module:
    """Rebuild the network stored at ``path``, in eval mode, on the CPU: build it from its spec, replay its
    structural transforms, load its tensors (strictly: every key, every shape). An artifact of a user's own
    LightningModule rebuilds that module from its class path and saved init arguments and returns the network
    inside it (``submodule``).

    Loading never runs code from the file (:mod:`lightning_micro.artifact.trust`): the spec may name only a trusted
    class (the zoo, or what ``trusted`` names: classes, factories, class paths or module names) with plain
    arguments, and the file must match its checksum.

    Pruned ``Linear`` layers run the kernels the export measured fastest for them (``sparse_kernels="auto"``, the
    choice the artifact records; see :mod:`lightning_micro.core.sparse_kernels`); ``"always"`` gives every pruned
    one CSR kernels, ``"never"`` plain dense layers. A CNN whose export timed channels_last faster runs in that
    layout (the ``layout`` the artifact records; :mod:`lightning_micro.core.memory_layout`).

    Raises:
        ArtifactError: the file is not a readable artifact, it changed after export, or it records sparse kernels
            for layers the network does not have.
        ValueError: ``sparse_kernels`` is not one of ``auto``, ``always``, ``never``.
        UntrustedSpecError: the spec names something not trusted, or passes more than plain arguments.
    """
    meta, stored = _read(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in stored.items():
        name, _, suffix = key.rpartition("::")
        parts.setdefault(name, {})[suffix] = tensor
    state = {}
    for name, codec_name in meta["codecs"].items():
        if codec_name not in CODECS:
            raise ArtifactError(f"{path}: {name} uses codec {codec_name!r}, which this version does not know "
                                f"(known: {sorted(CODECS)})")
        if name not in parts:
            raise ArtifactError(f"{path}: {name} is listed in its codecs but no tensor of it is stored")
        state[name] = CODECS[codec_name].decode(parts[name])
    try:
        built = build(meta["net"], "artifact.net", trusted)
    except UntrustedSpecError as err:
        raise UntrustedSpecError(f"{path}: {err}") from err
    net = built.get_submodule(meta["submodule"]) if meta["submodule"] else built
    net = transforms.replay(net, meta["transforms"])
    state = _unflatten_state(state, meta["values"])
    for key in [k for k, v in state.items() if _is_packed_linear(v)]:
        # torch's converted GraphModule saves these but its loader only takes names starting "_packed_weight"
        # (a functional linear inside a submodule is "<module>_packed_weight_0"): set where the replay put them
        if not isinstance(getattr(net, key, None), torch.ScriptObject):
            raise ArtifactError(f"{path}: {key} is a packed linear weight the rebuilt network does not have")
        setattr(net, key, state.pop(key))
    net.load_state_dict(state, strict=True)
    if meta["layout"] not in LAYOUTS:
        raise ArtifactError(f"{path}: its layout {meta['layout']!r} is not one of {list(LAYOUTS)}")
    apply_layout(net, meta["layout"])
    return _with_kernels(net.eval(), meta["kernels"], sparse_kernels, path)


def _with_kernels(net: nn.Module, recorded: Mapping[str, Any], mode: str, path: str | os.PathLike) -> nn.Module:
    if mode not in sparse_kernels.MODES:
        raise ValueError(f"sparse_kernels must be one of {list(sparse_kernels.MODES)}, got {mode!r}")
    if mode == "never":
        return net
    if mode == "always":
        return sparse_kernels.apply_kernels(net, sparse_kernels.choose_kernels(net, [], mode="always"))
    if not isinstance(recorded, dict) or not all(isinstance(v, dict) for v in recorded.values()):
        raise ArtifactError(f"{path}: its sparse kernels are not a mapping of layer names to batch sizes")
    try:
        return sparse_kernels.apply_kernels(net, recorded)
    except ValueError as err:
        raise ArtifactError(f"{path}: {err}") from err
