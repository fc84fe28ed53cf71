"""load_config: a user's config mistakes are one line, with the closest existing names."""

import os

import pytest

from vod_d2.engine import load_config

CONFIG = "configs/synthetic/single_frame.yaml"


def test_a_config_loads_with_its_overrides():
    cfg = load_config(CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.WEIGHTS", "w.pth"])
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.WEIGHTS) == (3, "w.pth")
    assert cfg.MODEL.VIDEO.AGGREGATION  # a vod_d2 key


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["MODEL.ROI_HEADS.NUM_CLASES", "3"],
            "MODEL.ROI_HEADS.NUM_CLASES is not a config key (did you mean "
            "'MODEL.ROI_HEADS.NUM_CLASSES'",
        ),
        (
            ["model.weights", "w.pth"],
            "model.weights is not a config key (did you mean 'MODEL.WEIGHTS'",
        ),
        (["MODEL.NOTHING_LIKE_THIS_AT_ALL_XYZ", "1"], None),
        (
            ["MODEL.WEIGHTS", "w.pth", "SOLVER.MAX_ITER"],
            "config options come in KEY VALUE pairs, but 'SOLVER.MAX_ITER' has no value",
        ),
    ],
)
def test_unknown_override_keys_are_one_line_with_the_closest_keys(opts, message):
    with pytest.raises(ValueError) as raised:
        load_config(CONFIG, opts)
    text = str(raised.value)
    assert "\n" not in text
    if message is None:
        assert text.startswith(f"{opts[0]} is not a config key")
    else:
        assert text.startswith(message)


def test_unknown_file_keys_are_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.abspath(CONFIG)}"\nMODEL:\n  VIDEO:\n    TEST_WINDOWS: 1\n')
    with pytest.raises(ValueError) as raised:
        load_config(str(bad))
    assert str(raised.value).startswith(
        f"{bad}: MODEL.VIDEO.TEST_WINDOWS is not a config key (did you mean "
        "'MODEL.VIDEO.TEST_WINDOW'"
    )


def test_a_missing_config_file_names_the_closest_files():
    with pytest.raises(FileNotFoundError) as raised:
        load_config("configs/synthetic/single_frame.yml")
    assert str(raised.value) == (
        "Config file 'configs/synthetic/single_frame.yml' does not exist (did you mean "
        "'configs/synthetic/single_frame.yaml'?)"
    )
    with pytest.raises(FileNotFoundError, match="^Config file 'nowhere/x.yaml' does not exist$"):
        load_config("nowhere/x.yaml")
