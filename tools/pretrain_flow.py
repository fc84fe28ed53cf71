#!/usr/bin/env python
"""
Pretrain a video method's flow network on synthetic frame pairs and write MODEL.FLOW.WEIGHTS.

    python tools/pretrain_flow.py --config-file configs/synthetic/impression.yaml \\
        --output output/flow/flownets_synthetic.pth [--iters 3000]
    python train_net.py --config-file configs/synthetic/impression.yaml \\
        MODEL.FLOW.WEIGHTS output/flow/flownets_synthetic.pth

The network is the config's (MODEL.FLOW.NAME and its widths), trained at the config's test size
(INPUT.MIN_SIZE_TEST, frames of the synthetic data's 4:5 aspect) on pairs of synthetic frames
with their exact flow (vod_d2.modeling.flow.pretrain). The end-point error on held-back pairs is
printed, with that of zero flow (an untrained network's), and stored in the checkpoint.
"""

import argparse
import logging
import os
import sys

import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from vod_d2 import add_vod_config
from vod_d2.modeling.flow import build_flow_net
from vod_d2.modeling.flow.pretrain import pretrain_flow, save_pretrained


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/pretrain_flow.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="config of the flow-guided method")
    parser.add_argument("--output", required=True, help="the checkpoint to write (.pth)")
    parser.add_argument("--iters", type=int, default=3000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and the init")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE")
    return parser


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        sys.exit(f"tools/pretrain_flow.py: error: config file {args.config_file} does not exist")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        sys.exit(f"tools/pretrain_flow.py: error: the folder of --output, {folder}, does not exist")
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    setup_logger(name="vod_d2")
    logging.getLogger("vod_d2").setLevel(logging.INFO)
    torch.manual_seed(args.seed)
    feature_channels = 1  # S is not trained: any width will do, the checkpoint omits it
    flow_net = build_flow_net(cfg, feature_channels)
    height = cfg.INPUT.MIN_SIZE_TEST
    size = (height, height * 5 // 4)
    result = pretrain_flow(
        flow_net,
        iterations=args.iters,
        size=size,
        input_format=cfg.INPUT.FORMAT,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    save_pretrained(flow_net, args.output, result)
    print(
        f"held-back end-point error {result.epe:.4f} feature cells against {result.zero_epe:.4f} "
        f"for zero flow ({result.seconds:.0f} s); wrote {args.output}"
    )


if __name__ == "__main__":
    main()
