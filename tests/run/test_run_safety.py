"""A run never exports a wrong result as if it were fine, never silently drops compression state, and gives the
same artifact bytes when run twice.
"""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_micro.callbacks import DivergenceGuard, GradualMagnitudePruning, QuantizationAwareTraining
from lightning_micro.run.failures import TrainingDiverged
from lightning_micro.run.training import train
from tests.helpers.config import FAST, ROOT, compose_cfg
from tests.helpers.user_modules import DigitsClassifier


class PoisonAt(Callback):
    """Puts a NaN into the first weight after optimizer step ``step``: a divergence at a known step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_a_nan_loss_stops_the_run_at_its_step_keeps_the_last_good_checkpoint_and_exports_nothing(tmp_path):
    # debug=limit: 5 steps per epoch; the weights turn NaN after step 7, so the loss of step 8 is NaN.
    cfg = compose_cfg([*FAST, "debug=limit", "trainer.max_epochs=3", "+callbacks.poison._target_="
                       f"{__name__}.PoisonAt", "+callbacks.poison.step=7"], tmp_path)
    with pytest.raises(TrainingDiverged, match=r"^training diverged: the training loss is nan at step 8 \(epoch 1, "
                                               r"batch 2\)\. Nothing was exported; the last checkpoint before it is "
                                               r"kept: .*last\.ckpt\."):
        train(cfg)
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "compression_report.json").exists()
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5  # written at the end of epoch 0, before the divergence
    assert all(bool(torch.isfinite(t).all()) for t in last["state_dict"].values() if t.is_floating_point())


def test_diverging_learning_rate_exits_1_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={tmp_path / 'run'}", "debug=limit",
                          "~callbacks.rich_progress_bar", "logger=csv", "model.optimizer.lr=1e4",
                          "model.optimizer.momentum=0.99"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "training diverged: the training loss is" in error_lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_max_epochs_0_is_exported_only_when_asked(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_epochs=0", "report.allow_untrained=true", "compression=[]",
                       "model.scheduler=null"], tmp_path)
    train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert report["params/total"] > 0  # exported and measured, because it was asked for


def test_global_pruning_on_the_short_default_run_keeps_every_layer_alive(tmp_path):
    # The case: debug=limit pruned fc2 to 100% with the default global GMP and exported a dead network.
    cfg = compose_cfg([*FAST, "debug=limit", "compression=[gmp]", "compression.gmp.final_sparsity=0.9"], tmp_path)
    metrics = train(cfg)
    layer_sparsity = {k: v for k, v in metrics.items() if k.startswith("sparsity/") and k.count("/") == 1
                      and k.endswith(".weight")}
    assert layer_sparsity and max(layer_sparsity.values()) <= 0.99, layer_sparsity
    assert metrics["gmp/min_layer_density"] == 0.01 and isinstance(metrics["gmp/floored_tensors"], str)


def test_the_same_run_twice_gives_the_same_artifact_bytes(tmp_path):
    # The default recipe, gmp then int8 QAT: bitmask, qtensor and dense codecs in one file.
    for name in ("a", "b"):
        train(compose_cfg([*FAST, "debug=limit", "trainer.max_epochs=2"], tmp_path / name))
    first, second = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert first == second


def fit_user_module(tmp_path, techniques, max_epochs=1, ckpt_path=None):
    from lightning_micro.data import DigitsDataModule

    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[*techniques, DivergenceGuard()])
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer


def test_resuming_a_user_module_with_another_list_is_refused_from_python_too(tmp_path):
    trainer = fit_user_module(tmp_path, [GradualMagnitudePruning(final_sparsity=0.5, start=0, end=1)])
    trainer.save_checkpoint(tmp_path / "gmp.ckpt")
    with pytest.raises(ValueError, match=r"compressing with \['GradualMagnitudePruning'\], but this run has "
                                         r"\['QuantizationAwareTraining'\]"):
        fit_user_module(tmp_path, [QuantizationAwareTraining(start=1)], max_epochs=2, ckpt_path=tmp_path / "gmp.ckpt")
    with pytest.raises(ValueError, match=r"but this run has \[\]"):  # dropping every technique is refused too
        fit_user_module(tmp_path, [], max_epochs=2, ckpt_path=tmp_path / "gmp.ckpt")
