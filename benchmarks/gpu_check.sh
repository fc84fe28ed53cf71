#!/usr/bin/env bash
# One call on a machine with a GPU: builds detectron2 and vod_d2's extension for that GPU, runs
# every CUDA test, and prints each op's kernel-vs-reference ratios and every method's frames per
# second (R-101 paper configs, 600x1000 frames, a 60-frame video, batch 1, streaming). It uses
# whatever torch and torchvision the machine's python has (no pins) and needs no package index:
#
#   DETECTRON2_SRC=/path/to/detectron2 [WHEELS=/path/to/wheels] bash benchmarks/gpu_check.sh
#
# DETECTRON2_SRC is a detectron2 source tree (a clone of github.com/facebookresearch/detectron2),
# built in place here. WHEELS is a folder of wheels of what the machine's python lacks of
# detectron2's and vod_d2's dependencies (fvcore, iopath, yacs, termcolor, pycocotools,
# omegaconf, hydra-core, antlr4-python3-runtime, ...): benchmarks/gpu_wheels.sh makes it on a
# machine with a package index. Logs and numbers go to $OUT (default output/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-output/gpu_check}
mkdir -p "$OUT"
: "${DETECTRON2_SRC:?set DETECTRON2_SRC to a detectron2 source tree}"

if [ -n "${WHEELS:-}" ]; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --target "$site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')") \
  || { echo "no GPU visible to $PY: nothing to check" >&2; exit 1; }
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, torch.cuda.get_device_name(0), 'sm', '$arch')" | tee "$OUT/versions.txt"

step() { echo; echo "== $1 ($(date +%T))"; }
step "detectron2 from $DETECTRON2_SRC"
(cd "$DETECTRON2_SRC" && "$PY" setup.py build_ext --inplace) > "$OUT/build_detectron2.log" 2>&1 \
  || { tail -20 "$OUT/build_detectron2.log"; exit 1; }
export PYTHONPATH="$DETECTRON2_SRC:$PWD${PYTHONPATH:+:$PYTHONPATH}"
step "vod_d2's extension (CUDA kernels for sm $arch)"
"$PY" setup.py build_ext --inplace > "$OUT/build_vod_d2.log" 2>&1 \
  || { tail -20 "$OUT/build_vod_d2.log"; exit 1; }
"$PY" -c "from vod_d2 import _C; assert _C.with_cuda(), 'built without CUDA'" || exit 1

status=0
step "CUDA tests"
"$PY" -m pytest tests -q -k cuda -p no:cacheprovider > "$OUT/cuda_tests.log" 2>&1 || status=1
tail -15 "$OUT/cuda_tests.log"
step "ops: kernel vs reference"
"$PY" benchmarks/ops.py --device cuda 2>&1 | tee "$OUT/ops.txt" || status=1
step "methods: frames per second"
"$PY" benchmarks/speed.py --device cuda --size 600 1000 --frames 60 --json "$OUT/speed.json" \
  2>&1 | grep -v Warning | tee "$OUT/speed.txt" || status=1
exit $status
