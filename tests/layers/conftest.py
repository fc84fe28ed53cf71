import pytest
import torch

from vod_d2.layers import _ext


@pytest.fixture
def without_extension(monkeypatch):
    """Run as if vod_d2._C were not built; the one-time warnings start afresh."""
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_warned", set())


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallback warnings were already given."""
    monkeypatch.setattr(_ext, "_warned", set())


@pytest.fixture
def deterministic_algorithms():
    """Run with torch.use_deterministic_algorithms(True), restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)
