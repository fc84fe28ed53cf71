#!/usr/bin/env python
"""Time and peak memory of vod_d2's compiled ops against their PyTorch references.

Paper-sized shapes on a stride-16 map of a ~600 x 1000 frame (38 x 63):
  * deformable similarity sampling (LSTS): query/key C' = 256 (the embedded features), value
    C = 1024, N = 9 shared or per-position offsets;
  * MatchTrans (STMN): C = 512, k = 2, local correlation and local aggregation;
  * temporal RoIAlign (SparseVOD): C = 1024, R = 100 and 300 RoIs of S = 7, K = 4 and 9, against
    one support map, and R = 300 against T = 6 support maps at once (TFE's 6 support frames);
  * deformable PS RoI pooling (deformable R-FCN): R = 300 RoIs, 7 x 7 bins, the class maps of
    C = (30 + 1) * 49 channels and the box maps of 8 * 49, adaptive sampling grid, offsets.

"forward" runs under torch.no_grad() (inference); "fwd+bwd" runs forward and backward with inputs
that require grad. Times are medians over the repeats. Peak memory is the increase over the
memory held before the call: on CUDA from torch.cuda.max_memory_allocated, on CPU from the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs before each call, with
glibc told to unmap freed blocks), which also counts allocator and page-granularity overheads.

Usage: python benchmarks/ops.py [--quick] [--device cpu|cuda|all] [--repeats N] [--only NAME]
"""

import argparse
import statistics
import sys
import time

import torch
from _memory import CpuPeak, CudaPeak, in_fresh_process, release_freed_memory

from vod_d2.layers import (
    _ext,
    deform_ps_roi_pool,
    deform_ps_roi_pool_reference,
    deformable_similarity_sampling,
    deformable_similarity_sampling_reference,
    local_aggregate,
    local_aggregate_reference,
    local_correlation,
    local_correlation_reference,
    temporal_roi_align,
    temporal_roi_align_reference,
)

HEIGHT, WIDTH = 38, 63
MIB = 1024**2


def _run(fn, inputs, backward, grad_output):
    if not backward:
        with torch.no_grad():
            return fn(*inputs)
    out = fn(*inputs)
    out.backward(grad_output)
    return None


def _prepare(fn, make_inputs, backward):
    inputs = make_inputs()
    if backward:
        inputs = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]
    with torch.no_grad():
        grad_output = torch.randn_like(fn(*inputs)) if backward else None
    return inputs, grad_output


def measure_time(fn, make_inputs, backward, device, repeats):
    """Median seconds of fn(*inputs) [+ backward], after a warm-up run."""
    inputs, grad_output = _prepare(fn, make_inputs, backward)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    _run(fn, inputs, backward, grad_output)  # warm-up
    times = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        sync()
        start = time.perf_counter()
        _run(fn, inputs, backward, grad_output)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_peak(fn, make_inputs, backward, device):
    """Peak bytes that fn(*inputs) [+ backward] adds (CPU: after release_freed_memory())."""
    inputs, grad_output = _prepare(fn, make_inputs, backward)
    _run(fn, inputs, backward, grad_output)  # warm-up
    for t in inputs:
        t.grad = None
    with CudaPeak() if device == "cuda" else CpuPeak() as peak:
        _run(fn, inputs, backward, grad_output)
    return peak.peak_bytes


def cases(device, dtype=torch.float32):
    """(name, make_inputs, kernel, reference) at paper-sized shapes."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    def lsts(per_position):
        def make():
            offsets = rand(1, 18, HEIGHT, WIDTH) if per_position else rand(9, 2)
            return [
                rand(1, 256, HEIGHT, WIDTH),
                rand(1, 256, HEIGHT, WIDTH),
                rand(1, 1024, HEIGHT, WIDTH),
                2 * offsets,
            ]

        return make

    def match_trans(window_channels):
        return lambda: [rand(1, window_channels, HEIGHT, WIDTH), rand(1, 512, HEIGHT, WIDTH)]

    def ps_rois(num_rois):
        """(R, 5) boxes of 32 to 512 pixels inside the 16 * (38 x 63) image."""
        size = torch.rand(num_rois, 2, generator=g) * 480 + 32
        corner = torch.rand(num_rois, 2, generator=g) * (
            torch.tensor([16.0 * WIDTH, 16.0 * HEIGHT]) - size
        )
        boxes = torch.cat([torch.zeros(num_rois, 1), corner, corner + size], dim=1)
        return boxes.to(device=device, dtype=dtype)

    def ps_pool(channels_out, rois):
        return lambda: [rand(1, channels_out * 49, HEIGHT, WIDTH), rand(rois.shape[0], 2, 7, 7)]

    def roi_align(num_rois, supports=None):
        index = torch.zeros(num_rois, dtype=torch.int64, device=device)
        maps = (1, 1024) if supports is None else (1, supports, 1024)
        return lambda: [rand(num_rois, 1024, 7, 7), rand(*maps, HEIGHT, WIDTH), index]

    yield (
        "deform sampling N=9 shared",
        lsts(False),
        deformable_similarity_sampling,
        deformable_similarity_sampling_reference,
    )
    yield (
        "deform sampling N=9 per-pixel",
        lsts(True),
        deformable_similarity_sampling,
        deformable_similarity_sampling_reference,
    )
    yield (
        "local_correlation k=2 C=512",
        match_trans(512),
        lambda a, b: local_correlation(a, b, 2),
        lambda a, b: local_correlation_reference(a, b, 2),
    )
    yield (
        "local_aggregate k=2 C=512",
        match_trans(25),
        lambda w, m: local_aggregate(w, m, 2),
        lambda w, m: local_aggregate_reference(w, m, 2),
    )
    rois = ps_rois(300)
    for name, channels_out in (("cls", 31), ("box", 8)):
        yield (
            f"deform_ps_roi_pool R=300 7x7 {name} C={channels_out}*49",
            ps_pool(channels_out, rois),
            lambda x, o, rois=rois: deform_ps_roi_pool(x, rois, o, 7, 1 / 16),
            lambda x, o, rois=rois: deform_ps_roi_pool_reference(x, rois, o, 7, 1 / 16),
        )
    for num_rois in (100, 300):
        for k in (4, 9):
            yield (
                f"temporal_roi_align R={num_rois} K={k}",
                roi_align(num_rois),
                lambda r, s, i, k=k: temporal_roi_align(r, s, i, k),
                lambda r, s, i, k=k: temporal_roi_align_reference(r, s, i, k),
            )
    yield (
        "temporal_roi_align R=300 K=4 T=6 maps",
        roi_align(300, supports=6),
        lambda r, s, i: temporal_roi_align(r, s, i, 4),
        lambda r, s, i: temporal_roi_align_reference(r, s, i, 4),
    )


def _peaks(devices, only):
    """(kernel, reference) peak bytes of every case and pass, in the order main() prints them."""
    release_freed_memory()
    return [
        tuple(measure_peak(f, make_inputs, backward, device) for f in (kernel, reference))
        for device in devices
        for name, make_inputs, kernel, reference in cases(device)
        if only in name
        for backward in (False, True)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="one timed run per measurement")
    parser.add_argument("--only", default="", help="run only the ops whose name contains this")
    args = parser.parse_args()
    if not _ext.extension_available():
        sys.exit("vod_d2._C is not built: pip install --no-build-isolation -e .")
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available() and _ext.extension_has_cuda():
        devices.append("cuda")
    elif args.device == "cuda":
        sys.exit("needs a GPU and vod_d2._C built with CUDA")

    header = (
        f"{'device':6} {'op':44} {'pass':8} {'kernel ms':>10} {'ref ms':>10} {'speedup':>8}"
        f" {'kernel MiB':>11} {'ref MiB':>9} {'mem ratio':>9}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32; "
        f"map {HEIGHT}x{WIDTH}"
    )
    print(header)
    print("-" * len(header))
    # Peaks in a process of their own (release_freed_memory() would slow down the allocations
    # timed here).
    peaks = in_fresh_process(_peaks, devices, args.only)
    rows = [
        (device, name, backward)
        for device in devices
        for name, _, _, _ in cases(device)
        if args.only in name
        for backward in (False, True)
    ]
    for (device, name, backward), (k_mem, r_mem) in zip(rows, peaks):
        repeats = args.repeats or (1 if args.quick else (3 if device == "cpu" else 20))
        _, make_inputs, kernel, reference = next(c for c in cases(device) if c[0] == name)
        k_time, r_time = (
            measure_time(f, make_inputs, backward, device, repeats) for f in (kernel, reference)
        )
        ratio = f"{k_mem / r_mem:9.3f}" if r_mem > 0 else f"{'n/a':>9}"
        print(
            f"{device:6} {name:44} {'fwd+bwd' if backward else 'forward':8}"
            f" {k_time * 1e3:10.1f} {r_time * 1e3:10.1f} {r_time / k_time:7.1f}x"
            f" {k_mem / MIB:11.1f} {r_mem / MIB:9.1f} {ratio}",
            flush=True,
        )


if __name__ == "__main__":
    main()
