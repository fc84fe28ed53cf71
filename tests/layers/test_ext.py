import logging

import torch
from _testing import requires_extension

from vod_d2.layers import _ext, temporal_roi_align


@requires_extension
def test_extension_registers_every_op():
    for op in _ext.OPS:
        assert hasattr(torch.ops.vod_d2, op), op


def test_out_of_date_extension_is_not_used(monkeypatch, fresh_warnings, caplog):
    # A build from older sources lacks newer ops: it is refused (falling back to the references
    # with a warning naming the op), rather than failing on import or at the first call.
    monkeypatch.setattr(_ext, "OPS", _ext.OPS + ("op_of_a_newer_version",))
    module, reason = _ext._load()
    assert module is None and "op_of_a_newer_version" in reason
    monkeypatch.setattr(_ext, "_C", module)
    monkeypatch.setattr(_ext, "_IMPORT_ERROR", reason)
    rois, support = torch.randn(2, 3, 2, 2), torch.randn(1, 3, 4, 4)
    with caplog.at_level(logging.WARNING, logger=_ext.__name__):
        temporal_roi_align(rois, support, torch.zeros(2, dtype=torch.int64), 2)
    assert any("op_of_a_newer_version" in r.message for r in caplog.records)
