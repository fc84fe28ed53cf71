"""
Shared pieces of the streaming-inference benchmarks: arguments, config, a model with random
weights, a random test video, device synchronisation, timed and peak-memory streams and a
per-call timer.
"""

import time

import torch
from _memory import CpuPeak, CudaPeak, release_freed_memory
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from vod_d2 import add_vod_config, engine
from vod_d2.engine import run_on_video


def add_arguments(parser, default_config):
    """The options both benchmarks take; ``opts`` are config overrides KEY VALUE ..."""
    parser.add_argument("--config-file", default=default_config)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(600, 1000), help="frame H W")
    parser.add_argument("--frames", type=int, default=30, help="frames of the timed video")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("opts", nargs="...", help="config overrides KEY VALUE ...")


def load_config(args):
    """The config of ``--config-file`` with the overrides (its datasets file registered), on
    ``--device``."""
    cfg = engine.load_config(args.config_file, args.opts, register_datasets=True)
    cfg.MODEL.DEVICE = args.device
    return cfg


def device_name(device):
    return torch.cuda.get_device_name(device) if "cuda" in device else "cpu"


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class CallTimer:
    """
    Wraps ``owner.<name>`` (a module's ``forward``, a method) so that the wall time of every
    call, synchronised on ``device``, adds to ``self.seconds``, and ``self.calls`` counts them.
    """

    def __init__(self, owner, name, device):
        self.seconds = 0.0
        self.calls = 0
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize(device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        setattr(owner, name, timed)


def random_video(num_frames, height, width, seed=0):
    """``num_frames`` uint8 frames (3, height, width) in the test-loader's dict format."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
            "height": height,
            "width": width,
            "video_id": "benchmark",
            "frame_idx": t,
        }
        for t in range(num_frames)
    ]


def random_model(cfg):
    """
    The eval-mode model of ``cfg`` with random weights (seed 0), for timing.

    With random weights, what the heads cost would depend on each model's random features:
    the RPN's boxes decide how many bilinear samples RoI pooling takes (adaptive sampling) and
    how many boxes NMS keeps. So the RPN's predictor convs are zeroed: every model then ranks
    equal scores over the same anchors and its heads pool the same proposals, and two models'
    times differ by their feature paths and heads only.
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rpn_head = getattr(getattr(model, "proposal_generator", None), "rpn_head", None)
    if rpn_head is not None:
        for conv in (rpn_head.objectness_logits, rpn_head.anchor_deltas):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
    return model


def build_random_model(path, device, opts=()):
    """(cfg, model) of the config file ``path`` with the overrides ``opts`` (KEY VALUE ...) on
    ``device``: :func:`random_model`."""
    cfg = get_cfg()
    add_vod_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    return cfg, random_model(cfg)


def stream(model, video):
    """Stream ``video`` (its length known) through the test API; its results, in frame order."""
    outputs = list(run_on_video(model, video, len(video), video.__getitem__))
    assert len(outputs) == len(video)
    return outputs


def seconds_per_frame(model, video, device):
    """Wall time per frame of one stream of ``video`` (after the caller's warm-up)."""
    synchronize(device)
    start = time.perf_counter()
    stream(model, video)
    synchronize(device)
    return (time.perf_counter() - start) / len(video)


def streaming_peak_mib(model, video, warmup, device):
    """
    The peak memory (MiB) that streaming ``warmup`` frames, then ``video``, adds. It calls
    release_freed_memory(), which slows down allocations: call it in a process that times
    nothing (see ``_memory.in_fresh_process``).
    """
    release_freed_memory()
    with CudaPeak(device) if device.startswith("cuda") else CpuPeak() as peak:
        stream(model, video[:warmup])
        stream(model, video)
    return peak.peak_bytes / 2**20
