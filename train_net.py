#!/usr/bin/env python
"""
Train and evaluate vod_d2 video detectors with detectron2's trainer.

    python train_net.py --config-file configs/synthetic/single_frame.yaml
    python train_net.py --config-file configs/stsn_R50_DC5.yaml --num-gpus 8
    python train_net.py --config-file configs/stsn_R50_DC5.yaml --eval-only MODEL.WEIGHTS x.pth
"""

import sys

try:
    import detectron2  # noqa: F401
except ImportError:
    sys.exit(
        "detectron2 is not installed: install it first, see "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    )

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vod_d2 import add_vod_config
from vod_d2.engine import VideoTrainer


def setup(args):
    """Config from the defaults, the vod_d2 keys, the file and the command line, frozen."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vod_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = VideoTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return VideoTrainer.test(cfg, model)
    trainer = VideoTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
