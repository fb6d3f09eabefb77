"""The one place where config nodes become objects.

Every object the run builds from YAML goes through :func:`instantiate`, so a malformed node fails the same way
everywhere: one :class:`ConfigError` that names the config key, before any training step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

# Targets that moved when the package was laid out in floors (0.1 -> 0.2): a config naming the old path is told
# the new one, instead of Hydra's "Error locating target".
MOVED_TARGETS = {
    "lightning_micro.models.ClassifierModule": "lightning_micro.run.classifier.ClassifierModule",
    "lightning_micro.models.classifier.ClassifierModule": "lightning_micro.run.classifier.ClassifierModule",
    "lightning_micro.loggers.WandbLogger": "lightning_micro.run.loggers.WandbLogger",
    "lightning_micro.hydra_callbacks.RefuseExistingRunDir": "lightning_micro.run.hydra_callbacks.RefuseExistingRunDir",
    "lightning_micro.hydra_callbacks.CarryRunSettings": "lightning_micro.run.hydra_callbacks.CarryRunSettings",
}


class ConfigError(ValueError):
    """A config value that cannot work, named by its dotted key (``model.optimizer``, ``data.data_dir``)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.reason = message
        super().__init__(f"{key}: {message}")

    def under(self, parent: str) -> ConfigError:
        """The same error, its key prefixed with the key of the node that contains it."""
        return ConfigError(f"{parent}.{self.key}" if parent else self.key, self.reason)


def _target_of(node: Any, key: str) -> str:
    if not isinstance(node, (Mapping, DictConfig)):
        raise ConfigError(key, f"expected a config node with a _target_, got {type(node).__name__} {node!r}")
    target = node.get("_target_")
    if not target:
        keys = ", ".join(str(k) for k in node.keys()) or "none"
        raise ConfigError(key, f"this node needs a _target_ naming the class to build (its keys: {keys})")
    return str(target)


def node_arguments(node: Any) -> dict[str, Any]:
    """A config node's arguments (its keys but ``_target_`` and Hydra's other ``_..._`` keys), as plain values."""
    return {str(k): to_plain(v) for k, v in node.items() if not str(k).startswith("_")}


def described(node: Any) -> str:
    """``torch.optim.SGD(lr='fast')``: a config node as the call it stands for, to name what was rejected."""
    shown = ", ".join(f"{name}={value!r}" for name, value in node_arguments(node).items())
    return f"{node.get('_target_')}({shown[:300]})"


def _arguments_if_unnamed(node: Any, cause: BaseException) -> str:
    """The node's arguments, when the constructor's message names none of them (``'<' not supported ...``)."""
    arguments = node_arguments(node)
    if any(name in str(cause) for name in arguments):
        return ""
    shown = ", ".join(f"{name}={value!r}" for name, value in arguments.items())
    return f" (its arguments: {shown[:300]})"


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """Build ``node`` (a config mapping with ``_target_``) with Hydra, naming ``key`` in any error.

    Raises:
        ConfigError: the node lacks ``_target_``, the target cannot be imported, or its constructor rejected
            the arguments (the constructor's own message is kept).
    """
    target = _target_of(node, key)
    if target in MOVED_TARGETS:
        raise ConfigError(key, f"_target_ {target} has moved: write _target_: {MOVED_TARGETS[target]}")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause.under(key) from err
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(key, f"{target} rejected its arguments: {cause}{_arguments_if_unnamed(node, cause)}"
                              ) from err
        raise ConfigError(key, str(err).strip()) from err


def instantiate_each(node: Any, key: str, **kwargs: Any) -> list[Any]:
    """Build every child of a mapping of named nodes (``callbacks``, ``logger``, ``compression``), in order.

    ``None`` or an empty mapping gives an empty list. A child without ``_target_`` is an error, never skipped.
    """
    if node is None:
        return []
    if not isinstance(node, (Mapping, DictConfig)):
        raise ConfigError(key, f"expected a mapping of named config nodes, got {type(node).__name__}")
    return [instantiate(child, f"{key}.{name}", **kwargs) for name, child in node.items()]


def to_plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config value (dicts, lists, scalars), fit for JSON and checkpoints."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v) for v in node]
    return node
