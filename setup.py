#!/usr/bin/env python
"""Build vod_d2 and its C++/CUDA extension ``vod_d2._C`` (the ops in ``csrc/``).

CUDA kernels are compiled when ``FORCE_CUDA=1``, or when a GPU is visible and ``CUDA_HOME`` is
found (``FORCE_CUDA=0`` turns them off); ``TORCH_CUDA_ARCH_LIST`` picks the architectures, as in
any PyTorch extension. Install with ``pip install --no-build-isolation -e .``.
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _build_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA", "")
    if force == "1":
        return True
    return force != "0" and torch.cuda.is_available() and CUDA_HOME is not None


def _nvidia_wheel_includes() -> list[str]:
    """Headers of the CUDA libraries shipped as pip wheels next to torch (``nvidia/cu13``).

    A bare nvcc toolkit (e.g. /usr/local/cuda-13.0 without cuBLAS/cuSPARSE) lacks headers that
    torch's CUDA headers include; the wheels torch depends on carry them.
    """
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "cu[0-9]*", "include")))
    return found


def get_extensions():
    sources = [os.path.join(CSRC, "vision.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "*", "*.cpp")))
    extra_compile_args = {"cxx": ["-O3", "-g0"]}
    define_macros = []
    extension = CppExtension
    if _build_cuda():
        extension = CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC, "*", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    ext = extension(
        "vod_d2._C",
        [os.path.relpath(s, ROOT) for s in sources],
        include_dirs=[CSRC],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    if extension is CUDAExtension:
        # Appended after the toolkit's own include dir, so they only fill in what it lacks.
        ext.include_dirs += _nvidia_wheel_includes()
    return [ext]


setup(
    name="vod_d2",
    version="0.1.0",
    description="Video object detection on detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "benchmarks", "demo")),
    python_requires=">=3.10",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
