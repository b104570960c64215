#!/usr/bin/env bash
# Set-up, then the whole test suite (slow end-to-end tests included). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
if [ -z "${NAS_TEST_POSTGRES_URL:-}" ] && [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then
  # a throw-away PostgreSQL on loopback for the several-drivers test
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  if su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1; then
    su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='nas'\"" | grep -q 1 \
      || su postgres -c "psql -qc \"create role nas login password 'nas' superuser\""
    su postgres -c "psql -qtAc \"select 1 from pg_database where datname='nas_test'\"" | grep -q 1 \
      || su postgres -c "createdb -O nas nas_test"
    export NAS_TEST_POSTGRES_URL="postgresql://nas:nas@127.0.0.1:5432/nas_test"
  fi
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
