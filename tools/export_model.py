#!/usr/bin/env python
"""
Export a vod_d2 detector as a streaming step: one frame and the state in, the frame's
detections and the next state out (README, "Export").

    python tools/export_model.py --config-file configs/synthetic/stsn_rfcn.yaml \\
        --output exported/stsn_rfcn MODEL.WEIGHTS output/synthetic/stsn_rfcn/model_final.pth
    python exported/stsn_rfcn/run.py --video-input in.mp4 --json detections.json
    python demo/demo.py --exported exported/stsn_rfcn --video-input in.mp4 --output out.mp4

The output folder gets ``step.pt2`` (an AOTInductor package of the step and its reset, run
without vod_d2's Python code), ``step.onnx`` and ``reset.onnx`` where every op of the graph has an
ONNX form, ``export.json`` (the inputs, the state's names, shapes and dtypes, the outputs, the
preprocessing) and ``run.py``, a runner that streams a video file through the package.

Offline methods are exported as their causal variant (vod_d2.make_online: windows in the past,
key frames first in their segments, SparseVOD's support from past frames, no Seq-NMS); the
changed keys are printed and recorded. A method that has no exportable step yet is refused in one
line naming the part that blocks it, before anything is built or traced.
"""

import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

from vod_d2.checkpoint import resolve_weights
from vod_d2.engine import load_config
from vod_d2.export import NotExportable, check_exportable, export_model


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/export_model.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the method's config")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="the step's input size to trace at (default: a 640x480 frame resized by "
        "INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)",
    )
    parser.add_argument(
        "--static", action="store_true", help="a package for the traced frame size only"
    )
    parser.add_argument(
        "--no-package", action="store_true", help="skip the AOTInductor package (minutes)"
    )
    parser.add_argument(
        "--onnx",
        choices=("auto", "on", "off"),
        default="auto",
        help="ONNX models: where the graph allows it (auto), required (on) or not (off)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def prepare_output(path: str) -> None:
    """Create the output folder now: fail before the work, not after it."""
    if os.path.isfile(path):
        raise ValueError(f"--output {path} is a file; give a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {path}: cannot create it: {e}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"--output {path} is not writable")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="vod_d2")
    cfg = load_config(args.config_file, args.opts, register_datasets=True)
    check_exportable(cfg)
    if cfg.MODEL.WEIGHTS:
        cfg.MODEL.WEIGHTS = resolve_weights(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("no MODEL.WEIGHTS: exporting the model's initial (random) weights")
    prepare_output(args.output)
    description = export_model(
        cfg,
        args.output,
        frame_size=args.frame_size,
        aoti=not args.no_package,
        onnx=args.onnx,
        dynamic=not args.static,
    )
    print(f"exported {description['method']['step']} of {args.config_file} to {args.output}")
    for key, (old, new) in description["method"]["causal_variant"].items():
        print(f"  causal variant: {key} {old} -> {new}")
    frame = description["frame"]
    size = frame["fixed_size"]
    print(f"  frames: {'%dx%d only' % tuple(size) if size else 'any size'} ({frame['format']})")
    for spec in description["state"]:
        print(f"  state {spec['name']}: {tuple(spec['shape'])} {spec['dtype']}")
    onnx = description.get("onnx", {})
    if onnx and not onnx["exported"]:
        print(f"  no ONNX: {onnx['why']}")
    elif onnx:
        check = onnx["check"]
        agreement = "the same detections as" if check["same"] else "other detections than"
        print(
            f"  ONNX: {agreement} the package on {check['frames']} random frames (boxes within "
            f"{check['max_box_diff']:.1e} px, scores {check['max_score_diff']:.1e})"
        )
    print(f"  files: {', '.join(sorted(_files(description['files'])))}")
    return 0


def _files(files):
    for value in files.values():
        if isinstance(value, dict):
            yield from value.values()
        else:
            yield value


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (NotExportable, OSError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"export_model.py: error: {message}")
