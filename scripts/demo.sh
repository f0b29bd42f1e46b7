#!/usr/bin/env bash
# Install mlx-serve into .venv and run the demo: tiny random-weight models built locally,
# served on http://127.0.0.1:8095/v1, with a tour of the endpoints. `--exit` stops after it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_into_venv "all"
ensure_tools ffmpeg:ffmpeg
exec .venv/bin/mlx-serve demo "$@"
