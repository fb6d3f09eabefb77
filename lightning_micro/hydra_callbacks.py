"""Hydra callbacks: they run before Hydra writes anything into a run directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_micro.errors import EXIT_INPUT_ERROR


def _refuse_if_taken(directory: Any, key: str) -> None:
    path = Path(str(directory))
    if path.is_dir() and any(path.iterdir()):
        # Hydra turns an exception raised in a callback into a warning and carries on (and would then
        # overwrite .hydra/config.yaml), so stop the process instead: one line, the input-error status.
        print(f"Error: {key}: {path} already exists and is not empty; refusing to write into it so that no earlier "
              f"run's files are overwritten. Pick a new directory ({key}=...) or leave the default, which is "
              "unique per start.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT_ERROR)


class RefuseExistingRunDir(Callback):
    """Stop before Hydra saves ``.hydra/config.yaml`` into a directory that already holds files.

    Lightning's DDP launcher restarts the script for ranks > 0 inside the rank-0 run directory on purpose
    (it sets ``LOCAL_RANK``); those restarts are let through.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            _refuse_if_taken(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_if_taken(OmegaConf.select(config, "hydra.sweep.dir"), "hydra.sweep.dir")
