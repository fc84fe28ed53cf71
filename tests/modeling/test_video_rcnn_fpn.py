"""
VideoRCNN on the detectron2 model zoo's R50-FPN detector (``COCO-Detection/
faster_rcnn_R_50_FPN_1x.yaml`` with ``MODEL.META_ARCHITECTURE VideoRCNN``), as its users run it:
every level aggregated with one set of weights, every aggregation trained and evaluated, and
the segmentation fault of a diverged STSN.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from _testing import (
    FPN_AGGREGATIONS,
    FPN_LEVELS,
    TINY_FPN,
    ZOO_CONFIG,
    brief_trainer,
    count_backbone_calls,
    evaluate_on_synthetic,
    random_video,
    trained_losses,
    zoo_cfg,
)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import GeneralizedRCNN, build_model

from vod_d2.engine import run_on_video

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_zoo_model(*opts, train=False):
    """The zoo's R50-FPN as VideoRCNN at the tests' size (seed 0), then ``opts``."""
    torch.manual_seed(0)
    return build_model(zoo_cfg(*TINY_FPN, *opts)).train(train)


def _head_features(model):
    """Wrap the RPN: returns the list of the maps it gets at every call."""
    seen = []
    forward = model.proposal_generator.forward

    def recording(images, features, gt_instances=None):
        seen.append({k: v.clone() for k, v in features.items()})
        return forward(images, features, gt_instances)

    model.proposal_generator.forward = recording
    return seen


@pytest.mark.parametrize(
    "opts, expected",
    [
        ((), FPN_LEVELS),
        (("MODEL.VIDEO.IN_FEATURE", "p3"), ("p3",)),
        (("MODEL.VIDEO.IN_FEATURES", ["p4", "p2"]), ("p4", "p2")),
        (("MODEL.VIDEO.IN_FEATURES", ["p4", "p2"], "MODEL.VIDEO.IN_FEATURE", "p2"), ("p4", "p2")),
    ],
)
def test_maps_aggregated(opts, expected):
    assert tiny_zoo_model(*opts).in_features == expected


@pytest.mark.parametrize(
    "opts, error, message",
    [
        (
            ("MODEL.VIDEO.IN_FEATURES", ["p4"], "MODEL.VIDEO.IN_FEATURE", "p3"),
            ValueError,
            r"MODEL.VIDEO.IN_FEATURE='p3' is not one of MODEL.VIDEO.IN_FEATURES=\['p4'\]",
        ),
        (
            ("MODEL.VIDEO.IN_FEATURES", ["p3", "res5"]),
            KeyError,
            r"MODEL.VIDEO.IN_FEATURES=\['p3', 'res5'\] must name distinct backbone outputs",
        ),
        (("MODEL.VIDEO.IN_FEATURES", ["p3", "p3"]), KeyError, "must name distinct"),
        (
            ("MODEL.VIDEO.AGGREGATION", "STMNAggregation", "MODEL.STMN.MEMORY_CHANNELS", 32),
            ValueError,
            r"STMNAggregation turns the 32-channel map 'p2' into 64 channels, but the heads read "
            r"it with \['p2', 'p3', 'p4', 'p5', 'p6'\], all of one width: configure it to keep 32 "
            r"channels: MODEL.STMN.MEMORY_CHANNELS 16 \(its 2 memories are concatenated\)",
        ),
    ],
)
def test_bad_maps_are_named_before_anything_runs(opts, error, message):
    with pytest.raises(error, match=message):
        tiny_zoo_model(*opts)


def test_every_level_sees_its_window_with_one_set_of_weights():
    """The issue: only MODEL.VIDEO.IN_FEATURE saw time, the other levels came from one frame."""
    model = tiny_zoo_model(
        "MODEL.VIDEO.AGGREGATION", "WindowMeanAggregation", "MODEL.VIDEO.TEST_WINDOW", (1, 1)
    )
    model.temporal_aggregation.scale.data.fill_(0.5)
    for level in FPN_LEVELS[1:]:
        assert model.level_aggregations[level].scale is model.temporal_aggregation.scale
    assert sorted(k for k in model.state_dict() if "aggregation" in k) == [
        "temporal_aggregation.scale"
    ]
    video = random_video(4, seed=1)
    seen = _head_features(model)
    list(run_on_video(model, video))
    with torch.no_grad():
        maps = [model.backbone(model.preprocess_image([f]).tensor) for f in video]
    for t in range(4):
        # The reference first, then the support frames (clamped into the video), as summed.
        window = [maps[min(max(t + o, 0), 3)] for o in (0, -1, 1)]
        for level in FPN_LEVELS:
            expected = 0.5 * torch.stack([m[level] for m in window]).mean(dim=0)
            torch.testing.assert_close(seen[t][level], expected, msg=f"frame {t} {level}")


def test_only_listed_levels_see_time_and_the_cache_keeps_what_windows_read():
    model = tiny_zoo_model(
        "MODEL.VIDEO.AGGREGATION", "WindowMeanAggregation", "MODEL.VIDEO.IN_FEATURES",
        ["p3", "p5"], "MODEL.VIDEO.TEST_WINDOW", (2, 2),
    )  # fmt: skip
    calls = count_backbone_calls(model)
    seen = _head_features(model)
    video = random_video(7, seed=2)
    model.reset(len(video))
    for i, frame in enumerate(video):
        model.step(frame)
        cache = model._video.cache
        for index, payload in cache.items():
            if index < model._video.next_target:  # detected: its support entries only
                assert set(payload) == {"temporal.p3.feature", "temporal.p5.feature"}, (i, index)
            else:
                assert set(payload) == {
                    "temporal.p3.feature", "temporal.p5.feature", "p2", "p4", "p6"
                }, (i, index)  # fmt: skip
        assert all(index >= model._video.next_target - 2 for index in cache), i
    model.flush()
    assert calls == [1] * 7
    with torch.no_grad():
        maps = [model.backbone(model.preprocess_image([f]).tensor) for f in video]
    for t in range(7):
        window = [maps[min(max(t + o, 0), 6)] for o in (0, -2, -1, 1, 2)]
        for level in ("p3", "p5"):
            expected = torch.stack([m[level] for m in window]).mean(dim=0)
            torch.testing.assert_close(seen[t][level], expected, msg=f"frame {t} {level}")
        for level in ("p2", "p4", "p6"):
            assert torch.equal(seen[t][level], maps[t][level]), (t, level)


def test_stmn_keeps_one_stream_per_level():
    """Each level's memories are those of a one-level STMN with the same weights."""
    opts = FPN_AGGREGATIONS["STMNAggregation"] + ["MODEL.VIDEO.AGGREGATION", "STMNAggregation"]
    model = tiny_zoo_model(*opts).eval()
    video = random_video(5, seed=3)
    seen = _head_features(model)
    list(run_on_video(model, video))
    streams = {
        id(m._stream) for m in [model.temporal_aggregation, *model.level_aggregations.values()]
    }
    assert len(streams) == len(FPN_LEVELS)
    for level in FPN_LEVELS:
        alone = tiny_zoo_model(*opts, "MODEL.VIDEO.IN_FEATURE", level).eval()
        assert not alone.load_state_dict(model.state_dict()).missing_keys
        seen_alone = _head_features(alone)
        list(run_on_video(alone, video))
        for t in range(5):
            torch.testing.assert_close(seen[t][level], seen_alone[t][level], rtol=0, atol=0)


def test_a_single_frame_detectron2_checkpoint_starts_ssn_at_its_detections(tmp_path):
    """The README's two stages: detectron2's GeneralizedRCNN checkpoint, then SSN on p2-p6."""
    torch.manual_seed(0)
    single = GeneralizedRCNN(
        zoo_cfg(*TINY_FPN, "MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    ).eval()
    DetectionCheckpointer(single, save_dir=str(tmp_path)).save("single_frame")
    torch.manual_seed(1)  # not the single-frame model's initialisation
    ssn = build_model(zoo_cfg(*TINY_FPN, "MODEL.VIDEO.AGGREGATION", "SSNAggregation")).eval()
    DetectionCheckpointer(ssn).load(str(tmp_path / "single_frame.pth"))
    state = ssn.state_dict()
    for key, value in single.state_dict().items():
        assert torch.equal(state[key], value), key
    # Only the aggregation is new, once for all levels.
    assert {k.split(".")[0] for k in set(state) - set(single.state_dict())} == {
        "temporal_aggregation"
    }
    video = random_video(3, seed=4)
    with torch.no_grad():
        expected = [single([frame])[0]["instances"] for frame in video]
    for (_, output), want in zip(run_on_video(ssn, video), expected):
        got = output["instances"]
        assert len(want) > 0
        torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor)
        torch.testing.assert_close(got.scores, want.scores)


@pytest.fixture(scope="module")
def readme_window_max(tmp_path_factory):
    """The README's WindowMax ("Adding a video method"), imported from a module of its own."""
    import re

    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        (code,) = [
            c for c in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "class WindowMax" in c
        ]
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_method.py").write_text(code)
    sys.path.insert(0, str(folder))
    try:
        import my_method  # noqa: F401
    finally:
        sys.path.remove(str(folder))
    return folder


@pytest.mark.parametrize("aggregation", list(FPN_AGGREGATIONS))
def test_every_aggregation_trains_and_evaluates_on_the_zoo_fpn(
    aggregation, synthetic_datasets, readme_window_max, tmp_path
):
    cfg = zoo_cfg(*TINY_FPN, "MODEL.VIDEO.AGGREGATION", aggregation, *FPN_AGGREGATIONS[aggregation])
    trainer = brief_trainer(cfg, tmp_path, iterations=2)
    assert trainer.model.in_features == FPN_LEVELS
    trainer.train()
    assert len(trained_losses(trainer)) == 2
    metrics = evaluate_on_synthetic(cfg, trainer.model)
    assert {"mAP", "mAP_slow", "mAP_medium", "mAP_fast"} <= set(metrics)


def test_a_diverged_fpn_stsn_fails_in_one_line_instead_of_crashing(synthetic_datasets, tmp_path):
    """
    The issue's segmentation fault: SSN on p3 of the zoo's R50-FPN, trained from scratch until
    its features overflowed to NaN, evaluated at 128 px with a (2, 2) window. Its offsets were
    NaN, and torchvision's deform_conv2d read memory outside its input at NaN locations.
    """
    opts = [
        "MODEL.VIDEO.AGGREGATION", "SSNAggregation", "MODEL.VIDEO.IN_FEATURE", "p3",
        "MODEL.VIDEO.TEST_WINDOW", "(2, 2)", "INPUT.MIN_SIZE_TEST", "128",
    ]  # fmt: skip
    torch.manual_seed(0)
    state = build_model(zoo_cfg(*opts)).state_dict()
    # Diverged weights, as 3 iterations from scratch left them (up to 5e21): the last conv of
    # every bottleneck 1000 times too large overflows the features to NaN.
    for key, value in state.items():
        if key.startswith("backbone.bottom_up.") and key.endswith("conv3.weight"):
            value.mul_(1e3)
    weights = tmp_path / "diverged.pth"
    torch.save({"model": state}, weights)
    command = [
        sys.executable, "train_net.py", "--eval-only", "--config-file", ZOO_CONFIG,
        "MODEL.META_ARCHITECTURE", "VideoRCNN", *opts, "MODEL.WEIGHTS", str(weights),
        "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "5",
        "DATASETS.TEST", "('synthetic_vid_val',)", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "output"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    run = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 1, f"exit status {run.returncode}: {run.stderr[-2000:]}"
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "FloatingPointError: deform_conv2d: 5760 of 5760 offset values are NaN (the input "
            "(1, 512, 16, 20) has 163840 non-finite values): the model has diverged"
        )
    ), run.stderr[-2000:]


def test_every_aggregation_trains_and_evaluates_under_two_processes(
    synthetic_datasets, readme_window_max, tmp_path
):
    report = tmp_path / "report.json"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([REPO_ROOT, str(readme_window_max)]),
        FPN_WORKER_IMPORT="my_method",
    )
    worker = os.path.join(os.path.dirname(__file__), "_fpn_worker.py")
    subprocess.run(
        [sys.executable, worker, str(report), str(tmp_path), *FPN_AGGREGATIONS],
        env=env,
        timeout=900,
        check=True,
    )
    with open(report) as f:
        results = json.load(f)
    for aggregation in FPN_AGGREGATIONS:
        assert results[aggregation] == "ok, world size 2", results[aggregation]
        log = (tmp_path / aggregation / "log.txt").read_text()
        assert "VID evaluation of 'synthetic_vid_val'" in log, aggregation
