"""Shared test setup: no network, ever (models come from packages or are built in the tests)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# The process's own thread count, read before any test or fixture can pin it (a module-scoped
# fixture runs before a test's autouse fixtures, so reading it per test could save a pinned 1).
PROCESS_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test may pin torch to one thread; the next one gets the process's setting back, since the
    thread count changes float rounding (comparisons against an in-process run depend on it)."""
    yield
    torch.set_num_threads(PROCESS_THREADS)
