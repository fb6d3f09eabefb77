"""A user's own LightningModule (tests/helpers/user_modules.py: residual and depthwise layers, its own training_step and
optimizer) through every technique and a pair, from Python with a plain Trainer and no Hydra; the artifact of
``export_compressed`` reloads in a fresh process with the accuracy trainer.test measured. The contract's message,
loss hook and export refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_micro import export_compressed, load_compressed
from lightning_micro.artifact.format import read_metadata
from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core.tensor_train import TTLinear
from lightning_micro.data import DigitsDataModule
from lightning_micro.report.measure import weight_tensors
from tests.helpers.fresh_process import USER_ARTIFACT_ACCURACY
from tests.helpers.user_modules import DigitsClassifier, FactoryNamed, PlainClassifier, UnsavedArguments
from tests.helpers.user_nets import ResidualDepthwiseNet

ROOT = Path(__file__).resolve().parent.parent

RECIPES = {
    "gmp": lambda: [GradualMagnitudePruning(final_sparsity=0.6, start=0, end=2, update_every=5)],
    "qat_int8": lambda: [QuantizationAwareTraining(start=2)],
    "qat_4bit": lambda: [QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=1)],
    "tt": lambda: [TTLayerSwap(swap_at=1, ranks=4, include=["fc1"])],
    "lowrank": lambda: [LowRankDecomposition(swap_at=1, compression_ratio=2)],  # the depthwise conv is skipped
    "lowrank+qat_int8": lambda: [LowRankDecomposition(swap_at=1, compression_ratio=2),
                                 QuantizationAwareTraining(start=2)],
    # the stem's channels run through the depthwise conv and the residual sum: one group, removed consistently
    "structured": lambda: [StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3)],
    "structured+qat_int8": lambda: [StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3),
                                    QuantizationAwareTraining(start=2)],
}


def fit(tmp_path: Path, callbacks: list[L.Callback], module: L.LightningModule | None = None, max_epochs: int = 3
        ) -> tuple[L.Trainer, L.LightningModule]:
    L.seed_everything(0)
    module = module if module is not None else DigitsClassifier()
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=callbacks, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    return trainer, module


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_user_module_takes_the_technique_and_its_artifact_scores_the_same_in_a_fresh_process(recipe, tmp_path):
    trainer, module = fit(tmp_path, RECIPES[recipe]())
    tested = trainer.test(module, DigitsDataModule(batch_size=64), verbose=False)[0]["test_acc"]
    assert tested > 0.7, tested  # it learned
    path = tmp_path / "model.safetensors"
    assert export_compressed(trainer, path) == path.stat().st_size
    meta = read_metadata(path)
    assert meta["net"] == {"_target_": "tests.helpers.user_modules.DigitsClassifier", "width": 16, "lr": 5e-3}
    assert meta["submodule"] == "backbone"
    applied = [e["transform"] for e in meta["transforms"]]
    expected = {"gmp": [], "qat_int8": ["int8_qat_prepare", "int8_convert"],
                "qat_4bit": ["weight_fake_quant", "weight_low_bit"], "tt": ["tt_swap"], "lowrank": ["low_rank_swap"],
                "lowrank+qat_int8": ["low_rank_swap", "int8_qat_prepare", "int8_convert"],
                "structured": ["channel_prune"],
                "structured+qat_int8": ["channel_prune", "int8_qat_prepare", "int8_convert"]}[recipe]
    assert applied == expected
    deployed = load_compressed(path, trusted=[DigitsClassifier])
    if recipe == "tt":
        assert isinstance(deployed.fc1, TTLinear)
    if recipe.startswith("lowrank"):  # the depthwise convolution stays; the others are factorized
        names = dict(deployed.named_modules())
        assert "pointwise.0" in names and "fc1.0" in names and "depthwise.0" not in names
    if recipe.startswith("structured"):  # 16 -> 8 channels through stem, depthwise, pointwise and fc1's inputs
        weights = weight_tensors(deployed)
        assert [weights[f"{n}.weight"].shape[0] for n in ("stem.0", "depthwise", "pointwise", "fc1")] == [8, 8, 8, 32]
        assert weights["fc1.weight"].shape[1] == 8 * 16
    out = subprocess.run([sys.executable, "-c", USER_ARTIFACT_ACCURACY, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    kind, accuracy = out.stdout.split()
    assert kind != "DigitsClassifier"  # the network itself, not the LightningModule around it
    assert float(accuracy) == pytest.approx(tested, abs=1e-6)


def test_a_module_without_the_contract_gets_the_line_to_add_before_the_first_step(tmp_path):
    steps = []

    class Count(L.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    with pytest.raises(TypeError) as err:
        fit(tmp_path, [TTLayerSwap(swap_at=1, ranks=4, include=["backbone.fc1"]), Count()], PlainClassifier())
    assert str(err.value) == (
        "TTLayerSwap changes the network's structure, so the LightningModule must adopt the compression contract; "
        "PlainClassifier does not. Add the mixin as its first base class: `class PlainClassifier("
        "lightning_micro.CompressionMixin, lightning.LightningModule)` (lightning_micro.CompressionMixin)")
    assert steps == []


def test_pruning_needs_no_contract_and_takes_the_whole_module(tmp_path):
    pruning = GradualMagnitudePruning(final_sparsity=0.5, start=0, end=1, update_every=5)
    _, module = fit(tmp_path, [pruning], PlainClassifier(), max_epochs=2)
    assert "backbone.fc1.weight" in pruning.names
    assert float((module.backbone.fc1.weight == 0).float().mean()) > 0.3


def test_int8_on_the_whole_module_asks_for_compressed_net_name(tmp_path):
    class WholeModule(DigitsClassifier):
        compressed_net_name = ""

    with pytest.raises(ValueError, match="set compressed_net_name to the attribute that holds the network"):
        fit(tmp_path, [QuantizationAwareTraining(start=1)], WholeModule())


class WeightPenalty(CompressionTechnique):
    """A technique with a loss term: 100 * ||fc2.weight||^2 added through the contract's hook."""

    technique = "WeightPenalty"

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        self.add_loss_term(pl_module, "penalty",
                           lambda module, **context: 100 * module.backbone.fc2.weight.pow(2).sum())


def test_a_technique_adds_a_loss_term_through_the_contract(tmp_path):
    _, plain = fit(tmp_path, [], max_epochs=1)
    _, penalized = fit(tmp_path, [WeightPenalty()], max_epochs=1)
    assert penalized.compression_loss_calls > 0
    assert penalized.backbone.fc2.weight.norm() < 0.5 * plain.backbone.fc2.weight.norm()


def test_a_training_step_that_forgets_the_loss_term_is_told_after_the_first_step(tmp_path):
    class Forgetful(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

    with pytest.raises(RuntimeError, match=r"does not add self.compression_loss\(...\) to the loss it returns"):
        fit(tmp_path, [WeightPenalty()], Forgetful(), max_epochs=1)


def test_export_refuses_a_class_a_fresh_process_cannot_import(tmp_path):
    trainer, module = fit(tmp_path, [], max_epochs=1)
    module.__class__ = type("DigitsClassifier", (DigitsClassifier,), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="defined in __main__ .* so a fresh process cannot import it"):
        export_compressed(trainer, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


def test_export_asks_for_saved_init_arguments(tmp_path):
    trainer, _ = fit(tmp_path, [], UnsavedArguments(16), max_epochs=1)
    with pytest.raises(ValueError, match=r"UnsavedArguments.__init__ needs \['width'\].*save_hyperparameters\(\)"):
        export_compressed(trainer, tmp_path / "b.safetensors")


def test_a_factory_named_by_the_module_rebuilds_the_network_and_the_module_exports_itself(tmp_path):
    trainer, module = fit(tmp_path, RECIPES["tt"](), FactoryNamed(), max_epochs=2)
    path = tmp_path / "model.safetensors"
    assert module.export_compressed(path) == path.stat().st_size  # from the module, with its trainer
    assert read_metadata(path)["net"] == {"_target_": "tests.helpers.user_nets.ResidualDepthwiseNet", "width": 16}
    deployed = load_compressed(path, trusted=[ResidualDepthwiseNet])  # the factory the module names
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert isinstance(deployed.fc1, TTLinear) and torch.allclose(deployed(x), module.eval()(x))


def test_checkpoint_of_a_user_module_replays_its_record(tmp_path):
    trainer, module = fit(tmp_path, RECIPES["tt"](), max_epochs=2)
    trainer.save_checkpoint(tmp_path / "user.ckpt")
    loaded = DigitsClassifier.load_from_checkpoint(tmp_path / "user.ckpt")  # no callback needed
    assert isinstance(loaded.backbone.fc1, TTLinear)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), module.eval()(x))
