"""Hydra callbacks: they run before Hydra writes anything into a run directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_micro.run.failures import EXIT_INPUT_ERROR


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


RUN_SETTINGS = Path(__file__).resolve().parents[2] / "conf" / "hydra" / "default.yaml"


class CarryRunSettings(Callback):
    """Append this project's Hydra run settings to the run's saved ``.hydra/config.yaml``.

    A saved config re-run as a primary config (``--config-path <run>/.hydra --config-name config``) replaces
    ``train.yaml`` and its defaults list, Hydra's ``hydra`` group choice included: without this the re-run would
    land in Hydra's own ``outputs/<date>/<time>`` and skip the refusal of a taken directory. With it, it starts a
    new ``logs/runs/<time>`` directory like any run. The settings are copied as written (``${now:...}`` resolves
    again at the re-run), never the directory this run used.
    """

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = OmegaConf.select(config, "hydra.output_subdir")
        saved = Path(str(config.hydra.runtime.output_dir)) / str(subdir) / "config.yaml" if subdir else None
        if os.environ.get("LOCAL_RANK", "0") != "0" or saved is None or not saved.is_file():
            return
        if "\nhydra:" in "\n" + saved.read_text():  # a re-run of a file that carries them already
            return
        settings = OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.load(RUN_SETTINGS)}))
        with saved.open("a") as handle:
            handle.write("# lightning_micro's run settings: a re-run of this file gets a new run directory\n"
                         + settings)
