#!/usr/bin/env bash
# Creates .venv (if missing) and installs the package with what it needs; sourced by
# run_all.sh and run_tests.sh. Reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.benchmark-installed"
want="$(sha1sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the benchmark package and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install -q torch          # CUDA build
    else
      "$VENV/bin/python" -m pip install -q "torch==2.13.0"  # CPU build (on local disk here)
    fi
  fi
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  echo "$want" > "$stamp"
fi
