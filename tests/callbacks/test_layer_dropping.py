"""LayerDropping in a fit: the drop rules, training skips blocks and eval runs them all, the removal (outputs equal
the network with those blocks skipped), least_important, checkpoints and artifacts of the shallower network, DDP,
composition with the other techniques, a user's own residual module, and every bad argument."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_micro.artifact.format import load_compressed, read_metadata
from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    LayerDropping,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.contract import export_compressed
from lightning_micro.core import block_removal
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.ddp import run_on_two_ranks
from tests.helpers.fitting import StopAfterEpoch
from tests.helpers.fresh_process import USER_ARTIFACT_ACCURACY
from tests.helpers.user_modules import ResidualStackClassifier

# droppable: layer1.0, layer1.1, layer2.1, layer3.1 (the first blocks of stages 2 and 3 downsample)
RESNET = {"_target_": "lightning_micro.models.ResNet20", "input_shape": [1, 8, 8], "blocks_per_stage": 2,
          "widths": [8, 16, 16]}
DROPPABLE = ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}
EPOCH = 10  # training batches per epoch
ROOT = Path(__file__).resolve().parents[2]


def fit(tmp_path: Path, techniques: list[L.Callback], callbacks: list[L.Callback] = (), max_epochs: int = 3,
        ckpt_path: Path | None = None, stop_after: int | None = None, module: L.LightningModule | None = None
        ) -> tuple[L.Trainer, L.LightningModule]:
    L.seed_everything(0)
    module = module if module is not None else ClassifierModule(RESNET, SGD, input_shape=[1, 8, 8])
    extra = [StopAfterEpoch(stop_after)] if stop_after else []
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=EPOCH, limit_val_batches=2, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path,
                        callbacks=[*techniques, *callbacks, ModelCheckpoint(dirpath=tmp_path, save_last=True), *extra])
    trainer.fit(module, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return trainer, module


class CountBlockRuns(L.Callback):
    """Counts, per droppable block, the batches in which its first convolution ran, in training and in validation."""

    def __init__(self, blocks: list[str]) -> None:
        self.blocks = blocks
        self.train: list[set[str]] = []  # per training batch: the blocks that ran
        self.val: Counter = Counter()
        self.val_batches = 0
        self._ran: set[str] = set()
        self._hooked = False

    def _hook(self, pl_module):
        if not self._hooked:
            for name in self.blocks:
                pl_module.net.get_submodule(name).conv1.register_forward_hook(
                    lambda *args, name=name: self._ran.add(name))
            self._hooked = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._hook(pl_module)
        self._ran = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append(set(self._ran))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._hook(pl_module)
        self._ran = set()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.update(self._ran)
            self.val_batches += 1


def test_drop_draws_follow_the_rule_and_depend_only_on_seed_epoch_and_batch():
    net = ClassifierModule(RESNET, SGD, input_shape=[1, 8, 8]).net
    example = torch.zeros(1, 1, 8, 8)
    linear = LayerDropping(p=0.6, rule="linear", prune_at=None)  # rescale: train (all blocks stay)
    linear.check_model(net, example)
    assert linear.droppable == DROPPABLE
    draws = [linear.drop_factors(epoch, batch) for epoch in range(10) for batch in range(300)]
    for index, name in enumerate(DROPPABLE):
        p = 0.6 * (index + 1) / 4  # (l / L) p_L
        skipped = sum(d[name] == 0.0 for d in draws) / len(draws)
        assert skipped == pytest.approx(p, abs=0.03), (name, skipped)
        assert sorted({d[name] for d in draws}) == [0.0, pytest.approx(1 / (1 - p))]  # kept blocks rescaled
    assert linear.drop_factors(3, 7) == linear.drop_factors(3, 7)
    assert linear.drop_factors(3, 7) != linear.drop_factors(3, 8) or linear.drop_factors(3, 7) != linear.drop_factors(
        4, 7)
    uniform = LayerDropping(p=0.3, rescale="none", prune_at=None)
    uniform.check_model(net, example)
    draws = [uniform.drop_factors(0, batch) for batch in range(3000)]
    assert all(set(d.values()) <= {0.0, 1.0} for d in draws)
    for name in DROPPABLE:
        assert sum(d[name] == 0.0 for d in draws) / len(draws) == pytest.approx(0.3, abs=0.03)


def test_training_skips_the_drawn_blocks_and_eval_runs_every_block(tmp_path):
    dropping = LayerDropping(p=0.5, prune_at=None)
    counter = CountBlockRuns(DROPPABLE)
    fit(tmp_path, [dropping], [counter], max_epochs=2)
    expected = [{n for n, f in dropping.drop_factors(epoch, batch).items() if f != 0.0}
                for epoch in range(2) for batch in range(EPOCH)]
    assert counter.train == expected  # exactly the drawn blocks ran, no more
    assert 0.3 < sum(map(len, expected)) / (4 * 2 * EPOCH) < 0.7
    assert counter.val_batches == 4 and all(counter.val[n] == 4 for n in DROPPABLE)  # every block, every batch


class OutputAt(L.Callback):
    """The network's eval output on a fixed batch at the start of optimizer step ``step``, optionally with
    ``skipped`` blocks passed through."""

    def __init__(self, step: int, skipped: list[str] = ()) -> None:
        self.step, self.skipped = step, list(skipped)
        self.shortcuts: dict[str, str] = {}
        self.x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        self.output = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        net = pl_module.net
        net.eval()
        # the other blocks without their eval scaling: as the network runs once blocks are removed
        droppable = [n for n, m in net.named_modules() if "_layerdrop_eval_scale" in m.__dict__]
        with (torch.no_grad(), block_removal.skipping(net, self.skipped, self.shortcuts),
              block_removal.unscaled(net, droppable)):
            self.output = net(self.x)
        net.train()


def test_eval_scales_each_residual_by_its_survival_probability_until_the_removal(tmp_path):
    dropping = LayerDropping(p=0.4, rule="linear", prune_at=2, remove=1)  # rescale: eval
    seen = {}

    class Look(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 0 and not trainer.sanity_checking:
                net, x = pl_module.net, torch.randn(4, 1, 8, 8)
                block = net.layer2[1]
                with torch.no_grad():
                    inner = net.layer2[0](net.layer1(net.relu(net.bn1(net.conv1(x)))))
                    seen["scaled"] = block(inner)
                    seen["expected"] = inner + 0.7 * (type(block).forward(block, inner) - inner)  # 1 - (3/4) 0.4

    fit(tmp_path, [dropping, Look()], max_epochs=3)
    assert torch.allclose(seen["scaled"], seen["expected"], atol=1e-6)
    assert dropping.report_fields(nn.Identity())["layerdrop/rescale"] == "eval"


def test_right_after_removal_the_shallower_network_computes_the_network_with_those_blocks_skipped(tmp_path):
    dropping = LayerDropping(p=0.3, prune_at=1, remove=0.5)  # every other: layer1.1 and layer3.1, at step 10
    before, after = OutputAt(EPOCH, ["layer1.1", "layer3.1"]), OutputAt(EPOCH)
    trainer, module = fit(tmp_path, [before, dropping, after], max_epochs=2)  # probes on each side of it
    assert dropping.removed_blocks == ["layer1.1", "layer3.1"]
    assert isinstance(module.net.layer1[1], nn.Identity) and isinstance(module.net.layer3[1], nn.Identity)
    assert module.transforms == [{"transform": "layer_drop", "args": {"blocks": ["layer1.1", "layer3.1"]}}]
    assert torch.allclose(after.output, before.output, atol=1e-6)
    # the optimizer was rebuilt around the kept parameters only
    params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert params == {id(p) for p in module.parameters()}
    report = dropping.report_fields(module.net)
    assert report["layerdrop/removed_blocks"] == "layer1.1,layer3.1" and report["layerdrop/droppable"] == 4
    assert report["layerdrop/val_loss_blocks_removed"] > 0 and report["layerdrop/val_loss_before_removal"] > 0
    assert "forward" not in module.net.layer1[0].__dict__  # dropping stopped: the kept blocks run as written


def test_a_downsampling_block_drops_through_the_shortcut_it_names(tmp_path):
    shortcuts = {"layer2.0": "shortcut", "layer3.0": "shortcut"}
    dropping = LayerDropping(p=0.3, prune_at=1, remove=["layer2.0", "layer3.1"], shortcuts=shortcuts)
    before = OutputAt(EPOCH, ["layer2.0", "layer3.1"])
    before.shortcuts = {"layer2.0": "shortcut"}
    after = OutputAt(EPOCH)
    _, module = fit(tmp_path, [before, dropping, after], max_epochs=2)
    assert dropping.droppable == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert module.transforms == [{"transform": "layer_drop", "args": {
        "blocks": ["layer2.0", "layer3.1"], "shortcuts": {"layer2.0": "shortcut"}}}]
    assert isinstance(module.net.layer2[0], nn.Sequential) and isinstance(module.net.layer2[0][0], nn.Conv2d)
    assert torch.allclose(after.output, before.output, atol=1e-6)
    with pytest.raises(ValueError, match="shortcuts: 'layer2.0' has no submodule 'projection' to run in its place"):
        fit(tmp_path / "bad", [LayerDropping(shortcuts={"layer2.0": "projection"})])


def test_least_important_removes_the_blocks_whose_skipping_costs_least(tmp_path):
    dropping = LayerDropping(p=0.2, prune_at=1, remove=2, removal="least_important", importance_batches=2)
    _, module = fit(tmp_path, [dropping], max_epochs=2)
    assert set(dropping.losses) == set(DROPPABLE)
    cheapest = sorted(DROPPABLE, key=lambda n: dropping.losses[n])[:2]
    assert set(dropping.removed_blocks) == set(cheapest)
    for name in cheapest:
        assert isinstance(module.net.get_submodule(name), nn.Identity)


def test_resume_after_removal_matches_the_uninterrupted_run_and_reloads_shallow(tmp_path):
    def make():
        return [LayerDropping(p=0.3, prune_at=1, remove=0.5)]

    _, straight = fit(tmp_path / "straight", make(), max_epochs=3)
    fit(tmp_path / "first", make(), max_epochs=3, stop_after=2)
    checkpoint = tmp_path / "first" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["lightning_micro/transforms"][0]["transform"] == "layer_drop"
    trainer, resumed = fit(tmp_path / "second", make(), max_epochs=3, ckpt_path=checkpoint)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and not any(k.startswith("net.layer1.1.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "second" / "last.ckpt")
    assert isinstance(loaded.net.layer3[1], nn.Identity)
    # the artifact reloads in a fresh process and computes what the trained network computes
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path)
    assert [e["transform"] for e in read_metadata(path)["transforms"]] == ["layer_drop"]
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, torch\nfrom lightning_micro import load_compressed\n"
              "net = load_compressed(sys.argv[1])\nx = torch.load(sys.argv[2])\n"
              "with torch.no_grad(): torch.save(net(x), sys.argv[3])\n")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), resumed.net.eval()(x), atol=1e-6)


def test_resume_while_dropping_draws_the_same_blocks(tmp_path):
    def make():
        return [LayerDropping(p=0.5, prune_at=2, remove=1)]

    _, straight = fit(tmp_path / "straight", make(), max_epochs=3)
    fit(tmp_path / "first", make(), max_epochs=3, stop_after=1)  # before the removal
    _, resumed = fit(tmp_path / "second", make(), max_epochs=3, ckpt_path=tmp_path / "first" / "last.ckpt")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_ddp_two_processes_skip_the_same_blocks_and_remove_them_identically(tmp_path):
    saved = run_on_two_ranks(tmp_path, "layerdrop")  # identical weights and records on both ranks
    assert saved["transforms"] == ["layer_drop"]
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert saved["factors"] == rank1["factors"] and len(saved["factors"]) > 5
    assert any(0.0 in step.values() for step in saved["factors"])  # blocks were skipped
    assert any(any(v != 0.0 for v in step.values()) for step in saved["factors"])


# --- composition -------------------------------------------------------------------------------------------------

OTHERS = {
    "gmp": lambda: GradualMagnitudePruning(final_sparsity=0.5, start=0, end=2, update_every=3, scope="layerwise"),
    "qat8": lambda: QuantizationAwareTraining(start=2),  # traces the shallower network
    "qat4": lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0),
    "lowrank": lambda: LowRankDecomposition(swap_at=1, rank=4, include=["layer2.0.conv1"]),
    "tt": lambda: TTLayerSwap(swap_at=1, ranks=4, include=["fc"]),
    "structured": lambda: StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3),
}


@pytest.mark.parametrize("other", list(OTHERS))
@pytest.mark.parametrize("first", [True, False], ids=["layerdrop_first", "layerdrop_second"])
def test_layer_dropping_composes_with_each_technique(other, first, tmp_path):
    dropping = LayerDropping(p=0.3, prune_at=1, remove=0.5)  # layer1.1 and layer3.1 go at step 10
    technique = OTHERS[other]()
    techniques = [dropping, technique] if first else [technique, dropping]
    if other == "structured" and first:  # same moment, listed after the removal: refused
        with pytest.raises(ValueError, match=f"{technique.technique} changes layers at .* after LayerDropping "
                                             "removes blocks at prune_at=1"):
            fit(tmp_path, techniques)
        return
    trainer, module = fit(tmp_path, techniques)
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path)
    deployed = load_compressed(path)
    modules = dict(deployed.named_modules())
    assert "layer1.1.conv1" not in modules and "layer3.1.conv1" not in modules and "layer1.0.conv1" in modules
    state = deployed.state_dict()
    if other == "gmp":
        gmp = technique
        assert gmp.names and not any(n.startswith(("layer1.1.", "layer3.1.")) for n in gmp.names)
        weights = {n: p for n, p in deployed.named_parameters()}
        assert all(float((weights[n] == 0).float().mean()) >= 0.48 for n in gmp.names)
    if other == "qat8":
        assert type(modules["layer1.0.conv1"]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    if other == "qat4":
        assert "layer1.0.conv1.weight_codes" in state and not any(k.startswith("layer1.1.") for k in state)
    if other == "lowrank":
        assert "layer2.0.conv1.1" in modules
    if other == "tt":
        assert type(modules["fc"]).__name__ == "TTLinear"
    if other == "structured":
        assert state["layer1.0.conv1.weight"].shape[0] == 4
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deployed(x), module.net.eval()(x), atol=1e-5)


def test_a_swap_inside_a_droppable_block_after_the_removal_is_refused(tmp_path):
    # layer2.0 (a downsampling block) stays whatever LayerDropping removes; layer1.1 may go
    late = [LayerDropping(p=0.3, prune_at=1), LowRankDecomposition(swap_at=2, rank=4, include=["layer1.1.conv1"])]
    with pytest.raises(ValueError, match="LowRankDecomposition changes layers at swap_at=2, after LayerDropping "
                                         "removes blocks at prune_at=1: it chose its layers on the full-depth network"):
        fit(tmp_path, late)
    early = [LowRankDecomposition(swap_at=1, rank=4, include=["layer1.1.conv1"]), LayerDropping(p=0.3, prune_at=1)]
    fit(tmp_path, early, max_epochs=2)
    assert early[1].removed_blocks == ["layer1.1", "layer3.1"]


def test_int8_without_a_removal_is_refused(tmp_path):
    with pytest.raises(ValueError, match="int8 QAT traces the network once, and LayerDropping without prune_at"):
        fit(tmp_path, [LayerDropping(p=0.3, prune_at=None), QuantizationAwareTraining(start=1)])
    with pytest.raises(ValueError, match="int8 QAT traces the network at start=1, before LayerDropping changes it "
                                         "at prune_at=2"):
        fit(tmp_path, [LayerDropping(p=0.3, prune_at=2), QuantizationAwareTraining(start=1)])


# --- a user's module -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["layerdrop", "layerdrop+qat_int8"])
def test_a_users_residual_module_drops_and_removes_its_own_blocks(recipe, tmp_path):
    techniques = [LayerDropping(p=0.3, prune_at=1, remove=2)]
    if recipe.endswith("qat_int8"):
        techniques.append(QuantizationAwareTraining(start=2))
    L.seed_everything(0)
    module = ResidualStackClassifier(width=16, depth=4)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=techniques, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    assert techniques[0].droppable == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]  # found by tracing
    assert techniques[0].removed_blocks == ["blocks.1", "blocks.3"]
    tested = trainer.test(module, DigitsDataModule(batch_size=64), verbose=False)[0]["test_acc"]
    assert tested > 0.7, tested
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path)
    applied = [e["transform"] for e in read_metadata(path)["transforms"]]
    assert applied == (["layer_drop"] if recipe == "layerdrop" else ["layer_drop", "int8_qat_prepare", "int8_convert"])
    out = subprocess.run([sys.executable, "-c", USER_ARTIFACT_ACCURACY, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[1]) == pytest.approx(tested, abs=1e-6)


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    ({"p": 1.0}, r"p must be a number in \[0, 1\), got 1.0"),
    ({"p": -0.1}, r"p must be a number in \[0, 1\), got -0.1"),
    ({"rule": "cubic"}, r"rule must be one of \['uniform', 'linear'\], got 'cubic'"),
    ({"removal": "random"}, r"removal must be one of \['every_other', 'least_important'\], got 'random'"),
    ({"remove": 0}, "remove must be a number of blocks"),
    ({"remove": 1.5}, "remove must be a number of blocks"),
    ({"remove": []}, "remove must be a number of blocks"),
    ({"prune_at": -1}, "prune_at must be an epoch >= 0"),
    ({"prune_at": 0, "removal": "least_important"}, "removal=least_important measures the trained network"),
    ({"importance_batches": 0}, "importance_batches must be an integer >= 1"),
    ({"rescale": "yes"}, r"rescale must be one of \['eval', 'train', 'none'\] or null, got 'yes'"),
    ({"rescale": "eval", "prune_at": None}, "rescale=eval scales blocks in eval only until some are removed"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"shortcuts": ["layer2.0"]}, "shortcuts must map block name patterns to submodule names"),
    ({"blocks": ["re:("]}, "blocks: "),
    ({"blocks": []}, "blocks must name at least one pattern"),
    ({"exclude": ["re:["]}, "exclude: "),
])
def test_each_bad_argument_is_refused_naming_it(args, message):
    with pytest.raises(ValueError, match=message):
        LayerDropping(**args)


@pytest.mark.parametrize(("args", "message"), [
    ({"remove": 5}, r"remove=5 blocks, but ResNet20 has 4 droppable blocks \(layer1.0, layer1.1, layer2.1, "
                    r"layer3.1\); allowed: 1 to 4"),
    ({"remove": ["layer2.0"]}, r"remove: \['layer2.0'\] are not droppable blocks"),
    ({"blocks": ["layer2.0"]}, r"blocks: 'layer2.0' maps \[1, 8, 8, 8\] to \[1, 16, 4, 4\]; .* name the submodule "
                               r"that replaces it in `shortcuts`"),
    ({"exclude": ["fc"]}, "exclude: pattern 'fc' matches no droppable block"),
    ({"exclude": ["layer*"]}, "leaves no droppable block"),
])
def test_arguments_that_do_not_fit_the_network_are_refused_before_training(args, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, [LayerDropping(**args)])


def test_a_network_without_droppable_blocks_is_a_config_error_before_training(tmp_path):
    cfg = compose_cfg([*FAST, "compression=layerdrop"], tmp_path)  # LeNet-300-100: no residual block
    with pytest.raises(ConfigError, match="^compression.layerdrop: LeNet300 has no droppable block"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
    cfg = compose_cfg([*FAST, "model=resnet20", "compression=layerdrop", "compression.layerdrop.p=1.0"], tmp_path)
    with pytest.raises(ConfigError, match=r"^compression.layerdrop: .*LayerDropping rejected its arguments: p must "
                                          r"be a number in \[0, 1\)"):
        train(cfg)


def test_the_libraries_own_stochastic_depth_is_recognised_and_turned_off_where_whole_blocks_drop(tmp_path):
    import timm

    from tests.helpers.library_matrix import fit_cell

    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4,
                                                           num_heads=2, num_classes=10, drop_path_rate=0.3)
    own = block_removal.own_stochastic_depth(vit, [f"blocks.{i}" for i in range(4)])
    assert list(own) == [f"blocks.{i}.drop_path{j}" for i in range(1, 4) for j in (1, 2)]  # timm's DropPath
    assert own["blocks.3.drop_path1"] == pytest.approx(0.3)
    dropping = LayerDropping(p=0.2, prune_at=None)
    # torchvision's EfficientNet: StochasticDepth inside every MBConv block, on its residual branch
    trainer, module = fit_cell(tmp_path, "tv_efficientnet_b0", [dropping])
    assert dropping.droppable and set(dropping.own_stochastic_depth) == {
        f"{b}.stochastic_depth" for b in dropping.droppable if hasattr(module.net.get_submodule(b), "stochastic_depth")}
    assert all(module.net.get_submodule(n).p == 0 for n in dropping.own_stochastic_depth)
    assert dropping.report_fields(module.net)["layerdrop/own_stochastic_depth_off"].endswith("stochastic_depth")
