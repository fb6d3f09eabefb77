"""KnowledgeDistillation: the loss against a hand computation, a frozen teacher in eval on the student's device,
composition with pruning, the report, and every bad argument."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    KnowledgeDistillation,
    LayerDropping,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.contract import export_compressed
from lightning_micro.core.distillation import distillation_term, soft_kl
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}


def lenet300(num_classes: int = 10) -> ClassifierModule:
    net = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8], "num_classes": num_classes,
           "hidden": [64, 32]}
    return ClassifierModule(net, SGD, input_shape=[1, 8, 8], num_classes=num_classes)


def fit(tmp_path: Path, module: ClassifierModule, callbacks: list[L.Callback], max_epochs: int = 2) -> L.Trainer:
    L.seed_everything(0)
    checkpointing = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(max_epochs=max_epochs, limit_val_batches=2, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=checkpointing, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    return trainer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A dense LeNet-300 trained on digits, as an artifact."""
    root = tmp_path_factory.mktemp("teacher")
    trainer = fit(root, lenet300(), [], max_epochs=4)
    export_compressed(trainer, root / "model.safetensors")
    return root / "model.safetensors"


def test_the_loss_is_the_weighted_softened_kl_minus_the_cross_entropy():
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    targets = torch.randint(0, 10, (6,))
    t = 3.0
    p_teacher, p_student = torch.softmax(teacher / t, 1), torch.softmax(student / t, 1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(1).mean() * t * t  # by hand
    ce = -torch.log_softmax(student, 1)[torch.arange(6), targets].mean()
    assert soft_kl(student, teacher, t) == pytest.approx(float(kl), rel=1e-5)
    assert distillation_term(student, teacher, targets, 0.7, t) == pytest.approx(float(0.7 * (kl - ce)), rel=1e-5)
    assert float(distillation_term(student, teacher, targets, 0.0, t)) == 0.0
    # the task loss plus the term is the mix (1 - alpha) CE + alpha T^2 KL
    assert float(ce + distillation_term(student, teacher, targets, 0.25, t)) == pytest.approx(
        float(0.75 * ce + 0.25 * kl), rel=1e-5)


class TeacherProbe(L.Callback):
    """Records, at every training step, whether the teacher is in eval mode and where its weights are."""

    def __init__(self, distillation: KnowledgeDistillation) -> None:
        self.distillation = distillation
        self.modes: set[bool] = set()
        self.devices: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.modes.add(self.distillation.net.training)
        self.devices.update(str(p.device) for p in self.distillation.net.parameters())


def test_the_teacher_stays_frozen_in_eval_and_the_student_learns_with_pruning(teacher, tmp_path):
    distillation = KnowledgeDistillation(teacher=str(teacher), alpha=0.5, temperature=4.0)
    pruning = GradualMagnitudePruning(final_sparsity=0.5, start=0, end=1, update_every=3)
    probe = TeacherProbe(distillation)
    module = lenet300()
    trainer = fit(tmp_path, module, [pruning, distillation, probe], max_epochs=3)
    assert probe.modes == {False} and probe.devices == {"cpu"}
    assert all(not p.requires_grad for p in distillation.net.parameters())
    assert not any(n.startswith("teacher") for n in module.state_dict())  # not part of the module
    fresh = KnowledgeDistillation(teacher=str(teacher))
    fresh.check_model(module.net, torch.zeros(1, 1, 8, 8))
    for (name, a), b in zip(distillation.net.state_dict().items(), fresh.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the teacher's weights never moved
    tested = trainer.test(module, DigitsDataModule(batch_size=64), verbose=False)[0]["test/acc"]
    assert tested > 0.8, tested
    fields = distillation.report_fields(module.net)
    assert fields["distill/alpha"] == 0.5 and 0 < fields["distill/teacher_s"] < fields["distill/fit_s"]
    assert 0 < fields["distill/teacher_share"] < 1


def test_a_checkpoint_of_a_run_is_a_teacher_too(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = lenet300()
    fit(tmp_path, module, [ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=1)
    distillation = KnowledgeDistillation(teacher=str(tmp_path / "last.ckpt"))
    distillation.check_model(module.net, torch.zeros(1, 1, 8, 8))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(distillation.net(x), module.net.eval()(x))


@pytest.mark.parametrize(("args", "message"), [
    ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\], got 1.5"),
    ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\], got -0.1"),
    ({"temperature": 0}, "temperature must be a number > 0, got 0"),
    ({"temperature": -2.0}, "temperature must be a number > 0, got -2.0"),
    ({"teacher": ""}, "teacher must be the path of a trained run's artifact"),
])
def test_each_bad_argument_is_refused_naming_it(args, message):
    with pytest.raises(ValueError, match=message):
        KnowledgeDistillation(**{"teacher": "x.safetensors", **args})


def test_a_missing_teacher_or_one_with_other_classes_is_refused_before_training(teacher, tmp_path):
    module = lenet300()
    with pytest.raises(ValueError, match="teacher: no file at .*nowhere.safetensors"):
        fit(tmp_path, module, [KnowledgeDistillation(teacher=str(tmp_path / "nowhere.safetensors"))])
    with pytest.raises(ValueError, match="teacher is not set"):
        fit(tmp_path, module, [KnowledgeDistillation()])
    five = tmp_path / "five"  # a 5-class network, untrained (digits has 10 classes)
    untrained = L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, accelerator="cpu", logger=False,
                          enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                          default_root_dir=five)
    untrained.fit(lenet300(num_classes=5), DigitsDataModule(batch_size=64))
    export_compressed(untrained, five / "model.safetensors")
    with pytest.raises(ValueError, match=r"teacher: .* gives \[5\] outputs per input, the network \[10\]"):
        fit(tmp_path, module, [KnowledgeDistillation(teacher=str(five))])  # a run directory works as a path


def test_on_the_command_line_a_bad_teacher_is_a_config_error_before_training(tmp_path):
    cfg = compose_cfg([*FAST, "compression=distill", f"compression.distill.teacher={tmp_path}/none.ckpt"], tmp_path)
    with pytest.raises(ConfigError, match="^compression.distill: teacher: no file at"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


RESNET = {"_target_": "lightning_micro.models.ResNet20", "input_shape": [1, 8, 8], "blocks_per_stage": 2,
          "widths": [8, 16, 16]}
OTHERS = {
    "qat8": lambda: QuantizationAwareTraining(start=1),
    "qat4": lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0),
    "tt": lambda: TTLayerSwap(swap_at=1, ranks=4, include=["fc"]),
    "lowrank": lambda: LowRankDecomposition(swap_at=1, rank=4, include=["layer2.0.conv1"]),
    "structured": lambda: StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3),
    "layerdrop": lambda: LayerDropping(p=0.3, prune_at=1, remove=2),
}


@pytest.mark.parametrize("other", list(OTHERS))
def test_distillation_composes_with_each_technique(other, teacher, tmp_path):
    from lightning_micro.artifact.format import load_compressed

    distillation = KnowledgeDistillation(teacher=str(teacher), alpha=0.5, temperature=4.0)
    module = ClassifierModule(RESNET, SGD, input_shape=[1, 8, 8])
    trainer = fit(tmp_path, module, [OTHERS[other](), distillation], max_epochs=2)
    assert distillation.teacher_seconds > 0  # the teacher ran at every step of the composed fit
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_compressed(path)(x), module.net.eval()(x), atol=1e-5)
