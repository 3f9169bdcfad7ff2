"""Test-wide settings (one torch thread per pytest-xdist worker: the CI machine has 2 cores) and the
fixtures several test files share."""
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (per-sample comparisons; single-threaded is faster on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every smoke miniature, generated once per test module: {dataset name: root}."""
    from hrnas.data import DATASETS, make_dataset

    base = tmp_path_factory.mktemp("smoke")
    return {name: make_dataset(name, base / name, preset="smoke", seed=0, progress=False) for name in DATASETS}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """HRNAS_DATA_DIR pointed at a fresh folder for a test module (the embedded data is generated there)."""
    path = tmp_path_factory.mktemp("synthetic")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HRNAS_DATA_DIR", str(path))
        yield path
