"""Sensitivity analysis on a real dense run: curves, the PNG, an overrides file GMP takes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from lightning_micro.callbacks import GradualMagnitudePruning
from lightning_micro.tools.sensitivity import allocate, main
from tests.helpers.config import FAST, ROOT
from tests.helpers.wandb_files import wandb_run_records

PNG = b"\x89PNG\r\n\x1a\n"


def test_allocation_prunes_the_layers_that_lose_least_to_reach_the_target():
    curves = {"a.weight": {0.5: 0.99, 0.9: 0.98, 0.95: 0.90},  # loses 1 point at 0.9
              "b.weight": {0.5: 0.99, 0.9: 0.99, 0.95: 0.99}}  # loses nothing
    sizes = {"a.weight": 100, "b.weight": 300}
    # at no loss: a 0.5, b 0.95 -> (50 + 285) / 400 = 0.8375
    assert allocate(curves, sizes, 0.8, baseline=0.99) == {"a.weight": 0.5, "b.weight": 0.95}
    # 0.9 needs a at 0.9 (1 point): (90 + 285) / 400 = 0.9375
    assert allocate(curves, sizes, 0.9, baseline=0.99) == {"a.weight": 0.9, "b.weight": 0.95}
    with pytest.raises(ValueError, match="target=0.97 cannot be reached"):
        allocate(curves, sizes, 0.97, baseline=0.99)


def test_allocation_minimizes_the_summed_loss_not_the_largest():
    """LeNet-300-100's shape (measured on seed 42): a big first layer, a small sensitive last one. Every layer at the
    target loses 2.6 + 4.2 + 4.6 points; the big layer a little further, the middle one less and the last one
    dense lose 4.8 + 0.8."""
    curves = {"big.weight": {0.95: 0.964, 0.97: 0.942}, "mid.weight": {0.9: 0.982, 0.95: 0.948},
              "small.weight": {0.5: 0.988, 0.95: 0.944}}
    sizes = {"big.weight": 880, "mid.weight": 110, "small.weight": 10}
    chosen = allocate(curves, sizes, 0.95, baseline=0.99)
    assert chosen == {"big.weight": 0.97, "mid.weight": 0.9, "small.weight": 0.0}
    assert sum(chosen[n] * sizes[n] for n in sizes) / 1000 >= 0.95


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A dense run of the real command line (its directory holds .hydra/config.yaml and its checkpoints)."""
    root = tmp_path_factory.mktemp("dense") / "run"
    done = subprocess.run([sys.executable, "train.py", "compression=[]", *FAST, "trainer.max_epochs=2",
                           f"hydra.run.dir={root}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_a_dense_run_gives_curves_a_png_and_overrides_gmp_accepts(dense_run, tmp_path, capsys):
    assert main([str(dense_run), "--batches", "2", "--target", "0.8", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "sensitivity.json").read_text())
    assert set(payload["curves"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(0.0 <= acc <= 1.0 for curve in payload["curves"].values() for acc in curve.values())
    overrides = yaml.safe_load((tmp_path / "overrides.yaml").read_text())["overrides"]
    assert overrides == payload["overrides"] and set(overrides) == set(payload["curves"])
    sizes = {"fc1.weight": 64 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}
    assert sum(overrides[n] * sizes[n] for n in sizes) / sum(sizes.values()) >= 0.8
    pruning = GradualMagnitudePruning(overrides=str(tmp_path / "overrides.yaml"))
    assert pruning.overrides == overrides
    assert (tmp_path / "sensitivity.png").read_bytes()[:8] == PNG
    assert main([str(dense_run), "--method", "quantize", "--levels", "8", "2", "--batches", "1",
                 "--out", str(tmp_path / "q")]) == 0
    curves = json.loads((tmp_path / "q" / "sensitivity.json").read_text())["curves"]
    assert set(curves["fc1.weight"]) == {"8.0", "2.0"} and not (tmp_path / "q" / "overrides.yaml").exists()


def test_with_wandb_on_the_curves_and_the_plot_go_to_an_offline_run(dense_run, tmp_path):
    assert main([str(dense_run), "--batches", "1", "--levels", "0.5", "0.9", "--target", "0.6", "--out",
                 str(tmp_path), "--wandb", "offline"]) == 0
    run, records = wandb_run_records(tmp_path / "wandb", (b"sensitivity/curves", b"sensitivity/plot"))
    assert b"sensitivity/curves" in records and b"sensitivity/plot" in records
    (table,) = run.glob("files/media/table/sensitivity/curves_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["layer", "level", "val_acc", "allocated"]
    assert len(logged["data"]) == 3 * 2  # three layers, two levels


def test_bad_input_is_one_message(dense_run, tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a finished run directory" in capsys.readouterr().err
    assert main([str(dense_run), "--levels", "1.5"]) == 2
    assert "--levels for pruning are sparsities in [0, 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="overrides: no file at"):
        GradualMagnitudePruning(overrides=str(tmp_path / "none.yaml"))
