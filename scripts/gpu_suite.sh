#!/usr/bin/env bash
# The prepared GPU check: bash scripts/gpu_suite.sh OUT_DIR [options of python -m benchmarks.gpu_suite]. On a machine
# without a registry, the small wheels it lacks (pydantic, pydantic-core, annotated-types, typing-inspection) go in
# .whl/ and Fashion-MNIST's IDX files in data/fashion-mnist/ (both git-ignored; see benchmarks/RESULTS.md, "GPU suite").
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/nas-site .whl/*.whl
  export PYTHONPATH="/tmp/nas-site:${PYTHONPATH:-}"
fi
data=()
[ -d data/fashion-mnist ] && data=(--data-root data/fashion-mnist)
# From the repository root (above): the lab runs as a module of the benchmarks package, importable from here
# whether or not mixer-nas is installed
exec "${PYTHON:-python3}" -m benchmarks.gpu_suite --out "${1:-gpu_results}" "${data[@]}" "${@:2}"
