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
key exists, every name of DATASETS.TRAIN/TEST is registered (built-in, or declared in the
DATASETS.FILE datasets file), each dataset has as many classes as the model and loads (its
annotations and frame files are checked), and MODEL.WEIGHTS exists or is fetched (and, for
--eval-only, is given and was trained for the model's classes). A failed check prints one line
and exits with status 1, before anything is written to OUTPUT_DIR. A frame that becomes
unreadable while the processes run is also reported in one line (by the process that read it,
which exits with status 1), and the run's metrics and TensorBoard events are removed unless it
saved a checkpoint to resume from.
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

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from vod_d2.checkpoint import VideoCheckpointer, check_inference_weights, resolve_weights
from vod_d2.data import (
    FrameReadError,
    check_dataset_contents,
    check_datasets,
    register_datasets_from_config,
)
from vod_d2.engine import VideoTrainer, load_config

# The exit status of a process that reported an error in one line.
ERROR_STATUS = 1


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
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def setup(args):
    """The config, its datasets registered (in every process), with detectron2's set-up."""
    cfg = build_config(args)
    register_datasets_from_config(cfg)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vod_d2")
    return cfg


def check(args):
    """
    Check the config before launching: keys, datasets (names, class counts, contents) and
    weights.

    Returns:
        CfgNode: the config.

    Raises:
        ValueError, FileNotFoundError: one line naming the key, dataset or file at fault.
    """
    if not args.config_file:
        raise ValueError(
            "no config file: give one with --config-file, e.g. `python train_net.py "
            "--config-file configs/synthetic/single_frame.yaml` (--help lists the options)"
        )
    args.config_file = resolve_config_file(args.config_file)
    cfg = build_config(args)
    register_datasets_from_config(cfg)
    check_datasets(cfg, train=not args.eval_only)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    # The trainer resumes from OUTPUT_DIR, not MODEL.WEIGHTS.
    if not resuming and args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError(
                f"--eval-only needs trained weights, but MODEL.WEIGHTS is empty in "
                f"{args.config_file} (it trains from scratch), so a randomly initialised model "
                "would be evaluated: add MODEL.WEIGHTS path/to/model_final.pth"
            )
        check_inference_weights(cfg)
    elif not resuming and cfg.MODEL.WEIGHTS:
        resolve_weights(cfg.MODEL.WEIGHTS)  # fetched once here, for every process
    check_dataset_contents(cfg, train=not args.eval_only)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = VideoTrainer.build_model(cfg)
        VideoCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return VideoTrainer.test(cfg, model)
    trainer = VideoTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """
    :func:`main` in a launched process: a frame that cannot be read is reported in one line by
    the process that read it, which exits with :data:`ERROR_STATUS`.
    """
    try:
        return main(args)
    except FrameReadError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(ERROR_STATUS)


def discard_partial_run(output_dir: str, before: set) -> None:
    """
    After a run stopped by an error: remove the metrics.json and TensorBoard events it started
    (files not in ``before``), unless it saved a checkpoint to resume from, so that nothing in
    ``output_dir`` looks like a training run. config.yaml and log.txt stay.
    """
    if not os.path.isdir(output_dir):
        return
    new = set(os.listdir(output_dir)) - before
    if any(name.startswith("model_") and name.endswith(".pth") for name in new):
        return
    for name in new:
        if name == "metrics.json" or name.startswith("events.out.tfevents."):
            os.remove(os.path.join(output_dir, name))


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
        cfg = check(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train_net.py: error: {e}")
    before = set(os.listdir(cfg.OUTPUT_DIR)) if os.path.isdir(cfg.OUTPUT_DIR) else set()
    try:
        launch(
            run,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (SystemExit, ProcessExitedException) as e:
        # One process reported its error in one line (a spawned one's exit is an exception).
        status = e.code if isinstance(e, SystemExit) else e.exit_code
        if status != ERROR_STATUS:
            raise
        discard_partial_run(cfg.OUTPUT_DIR, before)
        sys.exit(ERROR_STATUS)
