import pytest

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
