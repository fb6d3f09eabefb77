"""Argument checks and helpers shared by the compression callbacks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from lightning_micro.core.schedules import STEP_PREFIX
from lightning_micro.core.selection import check_pattern, is_of_type, name_matches, read_by_parent


def check_fraction(name: str, value: Any, upper_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    ):
        allowed = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    return float(value)


def check_when(name: str, value: Any) -> int | float | str:
    """A moment of the run: an epoch (int >= 0), a fraction of the run (float in [0, 1]) or an optimizer step
    (``"step:N"``, N >= 0)."""
    if isinstance(value, str) and value.startswith(STEP_PREFIX) and value[len(STEP_PREFIX):].isdigit():
        return f"{STEP_PREFIX}{int(value[len(STEP_PREFIX):])}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be an epoch (int >= 0), a fraction of the run (float in [0, 1]) or an optimizer step "
            f"('step:N'), got {value!r}"
        )
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be an epoch >= 0, got {value}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name}={value} is a float outside [0, 1]: floats are fractions of the run; write epochs as integers"
        )
    return value


def check_window(start: Any, end: Any) -> tuple[int | float | str, int | float | str]:
    """``start`` and ``end`` as moments of the run (:func:`check_when`), ``end`` not before ``start`` when both
    have the same unit."""
    start, end = check_when("start", start), check_when("end", end)
    if type(start) is type(end) and end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    return start, end


def check_count(name: str, value: Any, unit: str = "") -> int:
    """An integer >= 1 (``unit`` is said in the message, e.g. ``" (optimizer steps)"``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{unit}, got {value!r}")
    return value


def check_patterns(include: Any, exclude: Any) -> tuple[list[str], list[str]]:
    """``include`` / ``exclude`` name patterns as lists of strings; a bad ``re:`` pattern raises ``ValueError``
    naming the argument, and so does an empty ``include``."""
    include = [str(p) for p in ([include] if isinstance(include, str) else include)]
    exclude = [str(p) for p in ([exclude] if isinstance(exclude, str) else exclude)]
    if not include:
        raise ValueError("include must name at least one pattern (use ['*'] for every layer)")
    for name, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            try:
                check_pattern(pattern)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from err
    return include, exclude


def select_layers(net: nn.Module, include: Sequence[str], exclude: Sequence[str], module_types: Sequence[str],
                  what: str, takes: Callable[[nn.Module], bool] | None = None) -> list[str]:
    """Names of the layers of ``net`` whose class (or a base class) is one of ``module_types`` (and, given
    ``takes``, for which it is true), matching a pattern of ``include`` and none of ``exclude``, in model order.

    Raises:
        ValueError: a pattern that matches no layer at all, an ``include`` pattern that matches no layer of
            those types, or a selection left empty; the message names the argument and lists the candidates.
    """
    modules = {n: m for n, m in net.named_modules() if n}
    typed = [n for n, m in modules.items() if is_of_type(m, module_types) and (takes is None or takes(m))]
    left_out = {n: reason for n in typed if (reason := read_by_parent(net, n)) is not None}
    candidates = [n for n in typed if n not in left_out]
    if not candidates:
        raise ValueError(f"{type(net).__name__} has no layer of the types {what} works on ({list(module_types)})")
    for arg, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            matched = [n for n in modules if name_matches(n, pattern)]
            if not matched:
                raise ValueError(f"{arg}: pattern {pattern!r} matches no layer; {what} can take: "
                                 f"{', '.join(candidates)}")
            if arg == "include" and not any(n in candidates for n in matched):
                unusable = [n for n in matched if n in left_out]
                if unusable:
                    raise ValueError(f"include: pattern {pattern!r} matches {unusable[0]}, which {what} cannot take: "
                                     f"{left_out[unusable[0]]}; exclude it (it can take: {', '.join(candidates)})")
                types = sorted({type(modules[n]).__name__ for n in matched})
                raise ValueError(f"include: pattern {pattern!r} matches {matched[:5]} of type {types}, which {what} "
                                 f"does not take (module_types {list(module_types)}); it can take: "
                                 f"{', '.join(candidates)}")
    chosen = [n for n in candidates if any(name_matches(n, p) for p in include)
              and not any(name_matches(n, p) for p in exclude)]
    if not chosen:
        raise ValueError(f"include {list(include)} minus exclude {list(exclude)} leaves no layer for {what}")
    return chosen


def left_out_layers(net: nn.Module, include: Sequence[str], exclude: Sequence[str], module_types: Sequence[str],
                    takes: Callable[[nn.Module], bool] | None = None) -> dict[str, str]:
    """The layers :func:`select_layers` leaves out of a selection although they match it, with the reason for
    each (their parent reads their weight directly): the techniques name them in the log and the report."""
    return {name: reason for name, module in net.named_modules() if name
            and is_of_type(module, module_types) and (takes is None or takes(module))
            and any(name_matches(name, p) for p in include) and not any(name_matches(name, p) for p in exclude)
            and (reason := read_by_parent(net, name)) is not None}


def left_out_line(left_out: Mapping[str, str]) -> str:
    """``; left out: out_proj (its parent ...)`` for a log line, or nothing."""
    return "".join(f"; left out {name}: {reason}" for name, reason in left_out.items())


def read_overrides(value: Any) -> dict[str, Any]:
    """``overrides`` as a mapping: given as one, or as the path of a YAML file holding it under ``overrides:`` (as
    ``lightning-micro-sensitivity`` writes it) or at its top level.

    Raises:
        ValueError: a path that is not a readable YAML file of such a mapping, or a value of another type.
    """
    if value is None:
        return {}
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"overrides: no file at {path} (give a mapping {{pattern: value}} or a YAML file)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"overrides: {path} is not valid YAML: {str(err).splitlines()[0]}") from err
        if isinstance(loaded, dict) and isinstance(loaded.get("overrides"), dict):
            loaded = loaded["overrides"]
        if not isinstance(loaded, dict):
            raise ValueError(f"overrides: {path} holds no mapping of layer patterns to values")
        return dict(loaded)
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"overrides must be a mapping {{pattern: value}} or the path of a YAML file, got {value!r}")


def check_ratio(name: str, value: Any) -> float | None:
    """``None``, or a number > 1 (a compression ratio)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 1):
        raise ValueError(f"{name} must be a number > 1, got {value!r}")
    return value


def follow_selection(candidates: Sequence[str], include: Sequence[str], exclude: Sequence[str],
                     original: Sequence[str], module_of: Callable[[str], str] = lambda name: name) -> list[str]:
    """The ``candidates`` (names in model order) a technique selects on the network as it is now: those matching
    a pattern of ``include`` and none of ``exclude``, plus those standing where a name of ``original`` (the
    selection on the network as configured) stood before a structural change replaced it: for each original
    name no longer a candidate, the candidates inside its module (``module_of(name)``), e.g. a TT layer's cores
    for the ``fc1.weight`` it replaced. A function of ``original`` and the network now, so a resumed run selects
    the same."""
    present = set(candidates)
    prefixes = tuple(module_of(name) + "." for name in original if name not in present)
    return [c for c in candidates
            if (any(name_matches(c, p) for p in include) or (prefixes and c.startswith(prefixes)))
            and not any(name_matches(c, p) for p in exclude)]
