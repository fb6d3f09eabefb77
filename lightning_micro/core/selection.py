"""Pick parameters by fully-qualified name pattern and module type, as YAML can say it.

A pattern is a glob (``fc*.weight``, ``features.*``) or, with the ``re:`` prefix, a regular expression matched
against the whole name (``re:.*fc[12]\\.weight``). Module types are class names (``Linear``, ``Conv2d``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

# Modules that read a child's weight themselves instead of calling the child: replacing or wrapping that child
# does not change what they compute (nn.MultiheadAttention passes out_proj.weight to its functional forward;
# nn.TransformerEncoderLayer's inference fast path passes linear1's, linear2's and its norms' weights to one kernel).
READS_CHILD_WEIGHTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


def read_by_parent(net: nn.Module, name: str) -> str | None:
    """Why the layer ``name`` cannot be swapped or wrapped in ``net`` (its parent reads its weight directly), or
    ``None`` when it can."""
    parent_name = name.rpartition(".")[0]
    parent = net.get_submodule(parent_name) if parent_name else net
    if isinstance(parent, READS_CHILD_WEIGHTS):
        return f"its parent {type(parent).__name__} reads its weight directly instead of calling it"
    return None


def name_matches(name: str, pattern: str) -> bool:
    """Whether a fully-qualified name matches a glob or ``re:`` pattern."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` for a ``re:`` pattern that is not a valid regular expression."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {err}") from err


def is_of_type(module: nn.Module, type_names: Iterable[str]) -> bool:
    """Whether ``module``'s class, or one of its base classes, has one of the names ``type_names``."""
    names = set(type_names)
    return any(cls.__name__ in names for cls in type(module).__mro__)


def select_parameters(
    net: nn.Module,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    module_types: Iterable[str] = ("Linear", "Conv1d", "Conv2d", "Conv3d"),
    parameter_names: Iterable[str] = ("weight",),
) -> list[str]:
    """Fully-qualified names of the parameters named ``parameter_names`` (default: ``weight``) of modules of
    ``module_types`` (a class or a base class of that name: a fake-quantized ``Linear`` is a ``Linear``), whose
    name matches a pattern of ``include`` and none of ``exclude``; in model order."""
    types = set(module_types)
    names = set(parameter_names)
    chosen = []
    for module_name, module in net.named_modules():
        if not is_of_type(module, types):
            continue
        # A layer whose weights are not one `weight` (a TT layer's cores) names them in `prunable_parameters`.
        prunable = getattr(type(module), "prunable_parameters", None)
        own = (module.named_parameters(recurse=False) if prunable is None else
               ((n, p) for n, p in module.named_parameters() if n.split(".")[0] in prunable))
        for param_name, _ in own:
            full = f"{module_name}.{param_name}" if module_name else param_name
            wanted = param_name in names or prunable is not None
            if wanted and any(name_matches(full, p) for p in include) and not any(
                name_matches(full, p) for p in exclude
            ):
                chosen.append(full)
    return chosen


def output_layers(net: nn.Module, example_input, module_types: Iterable[str] = ("Linear", "Conv2d")) -> list[str]:
    """Names of the layers (of ``module_types``) that write the network's output: of one forward pass of
    ``example_input``, the last layer called whose output has the network output's batch and channel sizes
    (the classifier of a CNN or a transformer, the last 1x1 convolution of a fully convolutional one). Empty
    when no such layer runs."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(
        lambda _m, _args, out, name=name: calls.append((name, tuple(out.shape))) if torch.is_tensor(out) else None)
        for name, module in net.named_modules() if name and is_of_type(module, module_types)]
    was_training = net.training
    try:
        with torch.no_grad():
            output = net.eval()(example_input)
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    if not torch.is_tensor(output) or output.dim() < 2:
        return []
    matching = [name for name, shape in calls if len(shape) >= 2 and shape[:2] == tuple(output.shape[:2])]
    return matching[-1:]
