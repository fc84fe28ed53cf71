"""A method that cannot be exported yet is refused in one line naming the part that blocks it,
before anything is built or traced; the others are exported as their causal variant."""

import subprocess
import sys

import pytest
import torch
from _export_helpers import method_model
from _testing import synthetic_cfg

from vod_d2.engine import load_config
from vod_d2.export import NotExportable, build_streaming_step, check_exportable, export_blockers


def _refusal(cfg):
    with pytest.raises(NotExportable) as info:
        check_exportable(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_meta_architecture_without_a_step_is_named_with_its_module():
    cfg = load_config("configs/stmn_R101_RFCN_ensemble.yaml")
    message = _refusal(cfg)
    assert "MODEL.META_ARCHITECTURE StaticEnsembleRCNN" in message
    assert "vod_d2.modeling.meta_arch.ensemble.StaticEnsembleRCNN" in message


def test_roi_heads_without_fixed_shape_inference_are_named():
    cfg = synthetic_cfg("single_frame", **{"MODEL.ROI_HEADS.NAME": "Res5ROIHeads"})
    message = _refusal(cfg)
    assert "MODEL.ROI_HEADS.NAME Res5ROIHeads" in message
    assert "detectron2.modeling.roi_heads.roi_heads.Res5ROIHeads" in message


def test_an_aggregation_with_hidden_state_is_named():
    # tests/conftest.py's RunningMeanAggregation keeps a running sum in its attributes.
    cfg = synthetic_cfg("single_frame", **{"MODEL.VIDEO.AGGREGATION": "RunningMeanAggregation"})
    message = _refusal(cfg)
    assert "MODEL.VIDEO.AGGREGATION RunningMeanAggregation (conftest.RunningMeanAggregation)" in (
        message
    )
    assert "reset" in message


def test_a_stateless_aggregation_of_your_own_exports():
    # tests/conftest.py's WindowMeanAggregation: a window module as the README's WindowMax.
    cfg = synthetic_cfg("single_frame", **{"MODEL.VIDEO.AGGREGATION": "WindowMeanAggregation"})
    assert export_blockers(cfg) == []


@pytest.mark.parametrize("name", ["stsn", "stmn_rfcn", "impression", "sparsevod", "lsts"])
def test_offline_methods_are_not_refused(name):
    assert export_blockers(synthetic_cfg(name)) == []


def test_a_subclass_of_an_exportable_model_is_refused():
    _, model = method_model("rfcn")
    model.__class__ = type("MyRCNN", (type(model),), {})
    with pytest.raises(NotExportable, match="MyRCNN: no streaming step"):
        build_streaming_step(model)


def test_the_command_refuses_before_building_or_tracing(tmp_path, monkeypatch):
    sys.path.insert(0, "tools")
    try:
        import export_model
    finally:
        sys.path.remove("tools")
    calls = []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(a))
    output = tmp_path / "out"
    with pytest.raises(NotExportable, match="StaticEnsembleRCNN"):
        export_model.main(
            ["--config-file", "configs/stmn_R101_RFCN_ensemble.yaml", "--output", str(output)]
        )
    assert not calls and not output.exists()


def test_the_command_prints_one_line(tmp_path):
    command = [
        sys.executable,
        "tools/export_model.py",
        "--config-file",
        "configs/stmn_R101_RFCN_ensemble.yaml",
        "--output",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("export_model.py: error: cannot export StaticEnsembleRCNN yet: ")
    assert "Traceback" not in done.stderr
