"""StructuredPruning in a fit: masks on the schedule, the removal (outputs unchanged, optimizer state sliced),
checkpoints and artifacts of the thinner network, DDP across the removal, and every bad argument."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_micro.artifact.format import load_compressed
from lightning_micro.callbacks import StructuredPruning
from lightning_micro.contract import export_compressed
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.ddp import run_on_two_ranks
from tests.helpers.fitting import StopAfterEpoch

RESNET = {"_target_": "lightning_micro.models.ResNet20", "input_shape": [1, 8, 8], "blocks_per_stage": 1,
          "widths": [8, 16, 16]}
LENET300 = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8], "hidden": [32, 16]}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}
REMOVE_AT = 12  # two steps after the schedule's last update at the end of epoch 0 (10 batches per epoch)


class Probe(L.Callback):
    """Records, at the removal step, the network's output on a fixed batch and the momentum of a weight."""

    def __init__(self, x: torch.Tensor, weight: str) -> None:
        self.x, self.weight = x, weight
        self.output = self.momentum = self.param = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != REMOVE_AT:
            return
        net = pl_module.net
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = net(self.x)
        net.train(was_training)
        param = dict(net.named_parameters())[self.weight]
        state = trainer.optimizers[0].state.get(param, {})
        self.param = param.detach().clone()
        self.momentum = state["momentum_buffer"].clone() if "momentum_buffer" in state else None


def fit(tmp_path: Path, technique: StructuredPruning, callbacks: list[L.Callback] = (), net: dict = RESNET,
        max_epochs: int = 3, ckpt_path: Path | None = None, stop_after: int | None = None
        ) -> tuple[L.Trainer, ClassifierModule]:
    L.seed_everything(0)
    module = ClassifierModule(net, SGD, input_shape=[1, 8, 8])
    extra = [StopAfterEpoch(stop_after)] if stop_after else []
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=10, limit_val_batches=2, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[*callbacks[:1], technique, *callbacks[1:], *extra,
                                                              ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(module, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return trainer, module


def test_removal_leaves_the_outputs_and_slices_the_optimizer_state(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    before, after = Probe(x, "layer1.0.conv1.weight"), Probe(x, "layer1.0.conv1.weight")
    pruning = StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3, remove_at=f"step:{REMOVE_AT}")
    _, module = fit(tmp_path, pruning, [before, after])  # before runs ahead of the callback, after behind it
    assert [e["transform"] for e in module.transforms] == ["channel_prune"]
    assert before.param.shape[:2] == (8, 8) and after.param.shape[:2] == (4, 4)  # its outputs and the stem's
    assert torch.allclose(after.output, before.output, atol=1e-5)  # the thinner network computes the same
    kept_out = pruning.kept["layer1.0.conv1"]
    kept_in = pruning.kept["conv1"]
    expected = before.momentum[kept_out][:, kept_in]
    assert after.momentum is not None and torch.equal(after.momentum, expected)  # sliced, not reset
    assert torch.equal(after.param, before.param[kept_out][:, kept_in])


def test_masked_channels_are_zero_and_stay_removed_as_the_ratio_grows(tmp_path):
    class Watch(L.Callback):
        kept: list[dict[str, list[int]]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step < 10 and pruning.kept:
                Watch.kept.append({k: list(v) for k, v in pruning.kept.items()})
                stream = pl_module.net.conv1.weight.detach()
                dropped = sorted(set(range(8)) - set(pruning.kept["conv1"]))
                assert float(stream[dropped].abs().sum()) == 0.0  # after the optimizer step too

    pruning = StructuredPruning(channel_ratio=0.75, start=0, end=1, update_every=2, schedule="linear")
    fit(tmp_path, pruning, [Watch()], max_epochs=2)
    sizes = [len(k["layer2.0.conv1"]) for k in Watch.kept]
    assert sizes[0] > sizes[-1] >= len(pruning.kept["layer2.0.conv1"]) == 4 and sizes == sorted(sizes, reverse=True)
    for earlier, later in zip(Watch.kept, Watch.kept[1:], strict=False):  # a removed channel never comes back
        assert all(set(later[g]) <= set(earlier[g]) for g in later)


def test_resume_after_the_removal_matches_the_uninterrupted_run_and_the_checkpoint_loads_thin(tmp_path):
    def make():
        return StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3)

    _, straight = fit(tmp_path / "straight", make(), max_epochs=3)
    fit(tmp_path / "first", make(), max_epochs=3, stop_after=2)
    checkpoint = tmp_path / "first" / "last.ckpt"
    assert [e["transform"] for e in torch.load(checkpoint, weights_only=True)["lightning_micro/transforms"]] == [
        "channel_prune"]
    loaded = ClassifierModule.load_from_checkpoint(checkpoint)  # rebuilt with the reduced shapes
    assert loaded.net.conv1.out_channels == 4 and loaded.net.layer1[0].conv1.out_channels == 4
    _, resumed = fit(tmp_path / "second", make(), max_epochs=3, ckpt_path=checkpoint)
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_the_artifact_is_the_thinner_network_and_a_shortened_run_still_exports_it(tmp_path):
    pruning = StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3)
    trainer, module = fit(tmp_path, pruning, max_epochs=2)
    export_compressed(trainer, tmp_path / "model.safetensors")
    deployed = load_compressed(tmp_path / "model.safetensors")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deployed(x), module.net.eval()(x), atol=1e-6)
    assert deployed.layer3[0].conv2.out_channels == 8
    # Stopped by max_steps before the removal (a quick look at a recipe): export removes the masked channels.
    late = StructuredPruning(channel_ratio=0.5, start=0, end=2, update_every=3)
    L.seed_everything(0)
    module = ClassifierModule(RESNET, SGD, input_shape=[1, 8, 8])
    trainer = L.Trainer(max_epochs=3, max_steps=15, limit_train_batches=10, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[late])
    trainer.fit(module, DigitsDataModule(batch_size=64))
    masked_out = module.net.eval()(x).detach()
    export_compressed(trainer, tmp_path / "short.safetensors")
    short = load_compressed(tmp_path / "short.safetensors")
    assert sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in module.net.parameters()) or (
        [e["transform"] for e in module.transforms] == ["channel_prune"])
    with torch.no_grad():
        assert torch.allclose(short(x), masked_out, atol=1e-5)


def test_global_scope_ranks_channels_across_groups(tmp_path):
    pruning = StructuredPruning(channel_ratio=0.5, scope="global", start=0, end=1, update_every=5,
                                overrides={"layer1.0.conv1": 0.25})
    fit(tmp_path, pruning, max_epochs=2)
    kept = {g.name: len(pruning.kept[g.name]) for g in pruning.groups}
    assert kept["layer1.0.conv1"] == 6  # its own ratio
    free = [g for g in pruning.groups if g.name != "layer1.0.conv1"]
    assert sum(kept[g.name] for g in free) == sum(g.size for g in free) // 2
    assert len({kept[g.name] / g.size for g in free}) > 1  # not every group lost the same share


def test_bn_penalty_shrinks_the_selected_batchnorm_scales(tmp_path):
    _, plain = fit(tmp_path / "plain", StructuredPruning(channel_ratio=0.1, importance="bn_scale", start=1, end=2),
                   max_epochs=3)
    _, slim = fit(tmp_path / "slim", StructuredPruning(channel_ratio=0.1, importance="bn_scale", start=1, end=2,
                                                       bn_penalty=5e-2), max_epochs=3)
    assert slim.net.bn1.weight.abs().sum() < 0.8 * plain.net.bn1.weight.abs().sum()


def test_ddp_two_processes_remove_the_same_channels_and_train_on(tmp_path):
    saved = run_on_two_ranks(tmp_path, "structured")
    assert saved["transforms"] == ["channel_prune"]
    assert saved["weights"]["fc1.weight"].shape == (150, 64) and saved["weights"]["fc2.weight"].shape == (50, 150)


# --- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ({"channel_ratio": 1.0}, r"channel_ratio must be a number in \[0, 1\), got 1.0"),
    ({"channel_ratio": -0.1}, r"channel_ratio must be a number in \[0, 1\), got -0.1"),
    ({"overrides": {"conv1": 1.5}}, r"overrides\['conv1'\] must be a number in \[0, 1\)"),
    ({"importance": "taylor"}, r"importance must be one of \['l1', 'l2', 'bn_scale'\], got 'taylor'"),
    ({"scope": "local"}, "scope must be 'layerwise' or 'global'"),
    ({"min_channels": 0}, "min_channels must be an integer >= 1, got 0"),
    ({"round_to": 2.5}, "round_to must be an integer >= 1, got 2.5"),
    ({"update_every": 0}, "update_every must be an integer >= 1"),
    ({"end": 2, "remove_at": 1}, r"remove_at \(1\) is before end \(2\)"),
    ({"start": 3, "end": 1}, r"end \(1\) is before start \(3\)"),
    ({"schedule": "exp"}, "schedule must be one of"),
    ({"bn_penalty": -1}, "bn_penalty must be a number >= 0"),
    ({"include": ["re:("]}, "include: 're:\\(' is not a valid regular expression"),
])
def test_bad_arguments_name_themselves(args, message):
    with pytest.raises(ValueError, match=message):
        StructuredPruning(**args)


def _check(net: nn.Module, shape=(1, 1, 8, 8), **args) -> StructuredPruning:
    pruning = StructuredPruning(**args)
    pruning.check_model(net, torch.zeros(shape))
    return pruning


@pytest.mark.parametrize(("args", "message"), [
    ({"min_channels": 12}, r"min_channels=12 is more than conv1 has \(8 channels\); allowed: 1 to .* \(8\)"),
    ({"include": ["layer9*"]}, r"include: pattern 'layer9\*' matches no layer; layers whose channels can be removed: "
                               "conv1, layer1.0.conv1, layer1.0.conv2, layer2.0.conv1"),
    ({"exclude": ["fc"]}, r"exclude: pattern 'fc' matches only fc, whose output channels are the network's outputs"),
    ({"overrides": {"nothing": 0.5}}, "overrides: pattern 'nothing' matches no layer"),
    ({"include": ["conv1"], "exclude": ["conv1"]}, r"include \['conv1'\] minus exclude \['conv1'\] leaves no layer"),
])
def test_a_selection_that_cannot_work_is_refused_before_training(args, message):
    with pytest.raises(ValueError, match=message):
        _check(ClassifierModule(RESNET, SGD, input_shape=[1, 8, 8]).net, **args)


def test_bn_scale_needs_batchnorm_and_grouped_convolutions_are_refused():
    lenet = ClassifierModule(LENET300, SGD, input_shape=[1, 8, 8]).net
    with pytest.raises(ValueError, match="importance=bn_scale needs a BatchNorm after every selected layer, but "
                                         "fc1's channels have none"):
        _check(lenet, importance="bn_scale")
    grouped = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(128, 3))
    with pytest.raises(ValueError, match=r"include: pattern '0' selects 0, whose channels cannot be removed "
                                         r"consistently: it couples 1 \(Conv2d, groups=2\)"):
        _check(grouped, include=["0"])


def test_without_an_example_input_it_says_how_to_give_one():
    with pytest.raises(ValueError, match="set self.example_input_array"):
        StructuredPruning().check_model(nn.Linear(3, 3))


def test_bad_input_on_the_command_line_is_one_config_error_before_training(tmp_path):
    cfg = compose_cfg([*FAST, "compression=structured", "compression.structured.min_channels=500"], tmp_path)
    with pytest.raises(ConfigError, match=r"^compression.structured: min_channels=500 is more than fc1 has \(300 "):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
    cfg = compose_cfg([*FAST, "compression=[qat,structured]", "compression.qat.start=0",
                       "compression.structured.end=0"], tmp_path / "b")
    with pytest.raises(ConfigError, match="^compression.qat: int8 QAT traces the network at start=0, before "
                                          "StructuredPruning changes it at remove_at=0"):
        train(cfg)
