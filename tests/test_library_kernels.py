"""Sparse kernels and memory layout on library networks inside a user's LightningModule, from Python with a plain
Trainer: pruned by GMP, alone and with 4-bit QAT, exported with the timed choices (``auto``) and with them forced;
the artifact reloads and computes what the trained network computes, to float rounding."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_micro import load_compressed
from lightning_micro.callbacks import GradualMagnitudePruning, QuantizationAwareTraining
from lightning_micro.contract import export_compressed
from lightning_micro.core.memory_layout import layout_of
from lightning_micro.core.sparse_kernels import SparseLinear
from tests.helpers.fitting import trainer_for
from tests.helpers.library_modules import LibraryClassifier, RGB32Digits
from tests.helpers.library_nets import INPUT_SHAPE, NETWORKS

CASES = [("tv_mobilenet_v3_small", "channels_last"), ("timm_mixer", "contiguous"),
         ("torch_transformer", "contiguous")]


def techniques(with_qat: bool) -> list[L.Callback]:
    gmp = GradualMagnitudePruning(final_sparsity=0.9, start=0, end=0.5, update_every=1)
    return [gmp, QuantizationAwareTraining(weight_bits=4, activation_bits=32, start=0.5)] if with_qat else [gmp]


@pytest.mark.parametrize("with_qat", [False, True], ids=["gmp", "gmp+qat4"])
@pytest.mark.parametrize(("network", "forced_layout"), CASES)
def test_a_library_network_exports_and_reloads_with_sparse_kernels(network, forced_layout, with_qat, tmp_path):
    L.seed_everything(0)
    trainer = trainer_for(tmp_path, techniques(with_qat), max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                          enable_checkpointing=False)
    module = LibraryClassifier(network)
    trainer.fit(module, RGB32Digits())
    x = torch.randn(16, *INPUT_SHAPE)
    with torch.no_grad():
        expected = module.net.eval()(x)
    timed = tmp_path / "auto.safetensors"
    export_compressed(trainer, timed, module, sparse_kernels="auto", kernel_batch_sizes=(1, 16),
                      memory_layout="auto")
    forced = tmp_path / "forced.safetensors"
    export_compressed(trainer, forced, module, sparse_kernels="always", memory_layout=forced_layout)
    trusted = [NETWORKS[network][0].rsplit(".", 1)[0]]
    for path in (timed, forced):
        net = load_compressed(path, trusted=trusted)
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)
    net = load_compressed(forced, trusted=trusted)
    assert layout_of(net) == forced_layout
    sparse = [m for m in net.modules() if isinstance(m, SparseLinear)]
    assert sparse, "GMP pruned the network's Linear layers, so 'always' gives them CSR kernels"
