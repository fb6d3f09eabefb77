"""Depth: the residual blocks of a network that can be skipped whole, the drop probabilities of layer dropping,
which blocks to remove, and skipping them.

A block is *droppable* when skipping it (its output replaced by its input) leaves a network that still runs: its
output has its input's shape, and it adds its input back (``x + f(x)``, or ``relu(x + f(x))`` where the input
is already non-negative). :func:`droppable_blocks` finds them: a module declares it (a ``droppable`` attribute),
or its traced graph shows it (``torch.fx``: the output is an addition of the input, possibly through an
``nn.Identity`` shortcut and a final ReLU), and the example input confirms the shapes. A network with no such
block (a transformer, whose blocks add two residuals in one forward; ShuffleNet; SqueezeNet) offers the
shape-preserving blocks of its sequences instead (:func:`sequence_layers`). Users name others by pattern
(:func:`named_blocks`); a block that changes shape is refused either way.

Pure functions of modules and tensors: no Lightning here.
"""

from __future__ import annotations

import contextlib
import math
import operator
import types
from collections.abc import Collection, Iterator, Mapping, Sequence

import torch
from torch import nn

from lightning_micro.core.selection import name_matches

DROP_RULES = ("uniform", "linear")  # LayerDrop's one probability; stochastic depth's p_l = (l / L) p_L
REMOVAL_RULES = ("every_other", "least_important")

SEQUENCES = (nn.Sequential, nn.ModuleList)  # containers whose children run one after another
_ADDS = {operator.add, operator.iadd, torch.add}
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_ACTIVATION_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6}


def _adds_input_back(module: nn.Module) -> bool:
    """Whether ``module``'s traced graph returns ``input + f(input)`` (an ``nn.Identity`` shortcut counts as the
    input; a ReLU around the sum is allowed). Modules FX cannot trace are not droppable by this test."""
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - control flow on tensors, unsupported ops: not recognized, not an error
        return False
    inputs = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph_module.graph.nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1 or not isinstance(outputs[0].args[0], torch.fx.Node):
        return False

    def unwrap(node: torch.fx.Node) -> torch.fx.Node:  # through identities and a final activation
        while isinstance(node, torch.fx.Node) and node.args and isinstance(node.args[0], torch.fx.Node) and (
            (node.op == "call_module" and isinstance(graph_module.get_submodule(node.target),
                                                     (nn.Identity, *_ACTIVATIONS)))
            or (node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("relu", "relu_"))
        ):
            node = node.args[0]
        return node

    total = unwrap(outputs[0].args[0])
    is_add = (total.op == "call_function" and total.target in _ADDS) or (
        total.op == "call_method" and total.target in ("add", "add_"))
    if not is_add:
        return False
    return any(isinstance(arg, torch.fx.Node) and unwrap(arg) is inputs[0] for arg in total.args[:2])


def _call_shapes(net: nn.Module, names: Sequence[str], example_input: torch.Tensor
                 ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{name: (input shape, output shape)}`` of the modules ``names`` called in one forward pass of
    ``example_input``, in call order (a module called twice keeps its first call)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple, output: object, name: str = name) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                shapes[name] = (tuple(args[0].shape), tuple(output.shape))
        handles.append(net.get_submodule(name).register_forward_hook(hook))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example_input)
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _outermost(names: Sequence[str]) -> list[str]:
    return [n for n in names if not any(n.startswith(other + ".") for other in names if other != n)]


def droppable_blocks(net: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the blocks of ``net`` that can be skipped whole, in the order the forward pass calls them.

    A module declaring ``droppable = True`` (or ``False``) is taken at its word; any other module with children is
    traced and kept when it adds its input back (see the module docstring). Blocks inside a droppable block are
    left out, and so is a block whose output shape differs from its input's or that the forward pass never calls.
    A network with no such block gets its :func:`sequence_layers` instead.
    """
    candidates = []
    for name, module in net.named_modules():
        if not name:
            continue
        declared = getattr(module, "droppable", None)
        if declared is not None:
            if bool(declared):
                candidates.append(name)
        elif any(True for _ in module.children()) and _adds_input_back(module):
            candidates.append(name)
    shapes = _call_shapes(net, _outermost(candidates), example_input)
    found = [name for name, (shape_in, shape_out) in shapes.items() if shape_in == shape_out]
    return found or sequence_layers(net, example_input)


def sequence_layers(net: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the shape-preserving layers of ``net``'s sequences, in call order: each child of an
    ``nn.Sequential`` or ``nn.ModuleList`` that has layers of its own (a block, not a bare activation) and whose
    output has its input's shape (outermost first). These are the blocks of a network without residual additions
    that layer dropping can skip whole: a transformer's encoder layers (torch's ``TransformerEncoderLayer``, timm's
    ``Block``, whose two residual additions inside one forward the tracing test does not take), ShuffleNet's
    stride-1 units (channel split, branch, concat, shuffle), SqueezeNet's Fire modules that keep their width.

    An ``nn.TransformerEncoder`` is never a block itself (its layers are), and its first layer is left out: torch's
    encoder reads ``layers[0].self_attn`` in its own forward, so that one cannot be replaced."""
    names = []
    for name, module in net.named_modules():
        if not isinstance(module, SEQUENCES):
            continue
        for child_name, child in module.named_children():
            if any(True for _ in child.children()) and not isinstance(child, nn.TransformerEncoder):
                names.append(f"{name}.{child_name}" if name else child_name)
    kept_first = {f"{name}.layers.0" if name else "layers.0" for name, module in net.named_modules()
                  if isinstance(module, nn.TransformerEncoder)}
    shapes = _call_shapes(net, [n for n in _outermost(names) if n not in kept_first], example_input)
    return [name for name, (shape_in, shape_out) in shapes.items() if shape_in == shape_out]


def named_blocks(net: nn.Module, patterns: Sequence[str], example_input: torch.Tensor,
                 reshaping: Collection[str] = ()) -> list[str]:
    """The modules of ``net`` matching ``patterns`` (glob or ``re:``), as the blocks to drop, in call order
    (``reshaping``: blocks allowed to change shape, since a shortcut replaces them).

    A module inside another matched one is left out (``layer1.*`` selects ``layer1``'s blocks, not their layers).

    Raises:
        ValueError: a pattern matching no module, a block the forward pass does not call, or one whose output
            shape differs from its input's (skipping it cannot give its output).
    """
    names = [n for n, _ in net.named_modules() if n]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if name_matches(n, pattern)]
        if not matched:
            raise ValueError(f"blocks: pattern {pattern!r} matches no module of {type(net).__name__}")
        chosen += [n for n in matched if n not in chosen]
    chosen = _outermost(chosen)  # "layer1.*" names layer1's blocks, not also the layers inside them
    shapes = _call_shapes(net, chosen, example_input)
    for name in chosen:
        if name not in shapes:
            raise ValueError(f"blocks: {name!r} is not called with a tensor in the forward pass; it cannot be skipped")
        shape_in, shape_out = shapes[name]
        if shape_in != shape_out and name not in reshaping:
            raise ValueError(f"blocks: {name!r} maps {list(shape_in)} to {list(shape_out)}; skipping it would not "
                             "give its output shape, so it is not droppable as it is: name the submodule that "
                             "replaces it in `shortcuts` (e.g. {'" + name + "': 'shortcut'})")
    return list(shapes)


def shortcut_blocks(net: nn.Module, shortcuts: Mapping[str, str], example_input: torch.Tensor) -> dict[str, str]:
    """``{block: shortcut}`` for the modules matching each pattern of ``shortcuts`` (``{block pattern: name of
    the submodule that replaces the block when it is skipped}``, e.g. ResNet's projection ``shortcut``): blocks
    that change shape may be dropped this way, the shortcut giving their output shape.

    Raises:
        ValueError: a pattern matching no module, a block without that submodule, or a shortcut whose output shape
            is not the block's.
    """
    names = [n for n, _ in net.named_modules() if n]
    chosen: dict[str, str] = {}
    for pattern, shortcut in shortcuts.items():
        matched = _outermost([n for n in names if name_matches(n, pattern)])
        if not matched:
            raise ValueError(f"shortcuts: pattern {pattern!r} matches no module of {type(net).__name__}")
        for name in matched:
            if f"{name}.{shortcut}" not in names:
                raise ValueError(f"shortcuts: {name!r} has no submodule {shortcut!r} to run in its place")
            chosen.setdefault(name, str(shortcut))
    shapes = _call_shapes(net, [*chosen, *(f"{n}.{s}" for n, s in chosen.items())], example_input)
    for name, shortcut in chosen.items():
        if name not in shapes or f"{name}.{shortcut}" not in shapes:
            raise ValueError(f"shortcuts: {name!r} or its {shortcut!r} is not called with a tensor in the forward pass")
        if shapes[name][1] != shapes[f"{name}.{shortcut}"][1]:
            raise ValueError(f"shortcuts: {name!r} gives {list(shapes[name][1])} but its {shortcut!r} gives "
                             f"{list(shapes[f'{name}.{shortcut}'][1])}; the shortcut must give the block's shape")
    return {name: chosen[name] for name in shapes if name in chosen}  # in call order


def call_order(net: nn.Module, names: Sequence[str], example_input: torch.Tensor) -> list[str]:
    """``names`` in the order a forward pass of ``example_input`` first calls them."""
    return list(_call_shapes(net, names, example_input))


# The libraries' own stochastic-depth modules, by class name and the attribute holding their drop probability
# (torchvision.ops.StochasticDepth, timm.layers.DropPath): recognised without importing either library.
OWN_STOCHASTIC_DEPTH = {"StochasticDepth": "p", "DropPath": "drop_prob"}


def own_stochastic_depth(net: nn.Module, blocks: Sequence[str]) -> dict[str, float]:
    """``{module name: drop probability}`` of the libraries' own stochastic-depth modules (with a probability
    above 0) inside the blocks ``blocks`` of ``net``: they drop a block's branch per sample, which a technique
    dropping whole blocks replaces."""
    prefixes = tuple(f"{b}." for b in blocks)
    found = {}
    for name, module in net.named_modules():
        attribute = OWN_STOCHASTIC_DEPTH.get(type(module).__name__)
        if attribute is not None and name.startswith(prefixes):
            p = getattr(module, attribute, 0.0)
            if isinstance(p, (int, float)) and p > 0:
                found[name] = float(p)
    return found


def turn_off_stochastic_depth(net: nn.Module, names: Sequence[str]) -> None:
    """Set the drop probability of the stochastic-depth modules ``names`` (of :func:`own_stochastic_depth`) to 0."""
    for name in names:
        module = net.get_submodule(name)
        setattr(module, OWN_STOCHASTIC_DEPTH[type(module).__name__], 0.0)


def drop_probabilities(count: int, p: float, rule: str) -> list[float]:
    """Each of ``count`` blocks' drop probability, in depth order: ``uniform`` gives every block ``p``
    (LayerDrop); ``linear`` gives the l-th of L blocks ``(l / L) p`` (stochastic depth's rule, the deepest block
    ``p``)."""
    if rule == "uniform":
        return [p] * count
    if rule == "linear":
        return [p * (index + 1) / count for index in range(count)]
    raise ValueError(f"rule must be one of {list(DROP_RULES)}, got {rule!r}")


def every_other(count: int, remove: int) -> list[int]:
    """Indices of ``remove`` of ``count`` blocks spread evenly over the depth: LayerDrop's "every other layer"
    when half are removed (1, 3, 5, ... of 0..count-1), the middle of each of ``remove`` equal spans otherwise."""
    if not 0 <= remove <= count:
        raise ValueError(f"cannot remove {remove} of {count} blocks")
    return sorted({min(count - 1, math.floor((i + 0.5) * count / remove)) for i in range(remove)})


def least_important(losses: dict[str, float], remove: int) -> list[str]:
    """The ``remove`` blocks whose skipping raised the loss least (``losses``: block name -> loss with that block
    skipped), ties broken by depth order."""
    order = sorted(range(len(losses)), key=lambda i: (list(losses.values())[i], i))
    names = list(losses)
    return [names[i] for i in sorted(order[:remove])]


# --- skipping ---------------------------------------------------------------------------------------------------
#
# A block being dropped gets an instance ``forward`` (bound with types.MethodType, so deep copies bind to the
# copy) that reads, in training, the block's ``_layerdrop_factor``: None runs the block as written; 0 skips it
# (its input is its output, or its shortcut's output when the block names one in ``_layerdrop_shortcut``); any
# other f gives ``skip + f * (block(x) - skip)`` (the kept block, rescaled). ``_layerdrop_compute`` makes a skipped
# block still run with factor 0, so every parameter takes part in the graph (DDP needs that). In eval the block
# runs as written, its residual scaled by ``_layerdrop_eval_scale`` when set (stochastic depth's survival
# probability).

_STATE = ("forward", "_layerdrop_factor", "_layerdrop_compute", "_layerdrop_shortcut", "_layerdrop_eval_scale")


def _bypass(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    shortcut = block.__dict__.get("_layerdrop_shortcut")
    return block.get_submodule(shortcut)(x) if shortcut else x


def _dropping_forward(self: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    if not self.training:
        out = type(self).forward(self, x, *args, **kwargs)
        scale = self.__dict__.get("_layerdrop_eval_scale")
        if scale is None or scale == 1.0:
            return out
        skip = _bypass(self, x)
        return skip + scale * (out - skip)
    factor = self.__dict__.get("_layerdrop_factor")
    if factor is None:
        return type(self).forward(self, x, *args, **kwargs)
    if factor == 0.0 and not self.__dict__.get("_layerdrop_compute", False):
        return _bypass(self, x)
    out = type(self).forward(self, x, *args, **kwargs)
    if factor == 1.0:
        return out
    skip = _bypass(self, x)
    return skip + factor * (out - skip)


def _skipped_forward(self: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return _bypass(self, x)


def make_droppable(net: nn.Module, names: Sequence[str], compute_skipped: bool = False,
                   shortcuts: Mapping[str, str] | None = None, eval_scales: Mapping[str, float] | None = None
                   ) -> None:
    """Let the blocks ``names`` be skipped while training (:func:`set_drop_factors`); in eval they run, their
    residual scaled by ``eval_scales[name]`` where given. A block named in ``shortcuts`` runs that submodule of
    itself when skipped instead of passing its input through."""
    for name in names:
        block = net.get_submodule(name)
        block.forward = types.MethodType(_dropping_forward, block)
        block._layerdrop_factor = None
        block._layerdrop_compute = compute_skipped
        block._layerdrop_shortcut = (shortcuts or {}).get(name)
        block._layerdrop_eval_scale = (eval_scales or {}).get(name)


@contextlib.contextmanager
def unscaled(net: nn.Module, names: Sequence[str]) -> Iterator[nn.Module]:
    """Inside the block the droppable blocks ``names`` run in eval as written, without their eval scaling: as
    the network runs once blocks are removed."""
    saved = {}
    for name in names:
        block = net.get_submodule(name)
        if "_layerdrop_eval_scale" in block.__dict__:
            saved[name] = block.__dict__.pop("_layerdrop_eval_scale")
    try:
        yield net
    finally:
        for name, scale in saved.items():
            net.get_submodule(name)._layerdrop_eval_scale = scale


def undo_droppable(net: nn.Module, names: Sequence[str]) -> None:
    """Give the blocks ``names`` their own forward again (those still in ``net``)."""
    for name in names:
        try:
            block = net.get_submodule(name)
        except AttributeError:
            continue
        for attr in _STATE:
            block.__dict__.pop(attr, None)


def set_drop_factors(net: nn.Module, factors: dict[str, float | None]) -> None:
    """Set each droppable block's factor for the next training forward (0: skipped)."""
    for name, factor in factors.items():
        net.get_submodule(name)._layerdrop_factor = factor


@contextlib.contextmanager
def skipping(net: nn.Module, names: Sequence[str], shortcuts: Mapping[str, str] | None = None
             ) -> Iterator[nn.Module]:
    """Inside the block the modules ``names`` pass their input through (or run their shortcut, for those in
    ``shortcuts``), in training and in eval alike."""
    saved = {}
    for name in names:
        block = net.get_submodule(name)
        saved[name] = {attr: block.__dict__[attr] for attr in ("forward", "_layerdrop_shortcut")
                       if attr in block.__dict__}
        block.forward = types.MethodType(_skipped_forward, block)
        block._layerdrop_shortcut = (shortcuts or {}).get(name)
    try:
        yield net
    finally:
        for name, state in saved.items():
            block = net.get_submodule(name)
            for attr in ("forward", "_layerdrop_shortcut"):
                block.__dict__.pop(attr, None)
            block.__dict__.update(state)


def remove_blocks(net: nn.Module, names: Sequence[str], shortcuts: Mapping[str, str] | None = None) -> nn.Module:
    """Replace the blocks ``names`` by :class:`PassThrough` (an ``nn.Identity``; or by their shortcut submodule, for
    those in ``shortcuts``): a shallower network whose outputs equal ``net``'s with those blocks skipped."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        if not hasattr(parent, child):
            raise ValueError(f"{name!r} is not a module of {type(net).__name__}")
        shortcut = (shortcuts or {}).get(name)
        setattr(parent, child, getattr(parent, child).get_submodule(shortcut) if shortcut else PassThrough())
    return net


class PassThrough(nn.Identity):
    """What a removed block becomes: its input, whatever else its caller passes (torch's ``TransformerEncoder``
    calls each layer with masks as keyword arguments)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x
