"""A layer whose parent reads its weight directly (torch's MultiheadAttention reads ``out_proj.weight`` in its
functional forward) is left out of a swap or of low-bit weights, named in the log and the report; a pattern that
names it alone is refused before the first step with the reason. Never a crash at step one, never a layer that
trains unquantized while the artifact stores it quantized."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_micro.callbacks import LowRankDecomposition, QuantizationAwareTraining, TTLayerSwap
from lightning_micro.contract import export_compressed
from lightning_micro.core.low_rank import LowRankLinear
from lightning_micro.data import DigitsDataModule
from tests.helpers.fitting import trainer_for
from tests.helpers.library_modules import LibraryClassifier, RGB32Digits
from tests.helpers.user_modules import AttentionClassifier

ROOT = Path(__file__).resolve().parents[2]
REASON = "its parent MultiheadAttention reads its weight directly instead of calling it"


def fit(tmp_path: Path, technique: L.Callback) -> tuple[L.Trainer, AttentionClassifier]:
    L.seed_everything(0)
    trainer = trainer_for(tmp_path, [technique], max_epochs=2, enable_checkpointing=False, limit_train_batches=6,
                          limit_val_batches=0)
    module = AttentionClassifier()
    trainer.fit(module, DigitsDataModule(batch_size=64))
    return trainer, module


def reloaded_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    script = ("import sys, torch\nfrom lightning_micro import load_compressed\n"
              "net = load_compressed(sys.argv[1], trusted=['tests.helpers.user_nets'])\n"
              "with torch.no_grad(): torch.save(net(torch.load(sys.argv[2])), sys.argv[3])\n")
    torch.save(x, path.with_suffix(".in"))
    done = subprocess.run([sys.executable, "-c", script, str(path), str(path.with_suffix(".in")),
                           str(path.with_suffix(".out"))], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(path.with_suffix(".out"))


@pytest.mark.parametrize("technique", [
    lambda: LowRankDecomposition(swap_at=1, compression_ratio=2, keep_output_layer=False),
    lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0),
], ids=["lowrank", "qat_4bit"])
def test_attentions_out_proj_is_left_out_named_and_the_rest_trains_and_reloads(technique, tmp_path, caplog):
    callback = technique()
    with caplog.at_level("INFO"):
        trainer, module = fit(tmp_path, callback)
    assert callback.left_out == {"attn.out_proj": REASON}
    assert "attn.out_proj" not in callback.layers and {"embed", "head"} <= set(callback.layers)
    assert f"left out attn.out_proj: {REASON}" in caplog.text
    field = "lowrank/left_out" if isinstance(callback, LowRankDecomposition) else "quant/left_out"
    assert callback.report_fields(module.backbone)[field] == "attn.out_proj"
    assert type(module.backbone.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear  # untouched
    if isinstance(callback, LowRankDecomposition):
        assert isinstance(module.backbone.head, LowRankLinear)
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path, module)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(reloaded_outputs(path, x), module.backbone.eval()(x), atol=1e-6)


@pytest.mark.parametrize("technique", [
    lambda: TTLayerSwap(swap_at=1, ranks=2, include=["attn.out_proj"]),
    lambda: QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0, include=["attn.*"]),
], ids=["tt", "qat_4bit"])
def test_a_pattern_that_names_only_such_a_layer_is_refused_with_the_reason(technique):
    with pytest.raises(ValueError, match=rf"matches attn.out_proj, which .* cannot take: {REASON}; exclude it"):
        technique().check_model(AttentionClassifier().backbone)


@pytest.mark.parametrize("technique", [lambda: TTLayerSwap(swap_at=1, ranks=4, keep_output_layer=False),
                                       lambda: LowRankDecomposition(swap_at=1, compression_ratio=2,
                                                                    keep_output_layer=False)],
                         ids=["tt", "lowrank"])
def test_a_transformer_encoder_layers_linears_are_left_out_and_inference_runs(technique, tmp_path):
    # torch's TransformerEncoderLayer hands linear1's and linear2's weights to one fused kernel in inference; a
    # swapped linear1 failed there with "'TTLinear' object has no attribute 'weight'"
    callback = technique()
    L.seed_everything(0)
    trainer = trainer_for(tmp_path, [callback], max_epochs=2, enable_checkpointing=False, limit_train_batches=2,
                          limit_val_batches=0, limit_test_batches=1)
    module = LibraryClassifier("torch_transformer")
    trainer.fit(module, RGB32Digits())
    assert callback.left_out["encoder.layers.0.linear1"] == (
        "its parent TransformerEncoderLayer reads its weight directly instead of calling it")
    assert {f"encoder.layers.{i}.linear{j}" for i in range(4) for j in (1, 2)} <= set(callback.left_out)
    assert "head" in callback.layers
    assert trainer.test(module, RGB32Digits(), verbose=False)[0]["test_acc"] >= 0
