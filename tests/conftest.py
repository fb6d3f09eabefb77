"""The test environment (real MNIST, one thread, quiet W&B) and the fixtures every test gets. Shared helpers live
in tests/helpers/."""

from __future__ import annotations

import os

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.helpers.config import ROOT

SHARED_DATA = ROOT.parent / "shared" / "data"

# Real MNIST: from LM_DATA_DIR, else the team's offline copy beside the checkout.
if "LM_DATA_DIR" not in os.environ and (SHARED_DATA / "MNIST" / "raw").is_dir():
    os.environ["LM_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("WANDB_SILENT", "true")
# One intra-op thread here and in every process a test starts (train.py, DDP ranks): on a 2-core machine two
# threads per process oversubscribe the cores and made small networks' steps up to 50x slower. Results are
# compared within a thread count, never against one recorded under another.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


# The library-architecture matrix (tests/test_library_*.py): one reloading process and one teacher per test file.
# Imported when first asked for, so that the rest of the suite does not load timm.
@pytest.fixture(scope="module")
def reloader(tmp_path_factory):
    from tests.helpers.library_matrix import Reloader

    process = Reloader(tmp_path_factory.mktemp("reloader"))
    yield process
    process.close()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.helpers.library_matrix import teacher_artifact

    return teacher_artifact(tmp_path_factory.mktemp("teacher"))
