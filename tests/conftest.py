"""Shared test helpers: compose the real config with Hydra's compose() API, trimmed for a fast CPU run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Real MNIST: from LM_DATA_DIR, else the team's offline copy beside the checkout.
if "LM_DATA_DIR" not in os.environ and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["LM_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("WANDB_SILENT", "true")
# One intra-op thread here and in every process a test starts (train.py, DDP ranks): on a 2-core machine two
# threads per process oversubscribe the cores and made small networks' steps up to 50x slower. Results are
# compared within a thread count, never against one recorded under another.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Keeps a test run short: one thread, tiny latency measurement, no progress bar, no W&B unless asked.
FAST = [
    "trainer.max_epochs=1",
    "logger=csv",
    "~callbacks.rich_progress_bar",
    "report.latency_min_run_time=0.01",
    "report.latency_batch_sizes=[1,8]",
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


def wandb_run_records(wandb_dir: Path, keys: tuple[bytes, ...], timeout: float = 60) -> tuple[Path, bytes]:
    """The one offline run under ``wandb_dir`` and its ``.wandb`` file's bytes once every key is in them.

    Protobuf records store keys as plain strings. wandb's writer is a separate process (wandb-core) that closes the
    file when the run's stream ends, which on a busy machine can come just after finish() returns."""
    (run,) = list(wandb_dir.glob("offline-run-*"))
    (run_file,) = run.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while not all(key in run_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    return run, run_file.read_bytes()


def run_cli(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py <args>`` from the project root, as a user types it."""
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
