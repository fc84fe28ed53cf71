"""
VideoRCNN on the detectron2 model zoo's R50-FPN detector (``COCO-Detection/
faster_rcnn_R_50_FPN_1x.yaml`` with ``MODEL.META_ARCHITECTURE VideoRCNN``), as its users run it.
"""

import os
import subprocess
import sys

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"


def zoo_cfg(*opts):
    """The model zoo's R50-FPN config as VideoRCNN on the CPU, 5 classes, then ``opts``."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(ZOO_CONFIG))
    cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", "VideoRCNN", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
         "MODEL.ROI_HEADS.NUM_CLASSES", 5, *opts]
    )  # fmt: skip
    return cfg


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
        sys.executable, "train_net.py", "--eval-only", "--config-file",
        model_zoo.get_config_file(ZOO_CONFIG), "MODEL.META_ARCHITECTURE", "VideoRCNN", *opts,
        "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "5",
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
