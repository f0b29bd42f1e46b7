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
# The whole suite (no arguments) runs in two processes, a test file each at a time (most
# tests wait on worker processes, so two overlap well on two cores: ~8 min instead of ~11),
# and reports coverage with a floor; a chosen subset runs in one process (easier to debug)
# without the floor, since its coverage says nothing about the whole.
full=()
[ "$#" -eq 0 ] && full=(
  -n "${MLX_SERVE_TEST_PROCESSES:-2}" --dist loadfile
  --cov=mlx_serve --cov-report=term:skip-covered --cov-fail-under=81 --durations=25
)
set +e
.venv/bin/pytest ${full[@]+"${full[@]}"} "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
