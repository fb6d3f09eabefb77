"""What a run checks before it builds anything: plain config values, the checkpoint it resumes, the command line's
config-group choices. Each failure is one :class:`~lightning_micro.run.instantiate.ConfigError` naming the key, the
value and what is allowed; objects built from the config check their own arguments when they are built.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from lightning_micro.core.memory_layout import LAYOUTS
from lightning_micro.core.sparse_kernels import MODES as SPARSE_KERNEL_MODES
from lightning_micro.run.instantiate import ConfigError

UNTRAINED = ("is 0, so the run would train nothing and export an untrained network; give it a positive value, "
             "or set report.allow_untrained=true to export one anyway")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch_sizes(key: str, values: Any) -> None:
    if not isinstance(values, (list, tuple, ListConfig)) or not values or not all(_is_int(v) and v >= 1
                                                                                  for v in values):
        raise ConfigError(key, f"must be a non-empty list of batch sizes >= 1, got {_shown(values)}")


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value)
    return repr(value)


def check_run_config(cfg: DictConfig) -> None:
    """The run's own plain values (those no constructor checks): ``seed``, ``ckpt_path``, ``optimized_metric``,
    ``compression`` (a mapping of techniques), ``report.*``, and a trainer that would make no optimizer step
    (``max_epochs``, ``max_steps`` or ``limit_train_batches`` 0) unless ``report.allow_untrained``."""
    seed = cfg.get("seed")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError("seed", f"must be an integer in [0, 2**32), got {_shown(seed)}")
    for key in ("ckpt_path", "optimized_metric"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(key, f"must be a non-empty string or null, got {_shown(value)}")
    compression = cfg.get("compression")
    if compression is not None and not isinstance(compression, (DictConfig, Mapping)):
        raise ConfigError("compression", f"must be a mapping of techniques (compression=[gmp,qat] on the command "
                                         f"line; compression=[] for none), got {_shown(compression)}")
    report = cfg.get("report") or {}
    trainer = cfg.get("trainer") or {}
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        value = trainer.get(key) if isinstance(trainer, (DictConfig, Mapping)) else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"trainer.{key}", f"must be a number, got {_shown(value)}")
        if value == 0 and not (isinstance(report, (DictConfig, Mapping)) and report.get("allow_untrained") is True):
            raise ConfigError(f"trainer.{key}", UNTRAINED)
    if not isinstance(report, (DictConfig, Mapping)):
        raise ConfigError("report", f"must be a mapping, got {_shown(report)}")
    allowed = {"latency_batch_sizes", "latency_threads", "latency_min_run_time", "allow_untrained", "byte_budget",
               "onnx", "sparse_kernels", "memory_layout"}
    unknown = sorted(set(report) - allowed)
    if unknown:
        raise ConfigError(f"report.{unknown[0]}", f"is not a report setting; the settings are {sorted(allowed)}")
    check_batch_sizes("report.latency_batch_sizes", report.get("latency_batch_sizes", [1, 64]))
    threads = report.get("latency_threads", 1)
    if not _is_int(threads) or threads < 1:
        raise ConfigError("report.latency_threads", f"must be an integer >= 1, got {_shown(threads)}")
    run_time = report.get("latency_min_run_time", 0.2)
    if isinstance(run_time, bool) or not isinstance(run_time, (int, float)) or not math.isfinite(run_time) \
            or run_time <= 0:
        raise ConfigError("report.latency_min_run_time", f"must be a number of seconds > 0, got {_shown(run_time)}")
    for key in ("allow_untrained", "onnx"):
        if not isinstance(report.get(key, False), bool):
            raise ConfigError(f"report.{key}", f"must be true or false, got {_shown(report.get(key))}")
    kernels = report.get("sparse_kernels", "auto")
    if kernels not in SPARSE_KERNEL_MODES:
        raise ConfigError("report.sparse_kernels", f"must be one of {list(SPARSE_KERNEL_MODES)}, got {_shown(kernels)}")
    layout = report.get("memory_layout", "auto")
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError("report.memory_layout", f"must be one of {['auto', *LAYOUTS]}, got {_shown(layout)}")
    budget = report.get("byte_budget")
    if budget is not None and (not _is_int(budget) or budget < 1):
        raise ConfigError("report.byte_budget", f"must be a number of bytes >= 1 or null, got {_shown(budget)}")


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, read as data only (``torch.load(weights_only=True)``), before anything else of
    the run is built: a missing, empty, truncated or foreign file is a config error naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("ckpt_path", f"{path} is not a file (a checkpoint such as <run>/checkpoints/last.ckpt)")
    if file.stat().st_size == 0:
        raise ConfigError("ckpt_path", f"{path} is empty (0 bytes): not a checkpoint")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("ckpt_path", f"{path} is not a readable checkpoint (truncated, damaged or not saved by "
                                       f"Lightning): {reason[:300]}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} holds no Lightning training state (state_dict and loops), so a "
                                       "run cannot resume from it")
    return checkpoint


def check_group_overrides(argv: Sequence[str], conf_dir: Path) -> None:
    """Command-line choices of a config group (``model=lenet5``, ``compression=[gmp,qat]``) that name no option
    of it, or ``null``: Hydra would answer them with a traceback or a page of search paths."""
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = conf_dir / key
        if "@" in key or not group.is_dir():
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        value = value.strip()
        chosen = [v.strip() for v in value[1:-1].split(",") if v.strip()] if value.startswith("[") else [value]
        if value.lower() in ("null", "none", "~") and value not in options:
            off = f"{key}=[] trains without compression" if key == "compression" else f"'~{key}' removes the group"
            raise ConfigError(key, f"{value} is not an option of the {key} group; choose one of {options} ({off})")
        unknown = [v for v in chosen if v not in options]
        if unknown and not any(ch in value for ch in "${}*"):
            raise ConfigError(key, f"{unknown[0]!r} is not an option of the {key} group; choose one of {options}")
