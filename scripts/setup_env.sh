#!/usr/bin/env bash
# Installs vod_d2's dependencies from the package registries and builds its C++/CUDA extension in
# place. detectron2 itself is not on the registries: install it from upstream first (README).
# CUDA kernels are compiled whenever nvcc is found (set FORCE_CUDA=0 to skip them), for the
# architectures in TORCH_CUDA_ARCH_LIST (default here: 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install -q --disable-pip-version-check \
  "torch==2.14.1" "torchvision==0.29.2" -r requirements.txt "$@"
if ! "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
  echo "detectron2 is not installed in $("$PYTHON" -c 'import sys; print(sys.executable)'):" \
    "install it as https://detectron2.readthedocs.io/en/latest/tutorials/install.html says," \
    "then run this again." >&2
  exit 1
fi

if [ -z "${CUDA_HOME:-}" ]; then
  for candidate in /usr/local/cuda /usr/local/cuda-13.0; do
    if [ -x "$candidate/bin/nvcc" ]; then export CUDA_HOME=$candidate; break; fi
  done
fi
if [ "${FORCE_CUDA:-}" != "0" ] && [ -n "${CUDA_HOME:-}" ]; then
  export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "Building vod_d2's extension (CUDA kernels: ${FORCE_CUDA:-no})..."
"$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
