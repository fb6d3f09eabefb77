"""LowRankDecomposition: SVD / Tucker-2 / CP swaps from the trained weights, fewer conv MACs counted by running the
network, exact resume, fresh-process reload, DDP, bad input refused before training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_micro.artifact.format import load_compressed, read_metadata
from lightning_micro.callbacks import LowRankDecomposition
from lightning_micro.core.low_rank import CPConv2d, LowRankLinear, TuckerConv2d
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.ddp import run_on_two_ranks
from tests.helpers.fitting import RecordAroundSwap, fit
from tests.helpers.fresh_process import fresh_process_accuracy

SMALL_RESNET = ["model=resnet20", "model.net.blocks_per_stage=1"]


@pytest.mark.parametrize(("method", "rank", "kind"), [("tucker2", "[8,4]", TuckerConv2d), ("cp", "6", CPConv2d)])
def test_run_swaps_convolutions_counts_fewer_conv_macs_and_reloads_in_a_fresh_process(method, rank, kind, tmp_path):
    cfg = compose_cfg([*FAST, *SMALL_RESNET, "trainer.max_epochs=3", "compression=lowrank",
                       "compression.lowrank.swap_at=1", f"compression.lowrank.conv_method={method}",
                       "compression.lowrank.compression_ratio=null", f"compression.lowrank.rank={rank}",
                       "compression.lowrank.include=[layer*.0.conv*]"], tmp_path)
    metrics = train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    artifact = tmp_path / "model.safetensors"
    assert [e["transform"] for e in read_metadata(artifact)["transforms"]] == ["low_rank_swap"]
    net = load_compressed(artifact)
    swapped = [n for n, m in net.named_modules() if isinstance(m, kind)]
    assert swapped == [f"layer{s}.0.conv{c}" for s in (1, 2, 3) for c in (1, 2)]
    assert "layer2.0.conv1.weight" not in net.state_dict()  # the factors only
    assert fresh_process_accuracy(artifact) == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert report["macs/effective_conv"] < report["macs/dense_conv"]  # counted by running both networks
    assert report["lowrank/layer3.0.conv2/method"] == method
    assert report["lowrank/layer3.0.conv2/ratio"] > 1


def test_full_rank_svd_keeps_the_trained_function_and_training_goes_on(tmp_path):
    probe = RecordAroundSwap()
    module = fit(tmp_path, LowRankDecomposition(swap_at=2, rank=100, include=["fc2"]), callbacks=[probe])
    assert isinstance(module.net.fc2, LowRankLinear)
    torch.testing.assert_close(probe.outputs["start2"], probe.outputs["end1"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(probe.outputs["end3"], probe.outputs["start2"])


def test_resume_after_the_swap_matches_an_uninterrupted_run(tmp_path):
    make = lambda: LowRankDecomposition(swap_at=1, compression_ratio=3, keep_output_layer=False)  # noqa: E731
    straight = fit(tmp_path / "straight", make())
    assert [type(m) for m in (straight.net.fc1, straight.net.fc2, straight.net.fc3)] == [LowRankLinear] * 3
    fit(tmp_path / "first", make(), stop_after=2)
    resumed = fit(tmp_path / "second", make(), ckpt_path=tmp_path / "first" / "last.ckpt")
    assert resumed.transforms == straight.transforms
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_ratio_picks_the_largest_rank_that_meets_it():
    lowrank = LowRankDecomposition(compression_ratio=4)
    conv = nn.Conv2d(20, 50, 5)
    for method in ("tucker2", "cp"):
        lowrank.conv_method = method
        rank = lowrank.layer_spec("conv2", conv)["rank"]
        layer = (TuckerConv2d if method == "tucker2" else CPConv2d)(conv, rank)
        assert conv.weight.numel() / sum(p.numel() for p in layer.parameters() if p.dim() > 1) >= 4
    assert lowrank.layer_spec("fc", nn.Linear(800, 500)) == {"method": "svd", "rank": 76}  # 76*1300 <= 400000/4


def test_ddp_two_processes_train_the_same_factors(tmp_path):
    saved = run_on_two_ranks(tmp_path, "lowrank")
    assert saved["transforms"] == ["low_rank_swap"] and "fc1.0.weight" in saved["weights"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": [4, 4, 4]}, "rank must be a positive integer, or \\[r_out, r_in\\]"),
    ({"rank": [4, 2], "conv_method": "cp"}, "two ranks \\[r_out, r_in\\] are for conv_method tucker2"),
    ({"rank": 4, "compression_ratio": 2}, "exactly one of rank and compression_ratio"),
    ({"compression_ratio": 1}, "compression_ratio must be a number > 1"),
    ({"rank": 4, "conv_method": "tt"}, "conv_method must be one of \\['tucker2', 'cp'\\]"),
    ({"rank": 4, "module_types": ["Conv1d"]}, "module_types must be a non-empty list of \\['Linear', 'Conv2d'\\]"),
    ({"rank": 4, "swap_at": 2.0}, "fractions of the run"),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowRankDecomposition(**kwargs)


@pytest.mark.parametrize(("overrides", "message"), [
    (["compression.lowrank.include=[conv9]"], "compression.lowrank: include: pattern 'conv9' matches no layer"),
    (["compression.lowrank.compression_ratio=null", "compression.lowrank.rank=101",
      "compression.lowrank.include=[fc2]"],
     "compression.lowrank: LowRankDecomposition on fc2 \\(Linear, svd\\): rank=101 is larger than a 100x300 matrix"),
    (["compression.lowrank.compression_ratio=null", "compression.lowrank.rank=[2,2]"],
     "compression.lowrank: .*rank=\\[2, 2\\] is for Tucker-2 convolutions; a Linear layer takes one rank"),
])
def test_bad_config_fails_before_training_naming_the_key(overrides, message, tmp_path):
    cfg = compose_cfg([*FAST, "compression=lowrank", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_wildcards_leave_depthwise_convolutions_alone_and_naming_one_fails():
    from lightning_micro.models import MobileNet

    net = MobileNet([1, 8, 8], 10)
    lowrank = LowRankDecomposition(compression_ratio=1.5)
    lowrank.check_model(net)
    depthwise = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(lowrank.layers)
    assert any(isinstance(net.get_submodule(n), nn.Conv2d) for n in lowrank.layers)
    with pytest.raises(ValueError, match=f"include: pattern '{depthwise[0]}' matches .* which LowRankDecomposition"):
        LowRankDecomposition(rank=2, include=[depthwise[0]]).check_model(net)
