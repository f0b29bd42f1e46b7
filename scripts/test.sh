#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint, type-check and run the whole suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow" -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_into_venv "all,dev"
ensure_tools ffmpeg:ffmpeg
[ "$(uname -s)" = Linux ] && ensure_tools systemd-analyze:systemd chromium:chromium

echo "== ruff";  .venv/bin/ruff check --no-cache src tests bench && .venv/bin/ruff format --no-cache --check src tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
