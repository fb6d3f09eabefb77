"""A teacher checkpoint is read through a LightningModule class: by default the student's own, so a user's own
module teaches as the zoo's does; a class named by ``teacher_class`` must be trusted as every class a file names."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_micro.callbacks import KnowledgeDistillation
from lightning_micro.callbacks.knowledge_distillation import load_teacher
from lightning_micro.data import DigitsDataModule
from tests.helpers.fitting import trainer_for
from tests.helpers.user_modules import DigitsClassifier


def trainer(tmp_path, callbacks=(), max_epochs=1):
    return trainer_for(tmp_path, list(callbacks), max_epochs=max_epochs, enable_checkpointing=False,
                       limit_train_batches=4, limit_val_batches=0)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("teacher")
    L.seed_everything(0)
    fitted = trainer(tmp_path)
    module = DigitsClassifier(width=8)
    fitted.fit(module, DigitsDataModule(batch_size=64))
    path = tmp_path / "teacher.ckpt"
    fitted.save_checkpoint(path)
    return path, module.backbone.eval()


def test_a_users_module_teaches_from_its_checkpoint_with_the_students_class(teacher_checkpoint, tmp_path):
    path, backbone = teacher_checkpoint
    distill = KnowledgeDistillation(teacher=str(path), alpha=0.5)
    student = DigitsClassifier(width=16)
    trainer(tmp_path, [distill]).fit(student, DigitsDataModule(batch_size=64))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(distill.net(x), backbone(x))  # the teacher's network, its trained weights
    assert distill.teacher_seconds > 0  # it ran in the student's fit


def test_teacher_class_names_the_class_that_reads_the_checkpoint(teacher_checkpoint):
    path, backbone = teacher_checkpoint
    distill = KnowledgeDistillation(teacher=str(path), teacher_class="tests.helpers.user_modules.DigitsClassifier",
                                    trusted=[DigitsClassifier])
    distill.check_model(DigitsClassifier().backbone, torch.zeros(1, 1, 8, 8))  # loaded before any trainer exists
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(distill.net(x), backbone(x))


def test_an_untrusted_teacher_class_is_refused_by_name(teacher_checkpoint):
    path, _ = teacher_checkpoint
    distill = KnowledgeDistillation(teacher=str(path), teacher_class="tests.helpers.user_modules.DigitsClassifier")
    with pytest.raises(ValueError, match=r"teacher_class._target_ 'tests.helpers.user_modules.DigitsClassifier' is "
                                         r"not trusted"):
        distill.check_model(DigitsClassifier().backbone, torch.zeros(1, 1, 8, 8))


def test_a_checkpoint_needs_a_class(teacher_checkpoint):
    with pytest.raises(ValueError, match="teacher_class"):
        load_teacher(teacher_checkpoint[0])


@pytest.mark.parametrize("bad", ["", 3])
def test_teacher_class_must_be_a_class_path(bad):
    with pytest.raises(ValueError, match=r"teacher_class must be the dotted path of a LightningModule class"):
        KnowledgeDistillation(teacher="x.ckpt", teacher_class=bad)
