#!/usr/bin/env bash
# The test suite, offline, on CPU: sets up .venv if needed, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${GLUE_DIR:-}" ] && [ -d ../shared/glue ]; then GLUE_DIR=../shared/glue; fi
if [ -n "${GLUE_DIR:-}" ] && [ -d "$GLUE_DIR" ]; then export GLUE_DIR="$(cd "$GLUE_DIR" && pwd)"; fi
exec .venv/bin/python -m pytest -q "$@"
