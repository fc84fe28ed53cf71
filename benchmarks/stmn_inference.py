"""
Per-frame inference cost and test-time memory of STMN against the single-frame baseline.

Time. Three models are built from one config (random weights: only time is measured) and stream
the same random video through the test API (``model.reset/step/flush``, each frame's backbone
once):

* ``single-frame``: ``SingleFrameAggregation``, window (0, 0);
* ``STMN``: the config's ``STMNAggregation`` and ``MODEL.VIDEO.TEST_WINDOW``;
* ``STMN no-MatchTrans``: the same without alignment.

Each frame here gets the memories of its own centred window (a (5, 5) window runs 6 cell steps
per direction per frame; the memory-independent ``W * F`` half of each step is computed once per
frame). The paper instead runs one pass over a batch of T = 11 frames and detects on all of them
(0.52 s vs 0.83 s per batch on a Titan X: +0.028 s/frame, about 1.6x R-FCN); the "paper
protocol" line times that: projecting 11 frames and both directions over them, divided by 11,
added to the single-frame time. Windows are full only TEST_WINDOW * TEST_STRIDE frames away from
the video's ends (pass ``MODEL.VIDEO.TEST_STRIDE 1`` to time full windows on a short video).

Memory (``--memory``). STMN streams a video of ``--memory-frames`` frames (default: long
enough for full windows) and, before every detection, the tensors held for later detections are
counted: the streaming core's cached payloads and pending frames, and the STMN test stream's
state (:class:`vod_d2.modeling.temporal.stmn_stream.STMNTestStream`). The peak is printed with
what the window cache it replaces would hold, every frame of a window with its features and both
projections (101 frames x 5120 channels with the paper's config), and the allocator's peak
during the stream (CUDA: max_memory_allocated; CPU: the resident set's high-water mark).

    python benchmarks/stmn_inference.py --config-file configs/stmn_R50_DC5.yaml --device cuda
    python benchmarks/stmn_inference.py --config-file configs/stmn_R101_RFCN.yaml --memory
    python benchmarks/stmn_inference.py --config-file configs/synthetic/stmn.yaml --size 128 160
"""

import argparse
import json
import time

import torch
from _memory import CpuPeak, CudaPeak, release_freed_memory
from _streaming import (
    add_arguments,
    device_name,
    load_config,
    random_model,
    random_video,
    seconds_per_frame,
    stream,
    synchronize,
)

MB = 1e6


def _build(cfg, opts=()):
    cfg = cfg.clone()
    cfg.merge_from_list(list(opts))
    return random_model(cfg)


def time_per_frame(model, video, warmup, device):
    """Seconds per frame of streaming ``video`` (after ``warmup`` frames) through ``model``."""
    stream(model, video[:warmup])
    return seconds_per_frame(model, video, device)


@torch.no_grad()
def paper_protocol_overhead(model, image, length, repeats, device):
    """Seconds per frame of projecting ``length`` frames and running both STMN directions once
    over them."""
    module = model.temporal_aggregation
    features = model.backbone(model.preprocess_image([{"image": image}]).tensor)[
        model.in_features[0]
    ]
    frames = features.expand(length, -1, -1, -1).contiguous()

    def one_pass():
        # The frames are copies of one: the order a direction visits them in costs the same.
        for direction in module._directions:
            direction(frames[None], direction.cell.project(frames)[None])

    one_pass()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    synchronize(device)
    return (time.perf_counter() - start) / (repeats * length)


def held_bytes(model):
    """
    Bytes of the tensors the model holds for later detections of the current video: the
    streaming core's cached payloads plus the STMN stream's state, and the core's pending
    frames (their input images).
    """
    video = model._video  # the streaming core's per-video state (benchmark introspection)
    tensors = [t for payload in video.cache.values() for t in payload.values()]
    tensors += model.temporal_aggregation._stream.held_tensors()
    images = [p.image for p in video.pending.values()]

    def size(group):
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in group}.values())

    return size(tensors), size(images)


@torch.no_grad()
def measure_memory(model, video, device):
    """
    Stream ``video`` through ``model``. Returns the peaks over frames of :func:`held_bytes`
    (payloads and stream, pending frames), the bytes of the window cache they replace, and the
    allocator's peak increase during the stream.
    """
    release_freed_memory()
    peak = CudaPeak(device) if device.startswith("cuda") else CpuPeak()
    counted = []
    detect = model.detect

    def counting(*args):
        # Before each detection the most is held: detections only release.
        counted.append(held_bytes(model))
        return detect(*args)

    model.detect = counting
    with peak:
        model.reset(len(video))
        for frame in video:
            model.step(frame)
        model.flush()
    del model.detect
    module = model.temporal_aggregation
    feature = model.backbone(model.preprocess_image([video[0]]).tensor)[model.in_features[0]]
    before, after = module.test_window
    channels = feature.shape[1] + 3 * module.memory_channels * len(module._directions)
    frames = (before + after) * module.test_stride + 1
    window_cache = frames * channels * feature[0, 0].numel() * feature.element_size()
    payload, images = (max(c[i] for c in counted) for i in (0, 1))
    return payload, images, window_cache, peak.peak_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--paper-length", type=int, default=11, help="T of the paper protocol")
    parser.add_argument("--memory", action="store_true", help="measure STMN's test memory only")
    parser.add_argument("--memory-frames", type=int, help="frames of the memory measurement")
    add_arguments(parser, "configs/stmn_R50_DC5.yaml")
    args = parser.parse_args()
    cfg = load_config(args)
    results = {
        "device": device_name(args.device),
        "threads": torch.get_num_threads(),
        "config": args.config_file,
        "size": list(args.size),
        "test_window": list(cfg.MODEL.VIDEO.TEST_WINDOW),
        "test_stride": cfg.MODEL.VIDEO.TEST_STRIDE,
    }
    print(
        f"{results['device']}, {results['threads']} threads, frames {args.size[0]}x{args.size[1]}"
    )
    if args.memory:
        before, after = cfg.MODEL.VIDEO.TEST_WINDOW
        span = (before + after) * cfg.MODEL.VIDEO.TEST_STRIDE
        frames = args.memory_frames or span + 10
        stmn = _build(cfg)
        payload, images, window_cache, allocated = measure_memory(
            stmn, random_video(frames, *args.size), args.device
        )
        results.update(
            memory_frames=frames,
            held_bytes=payload,
            pending_frame_bytes=images,
            window_cache_bytes=window_cache,
            allocator_peak_bytes=allocated,
        )
        print(f"STMN test memory over {frames} frames, window {tuple(cfg.MODEL.VIDEO.TEST_WINDOW)}")
        print(f"  held for later detections (peak):  {payload / MB:.1f} MB")
        print(f"  window cache it replaces:          {window_cache / MB:.1f} MB")
        print(f"  the core's pending frames (peak):  {images / MB:.1f} MB")
        print(f"  allocator peak while streaming:    {allocated / MB:.1f} MB")
    else:
        video = random_video(args.frames, *args.size)
        results["frames"] = args.frames
        single = _build(
            cfg,
            [
                "MODEL.VIDEO.AGGREGATION",
                "SingleFrameAggregation",
                "MODEL.VIDEO.TEST_WINDOW",
                (0, 0),
            ],
        )
        stmn = _build(cfg)
        no_align = _build(cfg, ["MODEL.STMN.MATCHTRANS.ENABLED", False])
        for name, model in [
            ("single_frame", single),
            ("stmn", stmn),
            ("stmn_no_matchtrans", no_align),
        ]:
            results[name] = time_per_frame(model, video, args.warmup, args.device)
        overhead = paper_protocol_overhead(
            stmn, video[0]["image"], args.paper_length, repeats=3, device=args.device
        )
        results["paper_protocol_overhead"] = overhead
        base = results["single_frame"]
        print(f"{'model':<34}{'s/frame':>10}{'x single':>10}")
        print(f"{'single-frame':<34}{base:>10.4f}{1.0:>10.2f}")
        window = tuple(cfg.MODEL.VIDEO.TEST_WINDOW)
        for name, label in [("stmn", "STMN"), ("stmn_no_matchtrans", "STMN no-MatchTrans")]:
            label = f"{label}, window {window}"
            print(f"{label:<34}{results[name]:>10.4f}{results[name] / base:>10.2f}")
        label = f"STMN paper protocol (T={args.paper_length})"
        print(f"{label:<34}{base + overhead:>10.4f}{(base + overhead) / base:>10.2f}")
        print("paper (Titan X, R-FCN R-101): 0.047 -> 0.075 s/frame, 1.60x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
