#!/usr/bin/env python
"""
Pretrain a video method's flow network on synthetic frame pairs and write MODEL.FLOW.WEIGHTS.

    python tools/pretrain_flow.py --config-file configs/synthetic/impression.yaml \\
        --output output/flow/flownets_synthetic.pth [--iters 3000] [--eval-period 500]
    python train_net.py --config-file configs/synthetic/impression.yaml \\
        MODEL.FLOW.WEIGHTS output/flow/flownets_synthetic.pth

The network is the config's (MODEL.FLOW.NAME, its widths, MODEL.FLOW.INPUT_SCALE), trained at
the config's test size (INPUT.MIN_SIZE_TEST, frames of the synthetic data's 4:5 aspect) on pairs
of synthetic frames with their exact flow (vod_d2.modeling.flow.pretrain). With MODEL.FLOW.WEIGHTS
among the overrides it starts from those weights: fine-tuning, e.g. RAFT-small from
FlyingChairs + FlyingThings3D:

    python tools/pretrain_flow.py --config-file configs/synthetic/dff.yaml \\
        --output output/flow/raft_small_synthetic.pth --iters 2000 --lr 1e-4 \\
        --background-first 0 --clip-grad 1 --eval-period 200 \\
        MODEL.FLOW.NAME RAFTSmall MODEL.FLOW.WEIGHTS raft_small_C_T_V1.pth

The end-point error on held-back pairs is printed, with that of zero flow (an untrained
network's), and stored in the checkpoint; with --eval-period, so is its curve (from step 0),
also written as JSON next to the checkpoint (<output>.curve.json).
"""

import argparse
import json
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
    parser.add_argument(
        "--background-first",
        type=float,
        default=0.4,
        help="share of the steps on backgrounds alone (0 to fine-tune pretrained weights)",
    )
    parser.add_argument(
        "--clip-grad", type=float, default=None, help="clip the gradient norm to this"
    )
    parser.add_argument(
        "--eval-period",
        type=int,
        default=0,
        help="steps between points of the held-back EPE curve (0: no curve)",
    )
    parser.add_argument(
        "--eval-pairs", type=int, default=48, help="held-back pairs of each curve point"
    )
    parser.add_argument(
        "--held-back", type=int, default=200, help="held-back pairs of the final EPE"
    )
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
    try:
        flow_net = build_flow_net(cfg, feature_channels)
    except ValueError as e:  # a bad setting or MODEL.FLOW.WEIGHTS, named in one line
        sys.exit(f"tools/pretrain_flow.py: error: {e}")
    if not any(p.requires_grad for p in flow_net.parameters()):
        sys.exit(
            f"tools/pretrain_flow.py: error: MODEL.FLOW.NAME {cfg.MODEL.FLOW.NAME} has no "
            "weights to train"
        )
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
        held_back=args.held_back,
        background_first=args.background_first,
        eval_period=args.eval_period,
        eval_pairs=args.eval_pairs,
        clip_grad_norm=args.clip_grad,
    )
    save_pretrained(flow_net, args.output, result)
    if result.curve:
        with open(f"{args.output}.curve.json", "w") as f:
            json.dump(result.curve, f, indent=1)
        print("step  EPE (cells)  zero flow  backgrounds  zero flow")
        for point in result.curve:
            print(
                f"{point['step']:>5}  {point['epe']:>11.4f}  {point['zero_epe']:>9.4f}  "
                f"{point['background_epe']:>11.4f}  {point['background_zero_epe']:>9.4f}"
            )
    print(
        f"held-back end-point error {result.epe:.4f} feature cells against {result.zero_epe:.4f} "
        f"for zero flow ({result.seconds:.0f} s); wrote {args.output}"
    )


if __name__ == "__main__":
    main()
