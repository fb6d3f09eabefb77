"""GradualMagnitudePruning: masks hold through optimizers, resume is exact, DDP agrees, export is sparse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_micro.artifact.format import load_compressed, read_metadata
from lightning_micro.callbacks import GradualMagnitudePruning
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, ROOT, compose_cfg
from tests.helpers.ddp import PRUNING_SCRIPT
from tests.helpers.fitting import StopAfterEpoch, trainer_for

NET = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3, "weight_decay": 1e-4}
COSINE = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": 4}


class CheckPrunedStayZero(L.Callback):
    """Placed before the pruning callback, so it sees the weights straight after the optimizer step, before
    the callback could mask them again: masked grads and zeroed optimizer state must keep them at zero."""

    def __init__(self, pruning: GradualMagnitudePruning) -> None:
        self.pruning = pruning
        self.checks = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.net.named_parameters())
        for name, mask in self.pruning.masks.items():
            assert not bool(params[name].detach()[~mask].any()), f"{name} revived at step {trainer.global_step}"
            for value in trainer.optimizers[0].state.get(params[name], {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    assert not bool(value[~mask].any()), f"optimizer state of pruned {name} is not zero"
            self.checks += 1


@pytest.mark.parametrize(
    ("optimizer", "trainer_kwargs"),
    [(SGD, {}), (ADAM, {}), (SGD, {"accumulate_grad_batches": 3}), (ADAM, {"precision": "bf16-mixed"}),
     ({**ADAM, "_target_": "torch.optim.AdamW", "weight_decay": 0.1}, {})],
    ids=["sgd-momentum", "adam", "sgd-accumulate3", "adam-bf16-mixed", "adamw"],
)
def test_pruned_weights_stay_zero_after_every_step(optimizer, trainer_kwargs, tmp_path):
    L.seed_everything(0)
    module = ClassifierModule(NET, optimizer, input_shape=[1, 8, 8])
    pruning = GradualMagnitudePruning(final_sparsity=0.9, start=0, end=2, update_every=4)
    probe = CheckPrunedStayZero(pruning)
    trainer = trainer_for(tmp_path, [probe, pruning], enable_checkpointing=False, **trainer_kwargs)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    assert probe.checks > 50
    assert pruning.pruned_fraction() == pytest.approx(0.9, abs=1e-4)
    assert pruning.target == pytest.approx(0.9)


class NoisySGD(torch.optim.SGD):
    """An optimizer that moves every weight, zero gradient or not: the case that needs masking after the step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)
        return loss


def test_weights_are_masked_after_the_step_for_other_optimizers(tmp_path):
    L.seed_everything(0)
    module = ClassifierModule(NET, {"_target_": f"{__name__}.NoisySGD", "_partial_": True, "lr": 0.01},
                              input_shape=[1, 8, 8])
    pruning = GradualMagnitudePruning(final_sparsity=0.7, start=0, end=1, update_every=4)
    trainer_for(tmp_path, [pruning, CheckPrunedStayZero(pruning)], max_epochs=2,
                enable_checkpointing=False).fit(module, DigitsDataModule(batch_size=32))
    assert pruning.pruned_fraction() == pytest.approx(0.7, abs=1e-4)


def _fit(tmp_path: Path, stop_after: int | None = None, ckpt_path: Path | None = None):
    L.seed_everything(0)
    module = ClassifierModule(NET, SGD, COSINE, input_shape=[1, 8, 8])
    pruning = GradualMagnitudePruning(final_sparsity=0.8, start=0, end=3, update_every=5)
    callbacks = [pruning, ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    trainer_for(tmp_path, callbacks, max_epochs=4).fit(module, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return module, pruning


def test_resume_mid_schedule_matches_an_uninterrupted_run(tmp_path):
    straight, straight_pruning = _fit(tmp_path / "straight")
    _, interrupted = _fit(tmp_path / "first", stop_after=2)
    assert 0.0 < interrupted.target < 0.8  # stopped mid-schedule
    resumed, resumed_pruning = _fit(tmp_path / "second", ckpt_path=tmp_path / "first" / "last.ckpt")
    assert resumed_pruning.masks.keys() == straight_pruning.masks.keys()
    for name, mask in straight_pruning.masks.items():
        assert torch.equal(resumed_pruning.masks[name], mask), name
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_pruned_checkpoint_loads_into_the_plain_model(tmp_path):
    module, pruning = _fit(tmp_path)
    plain = ClassifierModule.load_from_checkpoint(tmp_path / "last.ckpt")  # no callback involved
    weights = dict(plain.net.named_parameters())
    for name, mask in pruning.masks.items():
        assert not bool(weights[name].detach()[~mask].any())
    assert torch.equal(plain.net.fc1.weight, module.net.fc1.weight)


def test_ddp_masks_are_identical_on_both_ranks(tmp_path):
    out = subprocess.run([sys.executable, str(PRUNING_SCRIPT), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["masks"].keys() == rank1["masks"].keys() and rank0["masks"]
    for name in rank0["masks"]:
        assert torch.equal(rank0["masks"][name], rank1["masks"][name]), name
        assert torch.equal(rank0["weights"][name], rank1["weights"][name]), name


def test_run_exports_sparse_artifact_that_reloads_in_a_fresh_process(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_epochs=3", "compression=gmp", "compression.gmp.final_sparsity=0.9",
                       "compression.gmp.end=2"], tmp_path)
    metrics = train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert report["gmp/pruned_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert report["sparsity/global"] > 0.85
    assert report["size/artifact_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    assert report["size/ratio"] > 5  # bitmask + non-zeros instead of dense fp32
    codecs = read_metadata(tmp_path / "model.safetensors")["codecs"]
    assert {codecs[n] for n in ("fc1.weight", "fc2.weight", "fc3.weight")} == {"bitmask"}
    assert codecs["fc1.bias"] == "dense"

    # Same test accuracy from the artifact, computed in a fresh process.
    code = (
        "import torch\n"
        "from lightning_micro.data import DigitsDataModule\n"
        "from lightning_micro.artifact.format import load_compressed\n"
        f"net = load_compressed({str(tmp_path / 'model.safetensors')!r})\n"
        "dm = DigitsDataModule(); dm.setup('test')\n"
        "x, y = dm.test_set.tensors\n"
        "print((net(x).argmax(1) == y).float().mean().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(metrics["test/acc"], abs=1e-6)
    net = load_compressed(tmp_path / "model.safetensors")
    weights = [net.fc1.weight, net.fc2.weight, net.fc3.weight]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.9, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0}, r"final_sparsity must be a number in \[0, 1\)"),
        ({"final_sparsity": -0.1}, r"final_sparsity must be a number in \[0, 1\)"),
        ({"initial_sparsity": 0.5, "final_sparsity": 0.4}, "initial_sparsity .* must not exceed"),
        ({"start": 5, "end": 2}, r"end \(2\) is before start \(5\)"),
        ({"end": 1.5}, "floats are fractions of the run"),
        ({"start": -1}, "start must be an epoch >= 0"),
        ({"update_every": 0}, "update_every must be an integer >= 1"),
        ({"schedule": "exponential"}, r"schedule must be one of \['cubic', 'linear', 'one_shot'\]"),
        ({"scope": "channel"}, "scope must be 'global' or 'layerwise'"),
        ({"include": ["re:fc["]}, "include: .*not a valid regular expression"),
        ({"overrides": {"fc3*": 1.2}}, r"overrides\['fc3\*'\] must be a number in \[0, 1\)"),
        ({"last_layer_sparsity": 2}, "last_layer_sparsity must be"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradualMagnitudePruning(**kwargs)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compression.gmp.include=[fc9*]", r"^compression\.gmp: include: pattern 'fc9\*' matches no prunable"),
        ("+compression.gmp.overrides={conv1.weight:0.5}", r"^compression\.gmp: overrides: pattern 'conv1.weight'"),
        ("compression.gmp.final_sparsity=1.0", r"^compression\.gmp: .*final_sparsity must be"),
    ],
)
def test_bad_config_fails_before_training(override, message, tmp_path):
    cfg = compose_cfg([*FAST, "compression=gmp", override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_end_after_the_last_epoch_is_refused(tmp_path):
    pruning = GradualMagnitudePruning(end=10)
    module = ClassifierModule(NET, SGD, input_shape=[1, 8, 8])
    with pytest.raises(ValueError, match=r"end=10 epochs is after the end of training \(trainer.max_epochs=3\)"):
        trainer_for(tmp_path, [pruning]).fit(module, DigitsDataModule())


def test_layer_overrides_and_denser_last_layer(tmp_path):
    L.seed_everything(0)
    module = ClassifierModule(NET, SGD, input_shape=[1, 8, 8])
    pruning = GradualMagnitudePruning(final_sparsity=0.9, end=1, update_every=2, scope="layerwise",
                                      overrides={"fc2.weight": 0.5}, last_layer_sparsity=0.2)
    trainer_for(tmp_path, [pruning], max_epochs=2, enable_checkpointing=False).fit(module, DigitsDataModule())
    zero = {n: float((p == 0).float().mean()) for n, p in module.net.named_parameters() if n.endswith("weight")}
    assert zero["fc1.weight"] == pytest.approx(0.9, abs=1e-3)
    assert zero["fc2.weight"] == pytest.approx(0.5, abs=1e-3)
    assert zero["fc3.weight"] == pytest.approx(0.2, abs=1e-2)
