"""The library-architecture matrix (tests/helpers/library_matrix.py) on torchvision's EfficientNet-B0 and ResNet-18:
every technique alone and the pairs [structured, qat int8], [gmp, qat int8], [layerdrop, qat 4-bit], each in the
user's LightningModule. Each cell trains, exports, scores the same in a separate process, and matches its ONNX model
in ONNX Runtime, or is refused before the first step with the line docs/library-networks.md lists."""

from __future__ import annotations

import pytest

from tests.helpers.library_matrix import CELLS, check_cell

NETWORKS = ['tv_efficientnet_b0', 'tv_resnet18']


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("network", NETWORKS)
def test_the_cell_trains_exports_reloads_and_runs_in_onnx_runtime_or_is_refused_first(network, cell, tmp_path,
                                                                                       reloader, teacher):
    check_cell(network, cell, tmp_path, reloader, teacher)
