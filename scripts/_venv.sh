# Sourced by demo.sh and test.sh: create .venv (Python >= 3.11) and install mlx-serve into it.
# Usage: install_into_venv EXTRAS   (e.g. "text" or "text,dev"; Linux adds the cpu MLX extra)
set -euo pipefail

install_into_venv() {
  local extras=$1 py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "mlx-serve needs Python 3.11 or newer ($py is $("$py" --version 2>&1)); set PYTHON=python3.X" >&2
    exit 1
  fi
  [ "$(uname -s)" = Linux ] && extras="cpu,$extras"   # macOS gets Metal MLX from the base deps
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import mlx_serve' || { echo "installing mlx-serve failed" >&2; exit 1; }
}
