"""
Per-frame inference cost of STMN against the single-frame baseline, in one run.

Three models are built from one config (random weights: only time is measured) and stream the
same random video through the test API (``model.reset/step/flush``, each frame's backbone once):

* ``single-frame``: ``SingleFrameAggregation``, window (0, 0);
* ``STMN``: the config's ``STMNAggregation`` and ``MODEL.VIDEO.TEST_WINDOW``;
* ``STMN no-MatchTrans``: the same without alignment.

Each frame here gets the memories of its own centred window (a (5, 5) window runs 6 cell steps
per direction per frame; the memory-independent ``W * F`` half of each step is computed once per
frame, by ``STMNAggregation.encode`` as the frame enters the window). The paper instead runs one
pass over a batch of T = 11 frames and detects on all of them (0.52 s vs 0.83 s per batch on a
Titan X: +0.028 s/frame, about 1.6x R-FCN); the "paper protocol" line times that: encoding 11
frames and both directions over them, divided by 11, added to the single-frame time. Windows are
full only TEST_WINDOW * TEST_STRIDE frames away from the video's ends (pass
``MODEL.VIDEO.TEST_STRIDE 1`` to time full windows on a short video).

    python benchmarks/stmn_inference.py --config-file configs/stmn_R50_DC5.yaml --device cuda
    python benchmarks/stmn_inference.py --config-file configs/synthetic/stmn.yaml --size 128
"""

import argparse
import json
import time

import torch
from _streaming import add_arguments, device_name, load_config, random_video, synchronize
from detectron2.modeling import build_model

from vod_d2.engine import run_on_video


def _build(cfg, opts=()):
    cfg = cfg.clone()
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def time_per_frame(model, video, warmup, device):
    """Seconds per frame of streaming ``video`` (after ``warmup`` frames) through ``model``."""
    list(run_on_video(model, video[:warmup]))
    synchronize(device)
    start = time.perf_counter()
    outputs = list(run_on_video(model, video))
    synchronize(device)
    assert len(outputs) == len(video)
    return (time.perf_counter() - start) / len(video)


@torch.no_grad()
def paper_protocol_overhead(model, image, length, repeats, device):
    """Seconds per frame of encoding ``length`` frames and running both STMN directions once
    over them."""
    module = model.temporal_aggregation
    features = model.backbone(model.preprocess_image([{"image": image}]).tensor)[model.in_feature]
    frames = features.expand(length, -1, -1, -1).contiguous()

    def one_pass():
        encoded = {k: v[None] for k, v in module.encode(frames).items()}
        module.forward_memory(encoded["feature"], encoded["forward_projection"])
        if module.backward_memory is not None:
            flipped = encoded["feature"].flip(1)
            module.backward_memory(flipped, encoded["backward_projection"].flip(1))

    one_pass()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    synchronize(device)
    return (time.perf_counter() - start) / (repeats * length)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--paper-length", type=int, default=11, help="T of the paper protocol")
    add_arguments(parser, "configs/stmn_R50_DC5.yaml")
    args = parser.parse_args()
    cfg = load_config(args)
    video = random_video(args.frames, *args.size)

    single = _build(
        cfg,
        ["MODEL.VIDEO.AGGREGATION", "SingleFrameAggregation", "MODEL.VIDEO.TEST_WINDOW", (0, 0)],
    )
    stmn = _build(cfg)
    no_align = _build(cfg, ["MODEL.STMN.MATCHTRANS.ENABLED", False])
    results = {
        "device": device_name(args.device),
        "threads": torch.get_num_threads(),
        "config": args.config_file,
        "size": list(args.size),
        "frames": args.frames,
        "test_window": list(cfg.MODEL.VIDEO.TEST_WINDOW),
    }
    for name, model in [("single_frame", single), ("stmn", stmn), ("stmn_no_matchtrans", no_align)]:
        results[name] = time_per_frame(model, video, args.warmup, args.device)
    overhead = paper_protocol_overhead(
        stmn, video[0]["image"], args.paper_length, repeats=3, device=args.device
    )
    results["paper_protocol_overhead"] = overhead

    base = results["single_frame"]
    print(
        f"{results['device']}, {results['threads']} threads, frames {args.size[0]}x{args.size[1]}"
    )
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
