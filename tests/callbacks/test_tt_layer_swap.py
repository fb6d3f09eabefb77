"""TTLayerSwap: swaps at the right epoch from the trained weights, rebuilds the training state, resumes exactly,
exports cores that reload in a fresh process, runs under DDP, refuses bad input before training."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_micro.artifact.format import load_compressed, read_metadata
from lightning_micro.callbacks import TTLayerSwap
from lightning_micro.core.tensor_train import TTLinear
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.ddp import run_on_two_ranks
from tests.helpers.fitting import NET, SGD, RecordAroundSwap, fit, trainer_for
from tests.helpers.fresh_process import fresh_process_accuracy


def test_run_swaps_reports_ranks_and_exports_cores_that_reload_in_a_fresh_process(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_epochs=3", "compression=tt", "compression.tt.swap_at=1",
                       "compression.tt.include=[fc1]"], tmp_path)
    metrics = train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    artifact = tmp_path / "model.safetensors"
    assert [e["transform"] for e in read_metadata(artifact)["transforms"]] == ["tt_swap"]
    net = load_compressed(artifact)
    assert isinstance(net.fc1, TTLinear) and net.fc1.ranks == [1, 8, 8, 8, 1]
    keys = set(net.state_dict())
    assert {f"fc1.cores.{k}" for k in range(4)} <= keys and "fc1.weight" not in keys  # cores only
    assert metrics["test/acc"] > 0.8
    assert fresh_process_accuracy(artifact) == pytest.approx(metrics["test/acc"], abs=1e-6)
    cores = sum(c.numel() for c in net.fc1.cores)
    assert report["tt/fc1/ranks"] == "1-8-8-8-1"
    assert report["tt/fc1/params"] == cores + 300 and report["tt/fc1/dense_params"] == 64 * 300 + 300
    assert report["params/total"] == cores + 300 + (300 * 100 + 100) + (100 * 10 + 10)


def test_swap_at_full_rank_keeps_the_trained_function_and_training_goes_on(tmp_path):
    probe = RecordAroundSwap()
    module = fit(tmp_path, TTLayerSwap(swap_at=2, energy=1.0, include=["fc1"]), callbacks=[probe])
    assert isinstance(module.net.fc1, TTLinear)
    # TT-SVD of the trained weight at full rank: right after the swap the network computes what it did before.
    torch.testing.assert_close(probe.outputs["start2"], probe.outputs["end1"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(probe.outputs["end3"], probe.outputs["start2"])  # and the cores were trained


def test_swap_at_zero_trains_the_tt_layer_from_the_first_step(tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not seen:
                optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
                seen.append(all(id(c) in optimized for c in pl_module.net.fc1.cores))

    module = fit(tmp_path, TTLayerSwap(swap_at=0, ranks=4, include=["fc1"]), callbacks=[Probe()], max_epochs=2)
    assert seen == [True]  # the optimizer was built for the cores, before the first step
    assert [e["transform"] for e in module.transforms] == ["tt_swap"]


def test_mid_fit_swap_carries_the_learning_rate_schedule(tmp_path):
    seen = {}

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]

    fit(tmp_path, TTLayerSwap(swap_at=0.5, ranks=4, include=["fc1"]), callbacks=[Probe()])
    expected = {epoch: 0.05 * (1 + torch.cos(torch.tensor(epoch * torch.pi / 4)).item()) / 2 for epoch in range(4)}
    assert seen == pytest.approx(expected)


def test_resume_after_the_swap_matches_an_uninterrupted_run(tmp_path):
    make = lambda: TTLayerSwap(swap_at=1, compression_ratio=10, include=["fc1", "fc2"])  # noqa: E731
    straight = fit(tmp_path / "straight", make())
    fit(tmp_path / "first", make(), stop_after=2)  # one dense epoch, one after the swap
    checkpoint = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)
    assert [e["transform"] for e in checkpoint["lightning_micro/transforms"]] == ["tt_swap"]
    resumed = fit(tmp_path / "second", make(), ckpt_path=tmp_path / "first" / "last.ckpt")
    assert resumed.transforms == straight.transforms
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    plain = ClassifierModule.load_from_checkpoint(tmp_path / "first" / "last.ckpt")  # no callback needed
    assert isinstance(plain.net.fc1, TTLinear) and isinstance(plain.net.fc2, TTLinear)


def test_ddp_two_processes_train_the_same_cores(tmp_path):
    saved = run_on_two_ranks(tmp_path, "tt")
    assert saved["transforms"] == ["tt_swap"] and "fc1.cores.0" in saved["weights"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ranks": 0}, "ranks must be a positive integer"),
    ({"ranks": [4, -1, 4]}, "ranks must be a positive integer"),
    ({"ranks": 4, "energy": 0.9}, "exactly one of ranks, compression_ratio, energy"),
    ({"ranks": None, "compression_ratio": 0.5}, "compression_ratio must be a number > 1"),
    ({"ranks": None, "energy": 0.0}, "energy must be a number in \\(0, 1\\]"),
    ({"ranks": 4, "cores": 1}, "cores must be an integer >= 2"),
    ({"ranks": 4, "in_factors": [4, "x"]}, "in_factors must be a list of positive integers"),
    ({"ranks": 4, "swap_at": -1}, "swap_at must be an epoch >= 0"),
    ({"ranks": 4, "swap_at": 1.5}, "fractions of the run"),
    ({"ranks": 4, "include": ["re:("]}, "include: .* is not a valid regular expression"),
    ({"compression_ratio": 30, "overrides": {"fc2": 0.5}}, "overrides\\['fc2'\\] must be a number > 1"),
    ({"compression_ratio": 30, "overrides": {"re:(": 5}}, "overrides: .* is not a valid regular expression"),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTLayerSwap(**kwargs)


def test_overrides_give_a_layer_its_own_ratio():
    from lightning_micro.core.tensor_train import parameter_count
    from lightning_micro.models import LeNet300

    swap = TTLayerSwap(compression_ratio=30, include=["fc1", "fc2"], overrides={"fc2": 5})
    net = LeNet300([1, 28, 28])
    swap.check_model(net)
    specs = {spec["name"]: spec for spec in swap._specs(net)}
    for name, ratio in (("fc1", 30), ("fc2", 5)):
        spec, dense = specs[name], net.get_submodule(name).weight.numel()
        params = parameter_count(spec["in_factors"], spec["out_factors"], spec["ranks"])
        assert dense / params >= ratio and dense / params < 2 * ratio  # the largest ranks meeting that ratio


@pytest.mark.parametrize(("overrides", "message"), [
    (["compression.tt.include=[fc9]"], "compression.tt: include: pattern 'fc9' matches no layer; .*fc1, fc2, fc3"),
    (["compression.tt.include=[relu]"], "compression.tt: include: pattern 'relu' matches .*ReLU"),
    (["compression.tt.include=[fc1]", "compression.tt.ranks=200"],
     "compression.tt: TTLayerSwap on fc1 \\(64 -> 300\\): .*larger than this TT-matrix allows"),
    (["compression.tt.include=[fc1]", "compression.tt.in_factors=[8,9]", "compression.tt.out_factors=[10,30]"],
     "compression.tt: TTLayerSwap on fc1 .*in_factors=\\[8, 9\\] must be positive integers whose product is 64"),
    (["compression.tt.include=[fc3]", "compression.tt.out_factors=[3,3]"],
     "compression.tt: TTLayerSwap on fc3 \\(100 -> 10\\): out_factors=\\[3, 3\\] .* product is 10"),
    (["compression.tt.ranks=null", "compression.tt.compression_ratio=1000"], "compression_ratio=1000.* out of reach"),
    (["compression.tt.include=[fc1]", "compression.tt.overrides={fc2:5}"],
     "compression.tt: overrides: pattern 'fc2' matches none of the selected layers \\(fc1\\)"),
])
def test_bad_config_fails_before_training_naming_the_key(overrides, message, tmp_path):
    cfg = compose_cfg([*FAST, "compression=tt", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_swap_at_the_end_of_training_fails_before_the_first_step(tmp_path):
    module = ClassifierModule(NET, SGD, input_shape=[1, 8, 8])
    trainer = trainer_for(tmp_path, [TTLayerSwap(swap_at=3, ranks=4)], max_epochs=3)
    with pytest.raises(ValueError, match="swap_at=3 is at or after the end of training"):
        trainer.fit(module, DigitsDataModule(batch_size=64))
    assert trainer.global_step == 0
