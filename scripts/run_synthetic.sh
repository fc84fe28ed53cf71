#!/usr/bin/env bash
# The main command: sets everything up, trains the single-frame baseline on the built-in synthetic
# videos on CPU, evaluates it (VID mAP table), then runs the demo on a generated video.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/synthetic/single_frame.yaml}
OUTPUT=${OUTPUT:-output/synthetic/single_frame}
bash scripts/setup_env.sh

"$PYTHON" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUTPUT"
