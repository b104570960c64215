#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian-like machine: OS packages (Fashion-MNIST, Chromium for the dashboard test,
# PostgreSQL for the shared-storage test) when run as root, then a virtualenv .venv with the locked dependency
# set (requirements/lock.txt) and the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need="$need dataset-fashion-mnist"
  if [ "${NAS_SETUP_MINIMAL:-0}" != 1 ]; then
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    command -v pg_ctlcluster >/dev/null 2>&1 || need="$need postgresql"
  fi
  if [ -n "$need" ]; then
    echo "setup: apt-get install$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The lock (requirements/lock.txt, hash-checked, every package pinned) is what gets installed: the same versions on
# every machine. `--no-deps` because the lock already lists every dependency; `pip check` proves it is consistent.
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ requirements/lock.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || ! .venv/bin/python -c "import nas, torchvision, optuna, ray" 2>/dev/null; then
  echo "setup: installing the locked dependency set into .venv (first time: a few minutes, torch is large)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements/lock.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  .venv/bin/python -m pip check
  touch "$stamp"
fi
