"""Techniques composed in one fit: every ordered pair of {gmp, qat int8, qat 4-bit, tt, lowrank} either works, with
each technique's effect surviving the other in the exported network, or is refused before the first step with
the reason; a resume in the middle of a composition equals the uninterrupted run; DDP with tt + gmp."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_micro.artifact.format import load_compressed
from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from lightning_micro.contract import export_compressed
from lightning_micro.core.tensor_train import TTLinear
from lightning_micro.data import DigitsDataModule
from lightning_micro.report.measure import weight_tensors
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.ddp import run_on_two_ranks
from tests.helpers.fitting import StopAfterEpoch
from tests.helpers.small_conv_net import NET, SGD, SmallConvNet

SPARSITY = 0.5
# Three epochs of 10 batches: pruning over steps 0-20, swaps and quantization from epoch 1 (step 10).
TECHNIQUES = {
    "gmp": lambda: GradualMagnitudePruning(final_sparsity=SPARSITY, start=0, end=2, update_every=3,
                                           scope="layerwise"),
    "qat8": lambda: QuantizationAwareTraining(start=1),
    "qat4": lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=1),
    "tt": lambda: TTLayerSwap(swap_at=1, ranks=4, include=["fc1"]),
    "lowrank": lambda: LowRankDecomposition(swap_at=1, rank=4, include=["conv2"]),
    # half of conv1's, conv2's and fc1's channels masked over epoch 0, removed at epoch 1 (step 10)
    "structured": lambda: StructuredPruning(channel_ratio=0.5, start=0, end=1, update_every=3),
}
REFUSED = {
    ("qat8", "tt"): "int8 QAT cannot take TTLayerSwap's layers: torch.ao's graph mode cannot express",
    ("tt", "qat8"): "int8 QAT cannot take TTLayerSwap's layers: torch.ao's graph mode cannot express",
    ("qat8", "lowrank"): "int8 QAT traces the network at start=1, before LowRankDecomposition changes it at swap_at",
    ("qat8", "qat4"): "one QuantizationAwareTraining per run: a network is quantized once",
    ("qat4", "qat8"): "one QuantizationAwareTraining per run: a network is quantized once",
    ("qat8", "structured"): "int8 QAT traces the network at start=1, before StructuredPruning changes it at remove_at",
    ("tt", "structured"): "TTLayerSwap swaps layers at swap_at=1, before StructuredPruning removes channels",
    ("lowrank", "structured"): "LowRankDecomposition swaps layers at swap_at=1, before StructuredPruning removes",
}
PAIRS = list(itertools.permutations(TECHNIQUES, 2))


def fit(tmp_path: Path, techniques: list[L.Callback], max_epochs: int = 3, stop_after: int | None = None,
        ckpt_path: Path | None = None) -> tuple[L.Trainer, ClassifierModule]:
    L.seed_everything(0)
    module = ClassifierModule(NET, SGD, input_shape=[1, 8, 8])
    callbacks = [*techniques, ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=10, limit_val_batches=2, accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return trainer, module


def check_effects(pair: tuple[str, ...], techniques: list[L.Callback], deployed: nn.Module) -> None:
    """Each technique's effect, read from the network as reloaded from its artifact."""
    modules = dict(deployed.named_modules())
    state = deployed.state_dict()
    if "tt" in pair:
        assert isinstance(modules["fc1"], TTLinear)
        tt = next(t for t in techniques if isinstance(t, TTLayerSwap))
        cores = sum(c.numel() for c in modules["fc1"].core_tensors())  # integer codes after 4-bit QAT
        assert cores > 0 and tt.report_fields(deployed)["tt/fc1/params"] == cores + modules["fc1"].out_features
    if "lowrank" in pair:
        assert not isinstance(modules["conv2"], nn.Conv2d) and {"conv2.0", "conv2.1", "conv2.2"} <= set(modules)
    if "gmp" in pair:  # pruned to the target, the factors / cores of a swapped layer included
        gmp = next(t for t in techniques if isinstance(t, GradualMagnitudePruning))
        swapped = {"tt": "fc1.cores.", "lowrank": "conv2."}
        for technique, prefix in swapped.items():
            if technique in pair:
                assert any(n.startswith(prefix) for n in gmp.names), (prefix, gmp.names)
        weights = weight_tensors(deployed)
        checked = [n for n in gmp.names if n in weights]
        assert len(checked) == len(gmp.names), (gmp.names, sorted(weights))
        for name in checked:
            zeros = float((weights[name] == 0).float().mean())
            assert zeros >= SPARSITY - 0.02, (name, zeros)  # zeros stay zero through quantization and export
    if "qat8" in pair:
        quantized = [n for n, m in modules.items() if callable(getattr(m, "weight", None))  # packed int8 weights
                     and type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))]
        expected = {"conv1", "conv2.0", "conv2.1", "conv2.2", "fc1", "fc2"} if "lowrank" in pair else {
            "conv1", "conv2", "fc1", "fc2"}
        assert expected <= set(quantized), quantized
    if "structured" in pair:  # half the channels of conv1, conv2 and fc1 are gone from the artifact
        weights = weight_tensors(deployed)
        assert weights["conv1.weight"].shape[0] == 4 and weights["fc2.weight"].shape == (10, 32)
        if "lowrank" not in pair:
            assert weights["conv2.weight"].shape[:2] == (8, 4)
        if "tt" not in pair:
            assert weights["fc1.weight"].shape == (32, 8 * 16)
        if "tt" in pair:  # swapped after the removal: the TT layer is made of the thinner fc1
            assert (modules["fc1"].in_features, modules["fc1"].out_features) == (128, 32)
    if "qat4" in pair:
        codes = {key for key in state if key.endswith("_codes")}
        assert {"conv1.weight_codes", "fc2.weight_codes"} <= codes, codes
        if "tt" in pair:  # the TT cores are quantized too
            assert any(key.startswith("fc1.") for key in codes), codes
        if "lowrank" in pair:
            assert {"conv2.0.weight_codes", "conv2.1.weight_codes", "conv2.2.weight_codes"} <= codes, codes


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_every_ordered_pair_works_or_is_refused_before_the_first_step(pair, tmp_path):
    techniques = [TECHNIQUES[name]() for name in pair]
    if pair in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[pair]):
            fit(tmp_path, techniques)
        return
    trainer, module = fit(tmp_path, techniques)
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path)
    deployed = load_compressed(path, trusted=[SmallConvNet])  # the test's own network, trusted by the caller
    check_effects(pair, techniques, deployed)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():  # the artifact computes what the trained (finalized) network computes
        assert torch.allclose(deployed(x), module.net.eval()(x), atol=1e-5)


def test_refusal_comes_before_any_training_step(tmp_path):
    class CountSteps(L.Callback):
        steps = 0

        def on_train_batch_start(self, *args):
            CountSteps.steps += 1

    with pytest.raises(ValueError, match="int8 QAT cannot take TTLayerSwap"):
        fit(tmp_path, [TECHNIQUES["tt"](), TECHNIQUES["qat8"](), CountSteps()])
    assert CountSteps.steps == 0


def test_two_swaps_of_one_layer_are_refused(tmp_path):
    techniques = [TTLayerSwap(swap_at=1, ranks=4, include=["fc1"]), LowRankDecomposition(swap_at=1, rank=4)]
    with pytest.raises(ValueError, match=r"TTLayerSwap and LowRankDecomposition both select \['fc1'\]"):
        fit(tmp_path, techniques)


def test_int8_prepared_after_a_swap_quantizes_the_new_layers_whatever_the_list_order(tmp_path):
    # Swapped at epoch 1, traced at epoch 2: works, whatever the list order.
    late = [QuantizationAwareTraining(start=2), LowRankDecomposition(swap_at=1, rank=4, include=["conv2"])]
    trainer, _ = fit(tmp_path / "works", late)
    export_compressed(trainer, tmp_path / "works.safetensors")
    check_effects(("qat8", "lowrank"), late, load_compressed(tmp_path / "works.safetensors", trusted=[SmallConvNet]))


def test_resume_in_the_middle_of_a_composition_matches_the_uninterrupted_run(tmp_path):
    def make():
        return [TTLayerSwap(swap_at=1, ranks=4, include=["fc1"]),
                GradualMagnitudePruning(final_sparsity=SPARSITY, start=0, end=3, update_every=3, scope="layerwise"),
                QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=2)]

    _, straight = fit(tmp_path / "straight", make(), max_epochs=4)
    fit(tmp_path / "first", make(), max_epochs=4, stop_after=2)  # after the swap, before quantization
    checkpoint = torch.load(tmp_path / "first" / "last.ckpt", weights_only=True)
    assert [e["transform"] for e in checkpoint["lightning_micro/transforms"]] == ["tt_swap"]
    _, resumed = fit(tmp_path / "second", make(), max_epochs=4, ckpt_path=tmp_path / "first" / "last.ckpt")
    assert resumed.transforms == straight.transforms
    assert [e["transform"] for e in straight.transforms] == ["tt_swap", "weight_fake_quant", "weight_low_bit"]
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_ddp_two_processes_prune_the_tt_cores_identically(tmp_path):
    saved = run_on_two_ranks(tmp_path, "tt_gmp")
    assert saved["transforms"] == ["tt_swap"]
    cores = [w for n, w in saved["weights"].items() if n.startswith("fc1.cores.")]
    assert cores and all(float((c == 0).float().mean()) >= 0.45 for c in cores)


def test_a_refused_combination_on_the_command_line_is_a_config_error_naming_the_technique(tmp_path):
    cfg = compose_cfg([*FAST, "compression=[tt,qat]"], tmp_path)
    with pytest.raises(ConfigError, match="^compression.qat: int8 QAT cannot take TTLayerSwap's layers"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()
