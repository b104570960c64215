#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every package of `pip install -e ".[dev,bench]"` pinned with hashes, for
# every platform and Python >= 3.10 (uv's universal resolution), torch/torchvision fixed by requirements/torch-pin.txt.
# Run it after changing dependencies in pyproject.toml, then run `bash scripts/test.sh` on a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool"
"$tool/bin/python" -m pip install -q "uv==$UV_VERSION"
UV_PYTHON_DOWNLOADS=never "$tool/bin/uv" pip compile --quiet pyproject.toml --extra dev --extra bench --universal --python-version 3.10 \
  --generate-hashes --no-header -c requirements/torch-pin.txt -o requirements/lock.body
{
  echo "# Exact, hash-checked dependency set of mixer-nas (core + search + dev + bench extras), all platforms."
  echo "# Installed by scripts/setup.sh with: pip install --no-deps --require-hashes -r requirements/lock.txt"
  echo "# Regenerate with: bash scripts/lock.sh   (uv $UV_VERSION, universal resolution, Python >= 3.10)"
  cat requirements/lock.body
} > requirements/lock.txt
rm requirements/lock.body
echo "wrote requirements/lock.txt ($(grep -c '^[a-z]' requirements/lock.txt) pinned entries)"
