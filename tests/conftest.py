import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common.torchvision_shim  # noqa: E402,F401  (before anything imports torchvision)


def shared_dir() -> Path:
    """The shared reference folder: $RESTOREBENCH_SHARED or ../shared beside the clone."""
    return Path(os.environ.get("RESTOREBENCH_SHARED", ROOT.parent / "shared"))


@pytest.fixture
def shared_fixtures() -> Path:
    path = shared_dir() / "fixtures"
    if not path.is_dir():
        if os.environ.get("RESTOREBENCH_REQUIRE_FIXTURES"):
            pytest.fail(f"reference fixtures not found at {path}; CI requires them")
        pytest.skip(f"reference fixtures not found at {path} (set RESTOREBENCH_SHARED); CI always has them")
    return path


def pytest_configure(config: pytest.Config) -> None:
    # Two xdist workers on a 2-core machine: one intra-op thread each avoids oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (tiny tensors: thread start-up dominates and oversubscribes the
    cores; `bench posterior` also defaults to one). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
