#!/usr/bin/env bash
# The whole study from one command: set-up, the grid, the gradient-conflict probe, the
# benchmarks, then tables, figures and the report, all from stored results.
#   ./run_all.sh                      # profile paper where CUDA is available, else cpu
#   ./run_all.sh --profile quick      # extra arguments go to `python -m benchmark.run`
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
PY=.venv/bin/python

profile=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --profile) profile="${args[$((i + 1))]:-}" ;;
    --profile=*) profile="${args[$i]#--profile=}" ;;
  esac
done
if [ -z "$profile" ]; then
  if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then profile=paper; else profile=cpu; fi
  args=(--profile "$profile" "${args[@]}")
fi
results=results
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in --results) results="${args[$((i + 1))]}" ;; --results=*) results="${args[$i]#--results=}" ;; esac
done
echo "run_all: profile $profile, results in $results"

# Offline with no GLUE folder there is nothing to train on: say so before anything starts.
# (Online, the runner falls back to the hub and reports the same error if that fails.)
if [ -z "${GLUE_DIR:-}" ] && [[ " ${args[*]} " != *" --data-dir "* ]] && \
   { [ "${HF_HUB_OFFLINE:-0}" = 1 ] || [ "${HF_DATASETS_OFFLINE:-0}" = 1 ]; }; then
  echo "error: the Hugging Face hub cannot be reached and no GLUE data is set: set GLUE_DIR to a folder in the classic GLUE TSV layout (e.g. GLUE_DIR=../shared/glue)" >&2
  exit 2
fi

status=0
# 1. the grid (every GPU of the machine through accelerate when there are several)
ngpu=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$ngpu" -gt 1 ]; then
  .venv/bin/accelerate launch --multi_gpu --num_processes "$ngpu" --mixed_precision bf16 -m benchmark.run "${args[@]}" || status=$?
else
  $PY -m benchmark.run "${args[@]}" || status=$?
fi
[ "$status" -eq 2 ] && exit 2   # bad input: nothing ran

# 2. gradient conflict between exits during joint training (RTE, batch 8, as the study)
$PY -m benchmark.gradients --profile "$profile" --task rte --results "$results" --skip-existing || status=$?

# 3. speed benchmarks (latency of real early exit, training overhead, teacher caching)
if $PY -c "import benchmark.bench" >/dev/null 2>&1; then
  $PY -m benchmark.bench all --profile "$profile" --results "$results" --skip-existing || status=$?
fi

# 4. tables, figures and report, from stored results only
$PY -m benchmark.collect --results "$results" || status=$?
$PY -m benchmark.plot --results "$results" --out plots || status=$?
$PY -m benchmark.tables --results "$results" --out "$results/tables" || status=$?
if $PY -c "import benchmark.report" >/dev/null 2>&1; then
  $PY -m benchmark.report --results "$results" || status=$?
fi
exit "$status"
