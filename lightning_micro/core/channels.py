"""Channel (neuron / filter) pruning: which channels are coupled, how much each matters, masks and removal.

Three separate questions, as Torch-Pruning separates them:

- *Coupling* (:func:`channel_groups`): Torch-Pruning's ``DependencyGraph`` traces the network once and says which
  tensor dimensions must lose the same channels: a convolution's output channels, its BatchNorm's, the next
  layer's input channels (through a flatten, where one channel is ``H*W`` input features), every convolution
  writing into one residual sum, a depthwise convolution's input and output. Each :class:`ChannelGroup` keeps
  only the outcome, by module name and index, so nothing later needs the graph.
- *Importance* (:func:`channel_importance`): the L1 or L2 norm of each channel's filters, summed over the layers
  producing it, or the absolute BatchNorm scale (network slimming).
- *Masks and removal*: :func:`channel_masks` zeroes every tensor slice of a removed channel (filters, biases,
  BatchNorm scale and shift, the consumers' input slices), so the channel contributes exactly nothing;
  :func:`remove_channels` slices the same tensors away with :data:`CHANNEL_DIMS`, the same table, so the thinner
  network computes what the masked one did.
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

OUT, IN = "out", "in"
IMPORTANCES = ("l1", "l2", "bn_scale")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, _CONVS) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def channel_dims(module: nn.Module, side: str) -> list[tuple[str, int]] | None:
    """``[(tensor name, dim)]`` holding one channel of ``module`` on ``side`` (``"out"`` or ``"in"``); ``None``
    for a module whose channels this module cannot remove (a grouped, non-depthwise convolution, a transposed
    convolution, a layer type outside convolutions, Linear and BatchNorm)."""
    if isinstance(module, _NORMS):
        dims = [("weight", 0), ("bias", 0)] if module.affine else []
        return dims + ([("running_mean", 0), ("running_var", 0)] if module.track_running_stats else [])
    if isinstance(module, _CONVS) and not module.transposed:
        if _is_depthwise(module):  # one filter per channel: input and output channels are the same channels
            return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])
        if module.groups != 1:
            return None
    elif not isinstance(module, nn.Linear):
        return None
    if side == IN:
        return [("weight", 1)]
    return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])


@dataclass
class ChannelGroup:
    """Channels that must be removed together.

    Attributes:
        name: the first layer (in model order) producing the channels; overrides and messages use it.
        size: number of channels.
        members: ``[(module name, side, indices, root indices)]``: for each module dimension the group spans, the
            indices in that dimension and, aligned with them, the group channel each belongs to.
        producers: names of the Conv/Linear layers writing the channels (patterns select groups by these).
        unsupported: why the group's channels cannot be removed consistently (``""`` when they can).
        unit: ``"channel"``, or ``"head"`` for the attention heads of one attention module (each "channel" of
            the group is then a head: its query, key and value rows and its slice of the output projection).
    """

    name: str
    size: int
    members: list[tuple[str, str, list[int], list[int]]]
    producers: list[str] = field(default_factory=list)
    unsupported: str = ""
    unit: str = "channel"

    def member_indices(self, kept: Sequence[int]) -> dict[tuple[str, str], list[int]]:
        """``{(module, side): indices kept in that dimension}`` when the group keeps channels ``kept``."""
        keep = set(kept)
        return {(module, side): sorted(i for i, root in zip(idx, roots, strict=True) if root in keep)
                for module, side, idx, roots in self.members}


def channel_groups(net: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The coupled channel groups of ``net`` rooted at its Conv/Linear layers, in model order, found by
    Torch-Pruning's dependency graph on a copy of ``net`` (its BatchNorm statistics do not move). Groups whose
    channels no layer consumes (the network's outputs) are left out."""
    traced = copy.deepcopy(net).eval()
    names = {module: name for name, module in traced.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    device = next((p.device for p in traced.parameters()), torch.device("cpu"))
    graph, unmapped = _dependency_graph(traced, example_input.to(device))
    groups = []
    for root, group in _root_groups(graph):
        if group is None:  # Torch-Pruning failed following this layer's channels: they stay whole
            name = names[root]
            size = graph.get_pruner_of_module(root).get_out_channels(root)
            groups.append(ChannelGroup(name, size, [(name, OUT, list(range(size)), list(range(size)))], [name],
                                       "Torch-Pruning cannot follow its channels past a channel shuffle"))
            continue
        members = []
        unsupported = []
        shuffled = False
        for item in group:
            module = item.dep.target.module
            name = names.get(module)
            shuffled |= module in unmapped
            if name is None:  # an operation of the graph (addition, flatten), not a layer
                continue
            side = OUT if graph.is_out_channel_pruning_fn(item.dep.handler) else IN
            if channel_dims(module, side) is None:
                grouping = f", groups={module.groups}" if isinstance(module, _CONVS) else ""
                unsupported.append(f"{name} ({type(module).__name__}{grouping})")
            members.append((name, side, [int(i) for i in item.idxs], [int(r) for r in item.root_idxs]))
        members.sort(key=lambda m: (order[m[0]], m[1]))
        producers = [m[0] for m in members
                     if m[1] == OUT and isinstance(traced.get_submodule(m[0]), (*_CONVS, nn.Linear))]
        if not any(side == IN for _, side, _, _ in members) or not producers:
            continue  # the network's outputs
        size = len(set(members[0][3]))
        unsupported = list(dict.fromkeys(unsupported))
        more = f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else ""
        reason = (f"it couples {', '.join(unsupported[:3])}{more}, whose channels cannot be removed" if unsupported
                  else "")
        if not reason and shuffled:
            reason = "its channels pass a reshape whose channel order Torch-Pruning cannot follow (a channel shuffle)"
        if not reason and any(len(idx) != len(roots) or any(r >= size for r in roots)
                              for _, _, idx, roots in members):
            reason = "Torch-Pruning maps its channels inconsistently (a slice or a concatenation it cannot follow)"
        groups.append(ChannelGroup(producers[0], size, members, producers, reason))
    heads = head_groups(net)
    if heads:  # a head group replaces what the graph says of its projections' head dimensions
        split = {(m, side) for g in heads for m, side, _, _ in g.members}
        groups = [g for g in groups if not any((m, side) in split for m, side, _, _ in g.members)] + heads
    groups.sort(key=lambda g: order[g.name])
    return groups


# Torch-Pruning's index-mapping passes by node type, in the order its ``update_index_mapping`` runs them.
_INDEX_MAPPINGS = {"CONCAT": "concat", "SPLIT": "split", "RESHAPE": "reshape", "UNBIND": "unbind",
                   "EXPAND": "expand", "SLICE": "slice"}


def _dependency_graph(net: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's dependency graph of ``net`` and the graph operations whose channel index mapping it could
    not work out (``set`` of their modules; a group through one of them is left whole).

    Torch-Pruning maps channels through a reshape only for a flatten; on a channel shuffle's
    ``view(N, g, C/g, H, W)`` (ShuffleNetV2's) it divides by zero and the graph is lost. Here each node's mapping
    is set on its own, and a node it cannot map becomes an element-wise node in this graph (Torch-Pruning sets
    the mappings again for every group it builds), so the rest of the graph stays usable."""
    import torch_pruning as tp  # imported here: only channel pruning needs it
    from torch_pruning.dependency import index_mapping

    graph = tp.DependencyGraph()
    try:
        return graph.build_dependency(net, example_inputs=example_input), set()
    except Exception as err:  # noqa: BLE001 - Torch-Pruning fails in its own code on graphs it cannot map
        stack = traceback.extract_tb(err.__traceback__)
        if not any(Path(frame.filename).stem == "index_mapping" for frame in stack):
            where = stack[-1]
            raise ValueError(f"Torch-Pruning cannot trace the channel dependencies of {type(net).__name__} "
                             f"({type(err).__name__} in its {Path(where.filename).stem}.{where.name}); channel "
                             "pruning cannot run on it: use GMP (connections) or layer dropping instead") from err
    unmapped = set()  # the graph is traced and its dependencies built; only the last pass failed: redo it per node
    for module, node in graph.module2node.items():
        kind = _INDEX_MAPPINGS.get(node.type.name)
        if kind is None:
            continue
        try:
            getattr(index_mapping, f"update_{kind}_index_mapping")(graph, node)
        except Exception:  # noqa: BLE001 - as above; the groups through this node are left whole
            node.type = tp.ops.OPTYPE.ELEMENTWISE
            unmapped.add(module)
    return graph, unmapped


def _root_groups(graph):
    """``(root layer, Torch-Pruning group of its output channels)`` for every Conv/Linear not already in an earlier
    group, in graph order, as ``DependencyGraph.get_all_groups`` yields them; the group is ``None`` where building it
    failed inside Torch-Pruning (its index mappings past a node it could not map)."""
    visited = set()
    for module in list(graph.module2node):
        if not isinstance(module, (*_CONVS, nn.Linear)) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception:  # noqa: BLE001 - Torch-Pruning fails in its own code on mappings it cannot follow
            visited.add(module)
            yield module, None
            continue
        visited.update(item.dep.target.module for item in group
                       if graph.is_out_channel_pruning_fn(item.dep.handler))
        yield module, group


# --- attention heads -----------------------------------------------------------------------------------------

def attention_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of the multi-head attention modules of ``net`` in the fused-projection form the
    zoo's ``VisionTransformer`` and timm's ``Attention`` share: a ``qkv`` Linear writing ``[q | k | v]``, each
    head-major, a ``proj`` Linear reading the heads' outputs in head order, and an integer ``head_dim``. A
    normalization between the heads and ``proj`` (timm's ``scale_norm``) or a gate leaves a module out."""
    found = []
    for name, module in net.named_modules():
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        head_dim = getattr(module, "head_dim", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(head_dim, int)):
            continue
        plain = (isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)
                 and getattr(module, "gate", None) is None)
        if plain and head_dim > 0 and qkv.out_features == 3 * proj.in_features and proj.in_features % head_dim == 0:
            found.append((name, module))
    return found


def head_groups(net: nn.Module) -> list[ChannelGroup]:
    """One group per attention module of :func:`attention_modules`: its heads, each removed with its query, key
    and value rows of ``qkv`` and its input columns of ``proj``."""
    groups = []
    for name, module in attention_modules(net):
        prefix = f"{name}." if name else ""
        width, head_dim = module.proj.in_features, module.head_dim
        heads = width // head_dim
        rows = [part * width + h * head_dim + d for part in range(3) for h in range(heads) for d in range(head_dim)]
        row_heads = [h for _ in range(3) for h in range(heads) for _ in range(head_dim)]
        columns = list(range(width))
        members = [(prefix + "qkv", OUT, rows, row_heads),
                   (prefix + "proj", IN, columns, [c // head_dim for c in columns])]
        groups.append(ChannelGroup(name or "attention", heads, members, [prefix + "qkv"], unit="head"))
    return groups


def _set_head_counts(net: nn.Module) -> None:
    """After a removal: the head count and width an attention module stores (timm's ``num_heads`` and
    ``attn_dim``) follow its projections (the zoo's ``Attention`` reads them from ``qkv``)."""
    for _, module in attention_modules(net):
        heads = module.proj.in_features // module.head_dim
        if isinstance(getattr(module, "num_heads", None), int):
            module.num_heads = heads
        if isinstance(getattr(module, "attn_dim", None), int):
            module.attn_dim = heads * module.head_dim


# --- importance -----------------------------------------------------------------------------------------------

def channel_importance(net: nn.Module, group: ChannelGroup, importance: str) -> torch.Tensor:
    """One score per channel of ``group`` (higher: more important).

    ``l1`` / ``l2``: the norm of the channel's filters (its weights in every Conv/Linear layer writing it, all
    of them together). ``bn_scale``: the absolute BatchNorm scale
    (summed over the group's BatchNorms).
    """
    scores = torch.zeros(group.size, dtype=torch.float64)
    for name, side, idx, roots in group.members:
        if side != OUT:
            continue
        module = net.get_submodule(name)
        is_norm = isinstance(module, _NORMS)
        if importance == "bn_scale" and not is_norm:
            continue
        if is_norm and (importance != "bn_scale" or not module.affine):
            continue
        weight = module.weight.detach().to(torch.float64)
        dim = channel_dims(module, side)[0][1]
        rows = weight.index_select(dim, torch.tensor(idx, device=weight.device)).movedim(dim, 0).reshape(len(idx), -1)
        per_index = rows.abs().sum(1) if importance in ("l1", "bn_scale") else rows.pow(2).sum(1)
        scores.index_add_(0, torch.tensor(roots), per_index.cpu())
    return scores.sqrt() if importance == "l2" else scores


def kept_count(size: int, ratio: float, min_channels: int, round_to: int) -> int:
    """Channels a group of ``size`` keeps when ``ratio`` of them are to go: ``size * (1 - ratio)`` rounded to the
    nearest multiple of ``round_to``, at least ``min_channels`` (and one multiple), at most ``size``.

    Example:
        >>> kept_count(50, 0.65, 1, 8), kept_count(20, 0.65, 1, 8), kept_count(16, 0.5, 1, 1)
        (16, 8, 8)
    """
    kept = size * (1.0 - ratio)
    if round_to > 1:
        kept = max(round_to, round_to * math.floor(kept / round_to + 0.5))
    return int(min(size, max(min_channels, math.ceil(kept - 1e-9) if round_to == 1 else kept)))


def select_channels(scores: Sequence[torch.Tensor], counts: Sequence[int], alive: Sequence[Sequence[int]]
                    ) -> list[list[int]]:
    """For each group, the ``count`` most important of its ``alive`` channels (ties broken by index), sorted:
    a channel once removed never comes back."""
    kept = []
    for score, count, live in zip(scores, counts, alive, strict=True):
        live = sorted(live)
        count = min(count, len(live))
        order = sorted(live, key=lambda i: (-float(score[i]), i))
        kept.append(sorted(order[:count]))
    return kept


def global_counts(scores: Sequence[torch.Tensor], alive: Sequence[Sequence[int]], ratio: float,
                  fixed: Mapping[int, int], floors: Sequence[int]) -> list[int]:
    """Channels kept per group when ``ratio`` of all channels go by one ranking: each group's scores divided by
    their mean (so layers of different scale compare), the lowest removed first; groups in ``fixed`` (index ->
    count) keep their own count, and none goes below its floor."""
    sizes = [len(s) for s in scores]
    free = [g for g in range(len(scores)) if g not in fixed]
    to_keep = sum(sizes[g] for g in free) - int(round(ratio * sum(sizes[g] for g in free)))
    counts = [fixed.get(g, floors[g]) for g in range(len(scores))]
    ranked = []
    for g in free:
        live = sorted(alive[g])
        norm = scores[g][live].mean().clamp_min(1e-12) if live else 1.0
        ranked += [(-float(scores[g][i] / norm), g, i) for i in live]
    ranked.sort()
    taken = {g: 0 for g in free}
    total = sum(floors[g] for g in free)  # the floors are kept whatever the ranking says
    for _, g, _ in ranked:
        if taken[g] < floors[g]:  # within its floor: already counted
            taken[g] += 1
        elif total < to_keep:
            taken[g] += 1
            total += 1
    return [counts[g] if g in fixed else max(floors[g], taken[g]) for g in range(len(scores))]


# --- masks and removal -----------------------------------------------------------------------------------------

def channel_masks(net: nn.Module, groups: Sequence[ChannelGroup], kept: Sequence[Sequence[int]]
                  ) -> dict[str, torch.Tensor]:
    """``{tensor name: bool mask}`` (parameters and BatchNorm statistics of ``net``) that zero every slice of the
    channels not in ``kept`` (one list per group); tensors a group does not touch are absent."""
    masks: dict[str, torch.Tensor] = {}
    for group, keep in zip(groups, kept, strict=True):
        if len(keep) == group.size:
            continue
        dropped = sorted(set(range(group.size)) - set(keep))
        for (module_name, side), indices in group.member_indices(dropped).items():
            module = net.get_submodule(module_name)
            for tensor_name, dim in channel_dims(module, side):
                if tensor_name.startswith("running_"):
                    continue  # statistics do not reach the output once scale and shift are zero
                full = f"{module_name}.{tensor_name}" if module_name else tensor_name
                tensor = getattr(module, tensor_name)
                mask = masks.setdefault(full, torch.ones_like(tensor, dtype=torch.bool))
                mask.index_fill_(dim, torch.tensor(indices, device=mask.device, dtype=torch.long), False)
    return masks


def removal_plan(net: nn.Module, groups: Sequence[ChannelGroup], kept: Sequence[Sequence[int]]
                 ) -> dict[str, dict[str, list[int]]]:
    """The plain record of a removal: ``{module name: {"out"/"in": indices kept}}`` for every module a group
    shrinks (groups keeping every channel are left out). A dimension several groups meet in (the input of a
    layer after a concatenation) keeps every index that none of them removes."""
    removed: dict[tuple[str, str], set[int]] = {}
    for group, keep in zip(groups, kept, strict=True):
        if len(keep) == group.size:
            continue
        dropped = sorted(set(range(group.size)) - set(keep))
        for key, indices in group.member_indices(dropped).items():
            removed.setdefault(key, set()).update(indices)
    plan: dict[str, dict[str, list[int]]] = {}
    for (module_name, side), gone in removed.items():
        size = channel_count(net.get_submodule(module_name), side)
        plan.setdefault(module_name, {})[side] = [i for i in range(size) if i not in gone]
    return plan


def channel_count(module: nn.Module, side: str) -> int:
    """How many channels ``module`` has on ``side``."""
    if isinstance(module, _NORMS):
        return module.num_features
    if isinstance(module, _CONVS):
        return module.out_channels if side == OUT or _is_depthwise(module) else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if side == OUT else module.in_features
    raise ValueError(f"{type(module).__name__} has no channels this module can count")


def check_removable(net: nn.Module, groups: Sequence[ChannelGroup], example_input: torch.Tensor
                    ) -> list[ChannelGroup]:
    """``groups`` with the ones whose removal breaks the network marked ``unsupported``: each group loses one
    channel on a copy of ``net``, which must still run ``example_input`` and compute what a copy with the same
    channels masked computes (all groups at once first; one by one only when that fails). What a dependency graph
    cannot see fails here: a reshape into attention heads with the head count written into the code, a slice of
    a concatenation (GhostNet's ``out[:, :oup]``), a channel reordering it takes for an element-wise operation (a
    ``flip`` or ``roll`` of the channels)."""
    def runs(chosen: Sequence[ChannelGroup]) -> str:
        kept = [list(range(1, g.size)) for g in chosen]
        try:
            thin = remove_channels(copy.deepcopy(net).eval(), removal_plan(net, chosen, kept))
            masked = copy.deepcopy(net).eval()
            state = masked.state_dict()
            with torch.no_grad():
                for name, mask in channel_masks(masked, chosen, kept).items():
                    state[name].mul_(mask)
                got, expected = thin(example_input), masked(example_input)
        except Exception as err:  # noqa: BLE001 - any failure of the thinner network is the group's verdict
            failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            return f"the network no longer runs once its channels are removed ({failure})"
        if (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
                and not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()) + 1e-6)):
            return ("once its channels are removed, the network computes differently from the masked one (largest "
                    f"difference {float((got - expected).abs().max()):.3g}: its channels are reordered on their way)")
        return ""

    candidates = [g for g in groups if not g.unsupported and g.size > 1]
    if not candidates or not runs(candidates):
        return list(groups)
    for group in candidates:
        failure = runs([group])
        if failure:
            group.unsupported = failure
    return list(groups)


def tensor_slices(net: nn.Module, plan: Mapping[str, Mapping[str, Sequence[int]]]
                  ) -> dict[str, list[tuple[int, list[int]]]]:
    """``{tensor name: [(dim, indices kept)]}`` of a removal ``plan`` on ``net`` (before the removal): what an
    optimizer's state must be sliced by to follow the parameters."""
    slices: dict[str, list[tuple[int, list[int]]]] = {}
    for module_name, sides in plan.items():
        module = net.get_submodule(module_name)
        depthwise = _is_depthwise(module)
        for side, indices in sides.items():
            if depthwise and side == IN:
                continue  # the same channels as its output
            dims = channel_dims(module, side)
            if dims is None:
                raise ValueError(f"{module_name} is a {type(module).__name__} whose channels cannot be removed")
            for tensor_name, dim in dims:
                full = f"{module_name}.{tensor_name}" if module_name else tensor_name
                slices.setdefault(full, []).append((dim, list(indices)))
    return slices


def remove_channels(net: nn.Module, plan: Mapping[str, Mapping[str, Sequence[int]]]) -> nn.Module:
    """Slice ``net`` in place to the channels ``plan`` keeps (:func:`removal_plan`) and return it: a smaller
    dense network. Parameters become new ``nn.Parameter`` objects; an optimizer built before must be rebuilt."""
    for tensor_name, cuts in tensor_slices(net, plan).items():
        module_name, _, attr = tensor_name.rpartition(".")
        module = net.get_submodule(module_name) if module_name else net
        tensor = getattr(module, attr)
        value = tensor.detach()
        for dim, indices in cuts:
            value = value.index_select(dim, torch.tensor(indices, dtype=torch.long, device=value.device))
        value = value.contiguous()
        if isinstance(tensor, nn.Parameter):
            setattr(module, attr, nn.Parameter(value, requires_grad=tensor.requires_grad))
        else:
            module._buffers[attr] = value
    for module_name, sides in plan.items():
        _set_sizes(net.get_submodule(module_name), {side: len(indices) for side, indices in sides.items()})
    _set_head_counts(net)
    return net


def _set_sizes(module: nn.Module, sizes: Mapping[str, int]) -> None:
    if isinstance(module, _NORMS):
        module.num_features = sizes.get(OUT, sizes.get(IN))
    elif isinstance(module, _CONVS):
        if _is_depthwise(module):
            n = sizes.get(OUT, sizes.get(IN))
            module.in_channels = module.out_channels = module.groups = n
        else:
            module.out_channels = sizes.get(OUT, module.out_channels)
            module.in_channels = sizes.get(IN, module.in_channels)
    elif isinstance(module, nn.Linear):
        module.out_features = sizes.get(OUT, module.out_features)
        module.in_features = sizes.get(IN, module.in_features)
