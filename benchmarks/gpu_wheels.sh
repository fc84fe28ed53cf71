#!/usr/bin/env bash
# Makes the wheels benchmarks/gpu_check.sh installs on a GPU machine without a package index:
# detectron2's and vod_d2's dependencies that such a machine's python may lack, for CPython
# $PYVER (default 3.12) on x86-64 Linux, into $1 (default .whl). Run it where pip reaches PyPI.
set -euo pipefail
DEST=${1:-.whl}
PYVER=${PYVER:-3.12}
mkdir -p "$DEST"
# Pure-Python packages (some publish sources only): built into py3 wheels here.
python3 -m pip wheel -q --no-deps -w "$DEST" fvcore iopath yacs termcolor omegaconf \
  hydra-core "antlr4-python3-runtime==4.9.3"
# pycocotools compiles: its manylinux wheel for that Python.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" pycocotools
ls "$DEST"
