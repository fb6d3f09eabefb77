"""The library-architecture matrix (tests/helpers/library_matrix.py) on timm's token networks (a small ViT, an MLP-
Mixer), and GhostNet's structured pruning: every technique alone and the pairs [structured, qat int8], [gmp, qat
int8], [layerdrop, qat 4-bit], each in the user's LightningModule. Each cell trains, exports, scores the same in a
separate process, and matches its ONNX model in ONNX Runtime, or is refused before the first step with the line
docs/library-networks.md lists."""

from __future__ import annotations

import pytest

from tests.helpers.library_matrix import CELLS, check_cell

NETWORKS = ['timm_vit', 'timm_mixer']


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("network", NETWORKS)
def test_the_cell_trains_exports_reloads_and_runs_in_onnx_runtime_or_is_refused_first(network, cell, tmp_path,
                                                                                       reloader, teacher):
    check_cell(network, cell, tmp_path, reloader, teacher)


def test_ghostnets_sliced_concatenations_stay_whole_and_its_other_channels_are_pruned(tmp_path, reloader, teacher):
    # GhostNet (a convolution and a cheap depthwise one concatenated, then sliced) failed with an IndexError inside
    # the importance of a group Torch-Pruning maps inconsistently. Its other ten cells passed too when it was in the
    # matrix; it is kept to this one for the suite's time (its cells cost about twice a MobileNet's)
    check_cell("timm_ghostnet_050", "structured", tmp_path, reloader, teacher)
