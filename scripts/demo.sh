#!/usr/bin/env bash
# The main job on embedded defaults: set-up, then a real small study on Fashion-MNIST on CPU (local Ray started
# in-process, SQLite under studies/fashion_mnist_tiny/). Running it again adds trials to the same study.
set -euo pipefail
cd "$(dirname "$0")/.."
NAS_SETUP_MINIMAL=1 bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
exec .venv/bin/nas search studies/fashion_mnist_tiny.yaml "$@"
