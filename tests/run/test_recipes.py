"""Every recipe shortened for a quick look: ``python train.py experiment=<recipe> trainer.max_epochs=1 debug=limit``.

Recipes give their schedules as fractions of the run, so that any length keeps their shape (GMP's end at 0.4 of
20 epochs is epoch 8, of one short epoch its second step)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lightning_micro.artifact.format import load_compressed
from lightning_micro.run.training import train
from tests.helpers.cli import run_cli
from tests.helpers.config import CONF, compose_cfg, mnist_dir

RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
QUICK = ["trainer.max_epochs=1", "debug=limit"]
QUIET = ["logger=csv", "~callbacks.rich_progress_bar", "report.latency_min_run_time=0.01",
         "report.latency_batch_sizes=[1]", "report.onnx=false",
         "report.sparse_kernels=never", "report.memory_layout=contiguous"]
WHEN_KEYS = {"start", "end", "swap_at", "prune_at", "remove_at", "freeze_observers", "freeze_bn"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_shortened_to_one_epoch(recipe, tmp_path):
    cfg = compose_cfg([f"experiment={recipe}", *QUICK, f"paths.data_dir={mnist_dir()}", *QUIET], tmp_path)
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 5
    train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert 0.0 <= report["test/acc"] <= 1.0
    assert report["size/artifact_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    net = load_compressed(tmp_path / "model.safetensors")  # the artifact rebuilds and runs
    assert net(torch.zeros(2, *cfg.data.input_shape)).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_schedules_are_fractions_of_the_run(recipe):
    """An epoch number other than 0 in a recipe would break the recipe when a user shortens the run."""
    compression = (yaml.safe_load((CONF / "experiment" / f"{recipe}.yaml").read_text()).get("compression") or {})
    for technique, arguments in compression.items():
        for key, value in (arguments or {}).items():
            if key in WHEN_KEYS and value is not None:
                assert isinstance(value, float) or value == 0, f"{recipe}: compression.{technique}.{key}={value}"


def test_the_shortened_recipe_from_the_command_line(tmp_path):
    """What a user types first: a recipe with fewer epochs (it used to fail after W&B had started)."""
    done = run_cli(["experiment=gmp_lenet300", "trainer.max_epochs=1", "debug=limit", *QUIET,
                    f"paths.data_dir={mnist_dir()}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "compression_report.json").read_text())
    assert report["gmp/pruned_sparsity"] > 0.9  # the schedule still reached its target
