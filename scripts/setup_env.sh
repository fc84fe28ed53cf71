#!/usr/bin/env bash
# Sets up everything vod_d2 needs, then builds its C++/CUDA extension in place:
#   1. torch, torchvision and requirements.txt from PyPI (extra arguments go to that pip call);
#   2. detectron2, when it cannot be imported, from its GitHub repository at a known-good commit
#      (it has no current release), built with --no-build-isolation against the torch above.
#      Where the repository cannot be reached, one line says what to install, and the script
#      stops with status 1;
#   3. vod_d2's extension, unless vod_d2/_C*.so is newer than every file of csrc/ and setup.py
#      (and has the CUDA kernels when they are wanted) and vod_d2 is installed for this python
#      (demo/ and tools/ import it; a virtualenv made after the build has not got it): then
#      nothing is rebuilt.
# CUDA kernels are compiled when FORCE_CUDA=1, or when nvcc is found and a GPU is visible;
# FORCE_CUDA=0 never compiles them. They take minutes to compile, for the architectures in
# TORCH_CUDA_ARCH_LIST (default here: 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The versions vod_d2 is tested with (.ci/run reads these three lines).
TORCH_REQUIREMENTS="torch==2.14.1 torchvision==0.29.2"
DETECTRON2_REPO=${DETECTRON2_REPO:-https://github.com/facebookresearch/detectron2.git}
DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833

pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check "$@"; }

pip_install $TORCH_REQUIREMENTS -r requirements.txt "$@"

if ! "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
  detectron2="git+$DETECTRON2_REPO@$DETECTRON2_COMMIT"
  if ! command -v git >/dev/null 2>&1 \
    || ! GIT_TERMINAL_PROMPT=0 timeout 60 git ls-remote "$DETECTRON2_REPO" >/dev/null 2>&1; then
    echo "detectron2 is not installed and $DETECTRON2_REPO cannot be reached (no network or" \
      "no git): install it with \`$PYTHON -m pip install --no-build-isolation '$detectron2'\`" \
      "(or as https://detectron2.readthedocs.io/en/latest/tutorials/install.html says), then" \
      "run this again." >&2
    exit 1
  fi
  echo "Installing detectron2 ($DETECTRON2_COMMIT) from $DETECTRON2_REPO; it compiles its ops..."
  pip_install --no-build-isolation "$detectron2"
fi

if [ -z "${CUDA_HOME:-}" ]; then
  for candidate in /usr/local/cuda /usr/local/cuda-13.0; do
    if [ -x "$candidate/bin/nvcc" ]; then export CUDA_HOME=$candidate; break; fi
  done
fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  export CUDA_HOME
fi
case "${FORCE_CUDA:-}" in
  1) cuda=1 ;;
  0) cuda=0 ;;
  *)
    cuda=0
    if [ -n "${CUDA_HOME:-}" ] \
      && "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null
    then
      cuda=1
    fi
    ;;
esac
export FORCE_CUDA=$cuda
if [ "$cuda" = 1 ]; then export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}; fi

# Up to date: newer than its sources, loadable with this torch, with CUDA kernels if wanted,
# and installed for this python.
built=$(find vod_d2 -maxdepth 1 -name '_C*.so' -print -quit)
if [ -n "$built" ] && [ -z "$(find csrc setup.py -type f -newer "$built" -print -quit)" ] \
  && "$PYTHON" -m pip show -q vod_d2 >/dev/null 2>&1 \
  && "$PYTHON" - "$built" "$cuda" >/dev/null 2>&1 <<'EOF'
import importlib.util
import sys

import torch  # noqa: F401  (the extension links against it)

spec = importlib.util.spec_from_file_location("vod_d2._C", sys.argv[1])
extension = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extension)
sys.exit(0 if sys.argv[2] == "0" or extension.with_cuda() else 1)
EOF
then
  echo "vod_d2's extension $built is up to date: not rebuilt"
  exit 0
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "Building vod_d2's extension (CUDA kernels: $([ "$cuda" = 1 ] && echo yes || echo no))..."
pip_install --no-build-isolation --no-deps -e .
