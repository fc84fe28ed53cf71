#!/usr/bin/env python
"""
Train and evaluate vod_d2 video detectors with detectron2's trainer.

    python train_net.py --config-file configs/synthetic/single_frame.yaml
    python train_net.py --config-file configs/stsn_R50_DC5.yaml --num-gpus 8
    python train_net.py --config-file configs/stsn_R50_DC5.yaml --eval-only MODEL.WEIGHTS x.pth
    python train_net.py --config-file ... DATASETS.FILE my_datasets.yaml \\
        DATASETS.TRAIN '("my_videos_train",)' DATASETS.TEST '("my_videos_val",)'
    python train_net.py --config-file COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml \\
        MODEL.META_ARCHITECTURE VideoRCNN MODEL.VIDEO.AGGREGATION STSNAggregation ...

``--config-file`` is a file, or the name of a detectron2 model zoo config (as
``detectron2.model_zoo.get_config_file`` takes it) where no such file exists.

Before any process is launched, the config is checked against its datasets and weights: every
name of DATASETS.TRAIN/TEST is registered (built-in, or declared in the DATASETS.FILE datasets
file), each dataset has as many classes as the model, and MODEL.WEIGHTS exists (and is given,
for --eval-only). A failed check prints one line and exits with status 1.
"""

import os
import sys

try:
    import detectron2  # noqa: F401
except ImportError:
    sys.exit(
        "detectron2 is not installed: run `bash scripts/setup_env.sh`, or install it as "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html says"
    )

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vod_d2 import add_vod_config
from vod_d2.data import check_datasets, register_datasets_from_config
from vod_d2.engine import VideoCheckpointer, VideoTrainer


def resolve_config_file(path: str) -> str:
    """
    ``path`` when it is a file, else the model zoo's config of that name.

    Raises:
        FileNotFoundError: it is neither.
    """
    if os.path.isfile(path):
        return path
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(path)
    except RuntimeError:
        raise FileNotFoundError(
            f"--config-file {path} is neither a file nor a detectron2 model zoo config (such as "
            "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml)"
        ) from None


def build_config(args):
    """Config from the defaults, the vod_d2 keys, the file and the command line, frozen."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def setup(args):
    """The config, its datasets registered (in every process), with detectron2's set-up."""
    cfg = build_config(args)
    register_datasets_from_config(cfg)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vod_d2")
    return cfg


def check(args) -> None:
    """
    Check the config before launching: datasets (names, class counts) and weights.

    Raises:
        ValueError, FileNotFoundError: one line naming the key, dataset or file at fault.
    """
    cfg = build_config(args)
    register_datasets_from_config(cfg)
    check_datasets(cfg, train=not args.eval_only)
    if args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # the trainer resumes from OUTPUT_DIR, not MODEL.WEIGHTS
    weights = cfg.MODEL.WEIGHTS
    if args.eval_only and not weights:
        raise ValueError(
            f"--eval-only needs trained weights, but MODEL.WEIGHTS is empty in "
            f"{args.config_file} (it trains from scratch), so a randomly initialised model "
            "would be evaluated: add MODEL.WEIGHTS path/to/model_final.pth"
        )
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights} does not exist")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = VideoTrainer.build_model(cfg)
        VideoCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return VideoTrainer.test(cfg, model)
    trainer = VideoTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    args = parser.parse_args()
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        parser.error(
            f"{', '.join(flags)} came after the config options, which take everything after "
            "them as KEY VALUE pairs: put the flags first"
        )
    try:
        args.config_file = resolve_config_file(args.config_file)
        check(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train_net.py: error: {e}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
