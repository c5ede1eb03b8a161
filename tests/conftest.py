"""Shared test setup: no network, ever (models come from packages or are built in the tests)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test may pin torch to one thread; the next one gets the process's setting back, since the
    thread count changes float rounding (comparisons against an in-process run depend on it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
