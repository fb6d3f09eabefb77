"""The technique base: moments of the run in three units (epoch, fraction, "step:N") resolved in one place, and a
structural change at a step in the middle of an epoch."""

from __future__ import annotations

import lightning as L
import pytest

from lightning_micro.callbacks import GradualMagnitudePruning, TTLayerSwap
from lightning_micro.callbacks.argument_checks import check_when
from lightning_micro.core.schedules import step_of
from lightning_micro.core.tensor_train import TTLinear
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from tests.helpers.small_conv_net import NET, SGD


@pytest.mark.parametrize(("value", "expected"), [(2, 2), (0.5, 0.5), ("step:7", "step:7"), ("step:007", "step:7")])
def test_a_moment_is_an_epoch_a_fraction_or_a_step(value, expected):
    assert check_when("start", value) == expected


@pytest.mark.parametrize("value", ["step:", "step:-1", "steps:3", "7", True, None])
def test_other_moments_are_refused_naming_the_three_forms(value):
    with pytest.raises(ValueError, match=r"start must be an epoch \(int >= 0\), a fraction .* or an optimizer step"):
        check_when("start", value)


def test_the_three_forms_resolve_to_steps():
    assert [step_of(w, steps_per_epoch=20, total_steps=60) for w in (1, 0.25, "step:13")] == [20, 15, 13]


def test_a_swap_at_a_step_happens_there_in_the_middle_of_an_epoch_and_pruning_follows(tmp_path):
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if isinstance(pl_module.net.fc1, TTLinear) and "swapped" not in seen:
                seen["swapped"] = trainer.global_step  # counts the step that just ran

    L.seed_everything(0)
    pruning = GradualMagnitudePruning(final_sparsity=0.5, start="step:0", end="step:30", update_every=5)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=20, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path,
                        callbacks=[TTLayerSwap(swap_at="step:13", ranks=4, include=["fc1"]), pruning, Probe()])
    trainer.fit(ClassifierModule(NET, SGD, input_shape=[1, 8, 8]), DigitsDataModule(batch_size=64))
    assert seen["swapped"] == 14  # swapped before step 13 ran, in epoch 0 (20 steps)
    assert (pruning.start_step, pruning.end_step) == (0, 30)
    assert any(name.startswith("fc1.cores.") for name in pruning.names)
