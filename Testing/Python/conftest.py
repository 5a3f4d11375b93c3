"""Shared test set-up: the engine on sys.path, small thread counts, and common fixtures."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "Testing" / "Data"
sys.path.insert(0, str(REPO / "UXNetSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session", autouse=True)
def _engine_process_setup():
    """The same allocator tuning the CLI applies, so in-process engine runs are as fast as the product."""
    from UXNetSegmentLib.allocator import tune_allocator
    tune_allocator()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that changes torch's thread count must not slow down every test after it."""
    import torch
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
