"""
Peak-memory probes shared by the benchmarks: the process's peak resident set on CPU (Linux
``VmHWM``), the peak of allocated memory on CUDA, each as the increase during a ``with`` block.
"""

import ctypes
import gc
import multiprocessing

import torch


def _read_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_freed_memory():
    """Have glibc unmap every freed block >= 128 KiB, so the resident set tracks live tensors.

    (By default glibc raises its mmap threshold after large frees and keeps later blocks in its
    heap, which would hide repeated allocations from VmHWM.)
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


class CpuPeak:
    """Peak resident memory added during a block, from VmHWM (Linux)."""

    def __enter__(self):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        self.base = _read_status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak_bytes = (_read_status_kib("VmHWM") - self.base) * 1024


class CudaPeak:
    """Peak CUDA memory allocated on ``device`` during a block, from max_memory_allocated."""

    def __init__(self, device=None):
        self.device = device

    def __enter__(self):
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base


def in_fresh_process(function, *args):
    """``function(*args)`` in a spawned process of its own, so that its peak memory and the
    allocator settings of :func:`release_freed_memory` are its own (``function`` must be a
    module-level function)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)
