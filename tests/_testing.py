"""
Helpers shared by the test modules (importable as ``_testing``: pytest puts ``tests/`` on the
path for its conftest).
"""

import os
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from vod_d2.layers import _ext

requires_extension = pytest.mark.skipif(
    not _ext.extension_available(), reason="vod_d2._C is not built"
)
requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.extension_has_cuda()),
    reason="needs a GPU and vod_d2._C built with CUDA",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_python(folder):
    """
    ``folder/bin/python``, made if missing: the README's ``python`` for commands run with
    ``folder/bin`` first on the PATH (see :func:`run_readme_command`). It runs the interpreter
    running the tests with its virtualenv: a script that execs ``sys.executable``, because a
    symlink to a virtualenv's python outside the virtualenv's ``bin/`` finds no ``pyvenv.cfg``
    beside it and runs the base interpreter, without the virtualenv's packages.
    """
    python = Path(folder) / "bin" / "python"
    if not python.exists():
        python.parent.mkdir(parents=True, exist_ok=True)
        python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        python.chmod(0o755)
    return python


def run_readme_command(folder, command, timeout=300):
    """
    A bash command line as the README writes it (``python train_net.py ...``), run from
    ``folder`` with :func:`readme_python` first on the PATH, the repository on the PYTHONPATH
    and one OpenMP thread per process; the ``subprocess.CompletedProcess`` (text output).
    """
    env = {
        **os.environ,
        "PATH": f"{readme_python(folder).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def synthetic_cfg(name, **opts):
    """
    ``configs/synthetic/{name}.yaml`` at the tests' size (64 px frames, 20 proposals, no data
    loader workers), then ``opts`` (config key -> value) merged.
    """
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(f"configs/synthetic/{name}.yaml")
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def random_video(num_frames, seed=0, size=(64, 80), output_scale=1):
    """
    A random video in the test loader's format: ``num_frames`` dicts with a (3, H, W) uint8
    ``image`` of ``size``, the output ``height``/``width`` ``output_scale`` times the image's,
    ``video_id`` ``f"v{seed}"`` and ``frame_idx``.
    """
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8),
            "height": size[0] * output_scale,
            "width": size[1] * output_scale,
            "video_id": f"v{seed}",
            "frame_idx": t,
        }
        for t in range(num_frames)
    ]


def count_backbone_calls(model):
    """Wrap ``model.backbone``; returns the list that gets the batch size of every call."""
    calls = []
    forward = model.backbone.forward

    def counting(x):
        calls.append(x.shape[0])
        return forward(x)

    model.backbone.forward = counting
    return calls


def read_video(path):
    """All frames of a video file as BGR uint8 arrays (H, W, 3), read with OpenCV."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def brief_trainer(cfg, output_dir, iterations=2):
    """
    A VideoTrainer of ``cfg`` at the tests' size (``iterations`` iterations of 2 images of
    64 px, no workers, no evaluation at the end), seeded and loaded as train_net.py does, not
    yet trained: call ``.train()`` (after recording what the test compares).
    """
    from detectron2.utils.env import seed_all_rng

    from vod_d2.engine import VideoTrainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(
        ["SOLVER.MAX_ITER", iterations, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1,
         "DATALOADER.NUM_WORKERS", 0, "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64,
         "OUTPUT_DIR", str(output_dir), "DATASETS.TEST", ()]
    )  # fmt: skip
    seed_all_rng(cfg.SEED)
    trainer = VideoTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def trained_losses(trainer):
    """The total losses of every iteration a trainer ran (all finite: asserted)."""
    import math

    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert losses and all(math.isfinite(v) for v in losses), losses
    return losses


def evaluate_on_synthetic(cfg, model):
    """VID metrics of ``model`` on the synthetic validation videos (at 64 px)."""
    from vod_d2.engine import VideoTrainer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = ("synthetic_vid_val",)
    cfg.INPUT.MIN_SIZE_TEST = 64
    return VideoTrainer.test(cfg, model)["synthetic_vid_val"]["bbox"]


def stmn_cfg(
    cfg, aggregation="STMNAggregation", window=(2, 2), train_offsets=None, matchtrans=True, **stmn
):
    """
    A clone of ``cfg`` with a tiny STMN: 8-channel memories, test window ``window``,
    MatchTrans on or off, and with ``train_offsets`` training samples at those fixed offsets;
    ``stmn`` sets other ``MODEL.STMN`` keys.
    """
    cfg = cfg.clone()
    cfg.MODEL.VIDEO.AGGREGATION = aggregation
    cfg.MODEL.VIDEO.TEST_WINDOW = window
    cfg.MODEL.STMN.MEMORY_CHANNELS = 8
    cfg.MODEL.STMN.MATCHTRANS.ENABLED = matchtrans
    if train_offsets is not None:
        cfg.INPUT.VIDEO.TRAIN_SAMPLING = "fixed"
        cfg.INPUT.VIDEO.TRAIN_OFFSETS = train_offsets
    for key, value in stmn.items():
        setattr(cfg.MODEL.STMN, key, value)
    return cfg


def seeded_model(cfg, train=False):
    """``build_model(cfg)`` with torch seeded to 0, in training or eval mode."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg).train(train)


def unmatched_detections(got, want, box_atol, score_atol):
    """
    The detections of ``want`` that no detection of ``got`` equals, one to one: the same class,
    every box coordinate within ``box_atol`` pixels, the score within ``score_atol``. Matched,
    not compared by index: detections whose scores tie within the tolerance may come out in
    either order.

    Args:
        got, want: (boxes (N, 4), scores (N,), classes (N,)) of a frame.

    Returns:
        list[tuple]: (box (4,), score) of each unmatched detection of ``want``.
    """
    from scipy.optimize import linear_sum_assignment

    (boxes, scores, classes), (want_boxes, want_scores, want_classes) = got, want
    equal = ((boxes[None] - want_boxes[:, None]).abs() <= box_atol).all(2)
    equal &= (scores[None] - want_scores[:, None]).abs() <= score_atol
    equal &= classes[None] == want_classes[:, None]
    rows, cols = linear_sum_assignment(-equal.double().numpy())
    unmatched = set(range(len(want_boxes))) - {i for i, j in zip(rows, cols) if equal[i, j]}
    return [(want_boxes[i], want_scores[i].item()) for i in sorted(unmatched)]


def fill_by_name(model, scale=0.08):
    """
    Overwrite every parameter and buffer with values seeded by its name: ``scale`` times normal
    samples, but BatchNorm variances 0.5 or more and BatchNorm scales (the only 1-D weights) near
    0.5 (a 5% spread). BatchNorm scales of ``scale`` would shrink the signal ~12x at every
    BatchNorm, until the detections hardly depend on the pixels.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            values = torch.randn(tensor.shape, generator=g, dtype=torch.float64)
            if name.endswith("running_var"):
                values = 0.5 + values.abs()
            elif name.endswith(".weight") and tensor.dim() == 1:
                values = 0.5 * (1 + 0.1 * values)
            else:
                values = scale * values
            tensor.copy_(values.float())
    return model


# The detectron2 model zoo's R50-FPN detector, which VideoRCNN runs as its users do.
ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
# Config overrides (as on a command line) that keep the zoo's structure at the tests' size: tiny
# widths, trained from scratch (BatchNorm, nothing frozen: the zoo's FrozenBN without its
# ImageNet weights diverges), 64-px frames, few proposals.
TINY_FPN = [
    "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
    "DATASETS.TRAIN", "('synthetic_vid_train',)", "TEST.VID_EVAL.COCO_METRICS", "False",
]  # fmt: skip
# Every temporal aggregation with the keys the README gives it on an FPN, at the tests' widths
# (STMN's two memories of 16 channels keep the tiny FPN's 32); WindowMax is the README's own.
FPN_AGGREGATIONS = {
    "SSNAggregation": ["MODEL.STSN.CONV_DIM", "16", "MODEL.STSN.EMBED_DIMS", "(8, 8, 16)"],
    "STSNAggregation": [
        "MODEL.STSN.CONV_DIM", "16", "MODEL.STSN.EMBED_DIMS", "(8, 8, 16)",
        "MODEL.VIDEO.TEST_WINDOW", "(2, 2)", "INPUT.VIDEO.TRAIN_SAMPLING", "before_after",
        "INPUT.VIDEO.TRAIN_NUM_SUPPORT", "2",
    ],
    "STMNAggregation": [
        "MODEL.STMN.MEMORY_CHANNELS", "16", "MODEL.VIDEO.TEST_WINDOW", "(2, 2)",
        "INPUT.VIDEO.TRAIN_SAMPLING", "fixed", "INPUT.VIDEO.TRAIN_OFFSETS", "(-2, 2)",
    ],
    "WindowMax": [
        "MODEL.VIDEO.TEST_WINDOW", "(3, 3)", "INPUT.VIDEO.TRAIN_SAMPLING", "uniform_range",
        "INPUT.VIDEO.TRAIN_NUM_SUPPORT", "2",
    ],
}  # fmt: skip


def zoo_cfg(*opts):
    """The model zoo's R50-FPN config as VideoRCNN on the CPU, 5 classes, then ``opts``."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from vod_d2 import add_vod_config

    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(ZOO_CONFIG))
    cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", "VideoRCNN", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
         "MODEL.ROI_HEADS.NUM_CLASSES", 5, *opts]
    )  # fmt: skip
    return cfg
