"""docs/library-networks.md lists every cell of the library-architecture matrix that is refused or has no ONNX
model, and no other: its known-limits table and the suite's tables (tests/helpers/library_matrix.py) are equal."""

from __future__ import annotations

import re

from tests.helpers.config import ROOT
from tests.helpers.library_matrix import CELLS, NO_ONNX, REFUSED
from tests.helpers.library_nets import NETWORKS


def label(network: str) -> str:
    target, kwargs = NETWORKS[network]
    return kwargs.get("name", target.rpartition(".")[2])


def test_the_known_limits_table_lists_exactly_the_refused_and_unexported_cells():
    page = (ROOT / "docs" / "library-networks.md").read_text()
    table = page.split("<!-- known-limits:start -->")[1].split("<!-- known-limits:end -->")[0]
    listed = set()
    for row in table.strip().splitlines()[2:]:
        network_cell, cells_cell = row.split("|")[1:3]
        network = re.findall(r"`([^`]+)`", network_cell)[0]
        listed |= {(network, cell) for cell in re.findall(r"`([^`]+)`", cells_cell)}
    assert all(cell in CELLS for _, cell in listed)
    assert listed == {(label(n), c) for n, c in [*REFUSED, *NO_ONNX]}
    assert len(REFUSED) <= 0.10 * len(NETWORKS) * len(CELLS)  # the bar: at most 10% of cells refused
