#!/usr/bin/env bash
# Every GPU figure issue 20 asks for, in one run of about 8 minutes on one GPU, for a session
# lent a device machine for a few minutes only: the training loop's tokens/s and MFU in
# fp32, fp16 and bf16 against a plain loop (bench/gpu_train.sh), the same compiled in bf16,
# then, where MODEL and TOKENIZER name a trained Marian checkpoint and its tokenizer (see
# bench/gpu_beam.sh), beam search against HF generate at 5 and 50 beams. Each check has a
# time limit of its own, so that one that hangs costs only its share; each one's log goes to
# $OUT (or /tmp/gpu_checks) as it runs.
#   [MODEL=dir TOKENIZER=dir] DATA=path/to/libreoffice_ende bash bench/gpu_checks.sh
source "$(dirname "$0")/help.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-/tmp/gpu_checks}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"

check() {  # check NAME SECONDS COMMAND...: run COMMAND under a time limit, its output kept as NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most $limit s): $*"
  timeout --kill-after 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

check train 200 bash bench/gpu_train.sh
check train_compiled 150 bash bench/gpu_train.sh --compile --no-baseline --precisions bf16
if [[ -n ${MODEL-} && -n ${TOKENIZER-} ]]; then
  check beam_5 60 bash bench/gpu_beam.sh --examples 512 --settings 5:1
  check beam_50 60 bash bench/gpu_beam.sh --examples 128 --settings 50:50
else
  echo "== beam: skipped, MODEL and TOKENIZER are not set (a trained Marian checkpoint and its tokenizer)"
fi
