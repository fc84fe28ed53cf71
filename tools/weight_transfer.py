#!/usr/bin/env python
"""
Start STMN from a single-frame checkpoint: write an STMN checkpoint for MODEL.WEIGHTS.

    python tools/weight_transfer.py --config-file configs/stmn_R50_DC5.yaml \\
        --input output/stmn_single_frame/model_final.pth --output stmn_init.pth
    python train_net.py --config-file configs/stmn_R50_DC5.yaml MODEL.WEIGHTS stmn_init.pth

Which checkpoint to start from. The STMN paper (Xiao & Lee 2018, §3.2) initialises the STMM's
W_z, W_r and W with the weights of the conv the STMM replaces, the last one between the backbone
and the RoI pooling. Our DC5 Faster R-CNN has no such conv, so the single-frame detector to
start from is the one with STMNSingleFrameAggregation (ReLU(W * res5) before the heads), trained
with the STMN config and

    MODEL.VIDEO.AGGREGATION STMNSingleFrameAggregation INPUT.VIDEO.TRAIN_SAMPLING none \\
    MODEL.VIDEO.TEST_WINDOW "(0, 0)"

A plain single-frame checkpoint (SingleFrameAggregation, e.g. of the shipped
configs/synthetic/single_frame.yaml) works too: it is the static detector with an identity conv
before its heads (the map it reads is post-ReLU), so W_z, W_r and W start as that identity when
MODEL.STMN.MEMORY_CHANNELS equals the map's width, as configs/synthetic/stmn.yaml sets it.
Otherwise pass --source-conv '' to take the backbone and heads only (the cells start fresh).

What is copied, from the checkpoint to the STMN model of --config-file:
  * temporal_aggregation.feature_conv (or the conv --source-conv names; the identity for a plain
    checkpoint) -> W_z, W_r and W of each direction's cell; U_z, U_r, U keep their fresh
    initialisation;
  * every other tensor with the same name and shape (backbone, RPN, ROI heads);
  * the layers reading the aggregated map see [M_forward, M_backward], twice the single-frame
    channels: they are widened so that the detector is unchanged when both memories equal the
    single-frame feature (outputs copied twice, inputs halved);
  * tensors with no counterpart keep the model's initialisation; each one is logged.

The output folder and the input are checked before the model is built (the input is then read
a second time by the conversion).
"""

import argparse
import os
import pickle
import sys
import zipfile

import torch
from detectron2.utils.logger import setup_logger

from vod_d2.checkpoint import convert_checkpoint
from vod_d2.engine import load_config
from vod_d2.modeling.temporal.weight_transfer import DEFAULT_SOURCE_CONV


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/weight_transfer.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="config of the STMN model")
    parser.add_argument(
        "--input", required=True, help="single-frame .pth checkpoint (a detectron2 'model' dict)"
    )
    parser.add_argument(
        "--output", required=True, help="STMN .pth checkpoint to write (its folder is created)"
    )
    parser.add_argument(
        "--source-conv",
        default=DEFAULT_SOURCE_CONV,
        help="conv of the checkpoint that becomes W_z, W_r, W (default: %(default)s, or the "
        "identity for a plain single-frame checkpoint); '' to skip the conversion",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def check_input(path: str) -> None:
    """
    Check that ``path`` is a checkpoint holding a model state dict.

    Raises:
        FileNotFoundError, ValueError: one line naming the file, when it is missing or not a
            PyTorch checkpoint of a model.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"--input {path} is not a PyTorch checkpoint (torch.load raises "
            f"{type(e).__name__}); give the model_final.pth (or model_*.pth) train_net.py wrote"
        ) from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--input {path} is not a detectron2 checkpoint (a 'model' state dict)")


def prepare_output(path: str) -> None:
    """Create the output's folder; fail now, not after the work, if it cannot be written."""
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a folder; give the .pth file to write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {path}: cannot create its folder {folder}: {e}") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output {path}: its folder {folder} is not writable")


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="vod_d2")
    prepare_output(args.output)
    check_input(args.input)
    cfg = load_config(args.config_file, args.opts)
    return convert_checkpoint(cfg, args.input, args.output, args.source_conv)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError) as e:
        # KeyError's str() is the repr of its message.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"weight_transfer.py: error: {message}")
