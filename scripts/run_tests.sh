#!/usr/bin/env bash
# The test command: sets everything up from the package registries, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/setup_env.sh -r requirements-dev.txt
"$PYTHON" -m pytest tests "$@"
