"""What loading a file may build: the trust model of artifacts and checkpoints.

An artifact (``model.safetensors``) and a checkpoint (``*.ckpt``) name the class that rebuilds their network
(``{"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 28, 28]}``). A file is data anyone can
write, so loading one resolves that name only to a callable that is *trusted*, and calls it with plain JSON
arguments only. Nothing is imported because a file names it, no nested ``_target_`` is built, no string is
evaluated, and no OmegaConf interpolation is resolved. Trusted are:

- the networks of the zoo (the classes :mod:`lightning_micro.models` lists in ``__all__``),
- optimizers and LR schedulers of ``torch.optim`` (checkpoints of ``ClassifierModule`` name them),
- what the caller names when loading (``load_compressed(path, trusted=[MyNet])``) or registers for the
  process (``lightning_micro.trust(MyNet)``): a class or function object, a dotted class path, or a dotted
  module name whose own classes and functions are then all trusted (the caller chose to import it).

Everything else is refused with an :class:`UntrustedSpecError` that names the target and how to trust it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import torch

from lightning_micro import models as zoo

Trusted = type | Callable[..., Any] | str

# Objects trusted in every load of this process: the zoo and what the user registers with `trust`.
# Module names: every class and function defined in them.
_TRUSTED_OBJECTS: set[Any] = {getattr(zoo, name) for name in zoo.__all__}
_TRUSTED_MODULES: set[str] = set()

_PLAIN_SCALARS = (str, int, float, bool, type(None))

# Set while a LightningModule is rebuilt from a checkpoint's hyper-parameters: what the caller trusted.
_LOADING_FILE: ContextVar[tuple[Trusted, ...] | None] = ContextVar("lightning_micro_loading_file", default=None)


class UntrustedSpecError(ValueError):
    """A file's network spec names something that is not trusted, or passes it more than plain arguments."""


def trusted(obj: Any) -> Any:
    """Trust ``obj`` (a network class or factory) in every load; usable as a class decorator."""
    _TRUSTED_OBJECTS.add(obj)
    return obj


def trust(*targets: Trusted) -> None:
    """Trust classes, factories or modules for every later load in this process (see the module docstring).

    Example:
        >>> import lightning_micro
        >>> # skipped in the doctests: my_package is the user's, and trust lasts for the rest of the process
        >>> lightning_micro.trust("my_package.nets")  # doctest: +SKIP
    """
    for target in targets:
        if isinstance(target, str):
            _trust_name(target, _TRUSTED_OBJECTS, _TRUSTED_MODULES)
        else:
            _TRUSTED_OBJECTS.add(target)


def _trust_name(name: str, objects: set[Any], modules: set[str]) -> None:
    """A name the user gave: a module (trust all it defines) or ``module.attribute``; importing it is their choice."""
    try:
        importlib.import_module(name)
        modules.add(name)
        return
    except ImportError:
        pass
    module_name, _, attribute = name.rpartition(".")
    try:
        objects.add(getattr(importlib.import_module(module_name), attribute))
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"trusted={name!r} names neither an importable module nor a module's attribute "
                         f"({type(err).__name__}: {err})") from err


def _is_torch_optim(obj: Any) -> bool:
    return isinstance(obj, type) and obj.__module__.startswith("torch.optim") and issubclass(
        obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))


def _already_imported(target: str) -> Any:
    """The object ``target`` names if its module is imported already (so resolving it runs no code), else None."""
    module_name, _, attribute = target.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None or not attribute.isidentifier():
        return None
    return module.__dict__.get(attribute)


def resolve(target: Any, key: str, trusted: Iterable[Trusted] = ()) -> Callable[..., Any]:
    """The trusted callable ``target`` names.

    Raises:
        UntrustedSpecError: ``target`` is not a string, names nothing already imported, or names an object that
            is neither registered, in a trusted module, a ``torch.optim`` class, nor in ``trusted``.
    """
    if not isinstance(target, str):
        raise UntrustedSpecError(f"{key}._target_ must be a dotted class path, got {type(target).__name__}")
    objects, modules = set(_TRUSTED_OBJECTS), set(_TRUSTED_MODULES)
    for item in trusted:
        if isinstance(item, str):
            _trust_name(item, objects, modules)
        else:
            objects.add(item)
    obj = _already_imported(target)
    module_of = getattr(obj, "__module__", None) or ""
    in_trusted_module = any(module_of == m or module_of.startswith(m + ".") for m in modules)
    if obj is not None and callable(obj) and (_hashable_in(obj, objects) or in_trusted_module or _is_torch_optim(obj)):
        return obj
    raise UntrustedSpecError(
        f"{key}._target_ {target!r} is not trusted, so it was not imported or called: a file may only name the "
        "networks of lightning_micro's zoo and torch.optim classes. If this is your own network and you trust "
        f"the file, name it when loading (trusted=[{target.rpartition('.')[2] or target}] or the string "
        f"{target!r}) or register it once with lightning_micro.trust(...)")


def _hashable_in(obj: Any, objects: set[Any]) -> bool:
    try:
        return obj in objects
    except TypeError:
        return False


def check_plain(value: Any, key: str) -> None:
    """Refuse anything but JSON data (no ``_target_`` or other Hydra key below the top, no non-finite floats
    that JSON would not hold either)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UntrustedSpecError(f"{key} is {value}, not a finite number")
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{key}[{i}]")
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                raise UntrustedSpecError(f"{key} has a key of type {type(name).__name__}; only strings are plain")
            if name.startswith("_"):
                raise UntrustedSpecError(f"{key}.{name}: nested {name} is refused in a file's spec; a spec's "
                                         "arguments are plain values, never objects to build")
            check_plain(item, f"{key}.{name}")
        return
    raise UntrustedSpecError(f"{key} is a {type(value).__name__}; a file's spec holds plain JSON values only")


def build(spec: Any, key: str, trusted: Iterable[Trusted] = (), partial_ok: bool = False) -> Any:
    """Build a file's spec (``_target_`` plus plain arguments) by calling the trusted callable it names.

    ``partial_ok`` allows ``_partial_: true`` (optimizer and scheduler factories), which returns a
    ``functools.partial`` instead of calling.

    Raises:
        UntrustedSpecError: see :func:`resolve` and :func:`check_plain`.
    """
    if not isinstance(spec, Mapping):
        raise UntrustedSpecError(f"{key} must be a mapping with a _target_, got {type(spec).__name__}")
    arguments = {name: value for name, value in spec.items() if name not in ("_target_", "_partial_")}
    extra = sorted(name for name in arguments if not isinstance(name, str) or name.startswith("_"))
    if extra or ("_partial_" in spec and not partial_ok):
        refused = extra or ["_partial_"]
        raise UntrustedSpecError(f"{key}: {', '.join(map(str, refused))} is refused in a file's spec "
                                 "(only _target_ and plain arguments)")
    check_plain(arguments, key)
    factory = resolve(spec.get("_target_"), key, trusted)
    if spec.get("_partial_", False) is True:
        return functools.partial(factory, **arguments)
    return factory(**arguments)


@contextlib.contextmanager
def loading_file(trusted: Iterable[Trusted] = ()) -> Iterator[None]:
    """Within this block, modules that build config nodes from their init arguments (``ClassifierModule``) build
    them with :func:`build` under ``trusted``: a checkpoint's hyper-parameters are data from a file."""
    token = _LOADING_FILE.set(tuple(trusted))
    try:
        yield
    finally:
        _LOADING_FILE.reset(token)


def file_trust() -> tuple[Trusted, ...] | None:
    """What the caller trusted while a file is being loaded (see :func:`loading_file`), else ``None``."""
    return _LOADING_FILE.get()
