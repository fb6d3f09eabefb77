"""Exact resume: a run stopped by a real SIGTERM in the middle of an epoch, with its technique active, and resumed
from the checkpoint it left (``InterruptionCheckpoint``) ends with the weights of a run that never stopped, for
every technique; so does int8 QAT resumed from the end of its first quantized epoch; no other exception leaves a
checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_micro.callbacks import InterruptionCheckpoint
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.failures import RunInterrupted
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg

EPOCH = 6  # training batches per epoch; 3 epochs: 18 steps
BASE = [*FAST, "debug=limit", "trainer.max_epochs=3", f"trainer.limit_train_batches={EPOCH}",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
# Swaps and the int8 prepare happen at epoch 1 (step 6); the interruption comes after step 8, two batches into
# epoch 1, where every technique is at work (pruning masks move at even steps until step 12).
INTERRUPT_AT = 8
GMP = ["compression.gmp.update_every=2", "compression.gmp.end=2"]
# A convolutional network for 8x8 digits (LeNet-5 needs 16x16 images): a one-block-per-stage ResNet.
SMALL_RESNET = ["model=resnet20", "model.net.blocks_per_stage=1", "model.net.widths=[8,16,16]"]
TECHNIQUES = {
    "gmp": ["compression=gmp", *GMP],
    "qat-int8": ["compression=qat", "compression.qat.start=1"],
    "qat-4bit": ["compression=qat", "compression.qat.weight_bits=4", "compression.qat.activation_bits=32",
                 "compression.qat.start=0"],
    "tt": ["compression=tt", "compression.tt.swap_at=1", "compression.tt.ranks=4"],
    "lowrank": [*SMALL_RESNET, "compression=lowrank", "compression.lowrank.swap_at=1",
                "compression.lowrank.include=[layer2.*]"],
    "gmp+qat": ["compression=[gmp,qat]", *GMP, "compression.qat.start=1"],
    # residual channel groups masked every 2 steps over epoch 0, removed at step 6: interrupted after the removal
    "structured": [*SMALL_RESNET, "compression=structured", "compression.structured.end=1",
                   "compression.structured.update_every=2"],
    # ... and interrupted while masking, before the removal at step 12
    "structured-masking": [*SMALL_RESNET, "compression=structured", "compression.structured.end=2",
                           "compression.structured.update_every=2"],
    # blocks skipped with p=0.5 over epoch 0 (layer1.0 is the one-block-per-stage ResNet's droppable block), removed
    # at step 6: interrupted after the removal
    "layerdrop": [*SMALL_RESNET, "compression=layerdrop", "compression.layerdrop.p=0.5",
                  "compression.layerdrop.prune_at=1"],
    # ... and interrupted while dropping, before the removal at step 12: the resumed run draws the same skips
    "layerdrop-dropping": [*SMALL_RESNET, "compression=layerdrop", "compression.layerdrop.p=0.5",
                           "compression.layerdrop.prune_at=2"],
}


class SendSigterm(L.Callback):
    """Sends this process a real SIGTERM after optimizer step ``at_step``; Lightning stops after that batch."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


class RaiseAt(L.Callback):
    """Raises ``RuntimeError`` (or KeyboardInterrupt) after optimizer step ``at_step``."""

    def __init__(self, at_step: int, interrupt: bool = False) -> None:
        self.at_step, self.interrupt = at_step, interrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt if self.interrupt else RuntimeError("not an interruption")


def _run(out: Path, overrides: list[str]) -> Path:
    train(compose_cfg([*BASE, *overrides], out))
    return out


def _callback(name: str, target: type, **args) -> list[str]:
    return [f"+callbacks.{name}._target_={target.__module__}.{target.__qualname__}",
            *(f"+callbacks.{name}.{k}={v}" for k, v in args.items())]


def _interrupted(out: Path, overrides: list[str], at_step: int = INTERRUPT_AT) -> Path:
    with pytest.raises(RunInterrupted) as info:  # the run reports Lightning's SIGTERMException
        _run(out, [*overrides, *_callback("sigterm", SendSigterm, at_step=at_step)])
    assert isinstance(info.value.__cause__, SIGTERMException)
    checkpoint = out / "checkpoints" / "interrupted.ckpt"
    assert checkpoint.is_file() and f"ckpt_path={checkpoint}" in str(info.value)
    return checkpoint


def _weights(run: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, weights_only=True)["state_dict"]


def _assert_same_weights(resumed: Path, straight: Path) -> None:
    a, b = _weights(resumed), _weights(straight)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two threads on two shared cores make each step of these small networks 50x slower; results do not depend
    # on it (each pair of runs compared uses the same setting).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted run of each technique, shared by the tests below."""
    root = tmp_path_factory.mktemp("straight")
    return {name: _run(root / name, [*overrides, "callbacks.model_checkpoint.save_top_k=-1"])
            for name, overrides in TECHNIQUES.items()}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_sigterm_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(technique, straight_runs, tmp_path):
    overrides = TECHNIQUES[technique]
    checkpoint = _interrupted(tmp_path / "interrupted", overrides)
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == INTERRUPT_AT
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader == [{"epoch": 1, "batches": INTERRUPT_AT - EPOCH, "batch_size": 64, "samples": 1257}]
    if technique not in ("gmp", "structured-masking", "layerdrop-dropping"):  # the structure had changed before it
        assert state["lightning_micro/transforms"]
    _run(tmp_path / "resumed", [*overrides, f"ckpt_path={checkpoint}"])
    _assert_same_weights(tmp_path / "resumed", straight_runs[technique])


def test_int8_resumed_after_its_first_quantized_epoch_matches(straight_runs, tmp_path):
    # Without validation the epoch's checkpoint is written with the observers on, as in a checkpoint written
    # mid-epoch; Lightning's model summary then ran the all-zero example input through them on resume.
    overrides = [*TECHNIQUES["qat-int8"], "trainer.limit_val_batches=0", "callbacks.model_checkpoint.save_top_k=-1"]
    first = _run(tmp_path / "first", overrides)
    assert any(k.endswith("observer_enabled") and bool(v.all())
               for k, v in _weights(first, "epoch_001.ckpt").items())
    _run(tmp_path / "resumed", [*overrides, f"ckpt_path={first / 'checkpoints' / 'epoch_001.ckpt'}"])
    for name in ("epoch_002.ckpt", "last.ckpt"):
        a, b = _weights(tmp_path / "resumed", name), _weights(first, name)
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name
    # Validation changes no weight nor range (it only left the observers switched off in the checkpoints)
    a, b = _weights(tmp_path / "resumed"), _weights(straight_runs["qat-int8"])
    assert [k for k in a if not k.endswith("_enabled") and not torch.equal(a[k], b[k])] == []


def test_no_checkpoint_on_another_exception_nor_at_a_normal_end(straight_runs, tmp_path):
    with pytest.raises(RuntimeError, match="not an interruption"):
        _run(tmp_path, [*TECHNIQUES["qat-int8"], *_callback("fail", RaiseAt, at_step=INTERRUPT_AT)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # the run did write its epoch checkpoints
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
    assert all(not (run / "checkpoints" / "interrupted.ckpt").exists() for run in straight_runs.values())


def test_ctrl_c_between_steps_saves_a_checkpoint_that_resumes_exactly(straight_runs, tmp_path):
    # Raised in the middle of a batch's end hooks, so Lightning restarts from another stage than after SIGTERM.
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C while it shuts down
    try:
        with pytest.raises(RunInterrupted) as info:  # the run reports Lightning's sys.exit(1)
            _run(tmp_path / "interrupted", [*TECHNIQUES["gmp"], *_callback("ctrl_c", RaiseAt, at_step=3,
                                                                           interrupt=True)])
    finally:
        signal.signal(signal.SIGINT, handler)
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "interrupted.ckpt"
    assert "Ctrl-C" in str(info.value) and f"ckpt_path={checkpoint}" in str(info.value)
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    _run(tmp_path / "resumed", [*TECHNIQUES["gmp"], f"ckpt_path={checkpoint}"])
    _assert_same_weights(tmp_path / "resumed", straight_runs["gmp"])


class RecordBatches(L.Callback):
    """The labels of every training batch, by (epoch, batch index)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[(trainer.current_epoch, batch_idx)] = batch[1].tolist()


def _fit_with_a_worker(out: Path, callbacks: list[L.Callback], ckpt_path: Path | None = None) -> None:
    L.seed_everything(0)
    module = ClassifierModule({"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
                              {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05}, input_shape=[1, 8, 8])
    trainer = L.Trainer(max_epochs=2, limit_train_batches=EPOCH, limit_val_batches=0, accelerator="cpu", devices=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=out, callbacks=callbacks)
    trainer.fit(module, DigitsDataModule(num_workers=1), ckpt_path=ckpt_path)


def test_training_loader_resumes_at_the_next_unseen_batch_though_a_worker_reads_ahead(tmp_path):
    # The worker process asks the batch sampler for batches ahead of training; the position saved is the
    # trainer's count, and the resumed sampler starts at the epoch it resumes, not at 0.
    straight = RecordBatches()
    _fit_with_a_worker(tmp_path / "straight", [straight])
    stop = InterruptionCheckpoint(tmp_path / "interrupted")
    with pytest.raises(SIGTERMException):
        _fit_with_a_worker(tmp_path / "interrupted", [SendSigterm(INTERRUPT_AT), stop])
    resumed = RecordBatches()
    _fit_with_a_worker(tmp_path / "resumed", [resumed], ckpt_path=Path(stop.ckpt_path))
    assert list(resumed.seen) == [(1, i) for i in range(INTERRUPT_AT - EPOCH, EPOCH)]
    assert resumed.seen == {key: straight.seen[key] for key in resumed.seen}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dirpath": ""}, "dirpath must be a non-empty directory path"),
    ({"dirpath": "c", "filename": "x.ckpt"}, "filename must be a non-empty file name"),
    ({"dirpath": "c", "filename": "a/b"}, "filename must be a non-empty file name"),
])
def test_interruption_checkpoint_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InterruptionCheckpoint(**kwargs)
