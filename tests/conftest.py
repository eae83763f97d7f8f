"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test's torch work on one thread: on a loaded 2-core machine torch's 2-thread pool
    spins and makes small attacks 10-30x slower. Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` or by naming it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
