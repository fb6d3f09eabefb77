"""The real config composed with Hydra's compose() API, trimmed for a fast CPU run, and where MNIST is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Keeps a test run short: one thread, tiny latency measurement, no progress bar, no W&B unless asked.
FAST = [
    "trainer.max_epochs=1",
    "logger=csv",
    "~callbacks.rich_progress_bar",
    "report.latency_min_run_time=0.01",
    "report.latency_batch_sizes=[1,8]",
    "report.onnx=false",  # the ONNX tests ask for it (tests/artifact/test_onnx.py)
    # kernels and layout chosen by timing: the artifact's outputs then differ from the trained network's at float
    # rounding, and many tests compare them exactly; tests/core/test_sparse_kernels.py and test_memory_layout.py
    # check those choices, and the default command line runs them (tests/run/test_cli.py)
    "report.sparse_kernels=never",
    "report.memory_layout=contiguous",
]


def mnist_dir() -> Path:
    """Where the tests find real MNIST: ``$LM_DATA_DIR``, else ``./data``, else ``../shared/data`` (this project's
    machines); the MNIST cases are skipped when none holds it."""
    candidates = [os.environ["LM_DATA_DIR"]] if os.environ.get("LM_DATA_DIR") else ["data", "../shared/data"]
    for path in map(Path, candidates):
        if (path / "MNIST" / "raw").is_dir():
            return path
    pytest.skip(f"real MNIST not found under {' or '.join(candidates)} (MNIST/raw; set LM_DATA_DIR)")


def compose_cfg(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The composed run config, as `python train.py <overrides>` would see it, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir / "logs")
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:...} resolve, as in a real run
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
