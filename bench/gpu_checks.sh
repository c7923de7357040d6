#!/usr/bin/env bash
# Every GPU figure issue 20 asks for, in one run of about 8 minutes on one GPU (496 s on an
# H200; at most 14 if every check ran to its time limit), for a session lent a device machine
# for a few minutes only: first the native model's logits, gradients and beam search on the
# GPU against the CPU (bench/gpu_parity.py, seconds), then the training loop's tokens/s and
# MFU in fp32, fp16 and bf16 against a plain loop (bench/gpu_train.sh), the same compiled in bf16,
# beam search against HF generate at 5 and 50 beams (bench/gpu_beam.sh), and last a profile
# of the eager bf16 step (where its time goes). The beam checks decode MODEL with TOKENIZER
# (a trained Marian checkpoint and its run's tokenizer); without them the script first trains
# docs/benchmarks.md's Marian recipe on this GPU (3 epochs, about a minute) under
# $ROOT/beam_root. TRAIN_ROOT (default $ROOT/train_root) holds the training checks' tokenizer and
# BM25 memory, prepared there by the first check or beforehand on a CPU (bench/train.py
# --prepare-only), so that the GPU does not wait on them. Each
# check has a time limit of its own, so that one that hangs costs only its share; each one's
# log goes to $OUT (or /tmp/gpu_checks) as it runs.
#   DATA=path/to/libreoffice_ende [MODEL=dir TOKENIZER=dir] [TRAIN_ROOT=dir] [ROOT=dir] bash bench/gpu_checks.sh
source "$(dirname "$0")/help.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${MODEL-} && -z ${TOKENIZER-} || -z ${MODEL-} && -n ${TOKENIZER-} ]]; then
  echo "error: set MODEL and TOKENIZER together (a Marian checkpoint and its run's tokenizer), or neither" >&2
  exit 2
fi
LOGS=${OUT:-/tmp/gpu_checks}
ROOT=${ROOT:-runs/gpu}
export DATA=${DATA:-../shared/data/libreoffice_ende}
mkdir -p "$LOGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$LOGS/gpu.txt"

check() {  # check NAME SECONDS COMMAND...: run COMMAND under a time limit, its output kept as NAME.log
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name (at most $limit s): $*"
  timeout --kill-after 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

check parity 60 python3 bench/gpu_parity.py  # the native model on the GPU against the CPU
prepared=(--run-root "${TRAIN_ROOT:-$ROOT/train_root}")
check train 200 bash bench/gpu_train.sh "${prepared[@]}"
check train_compiled 180 bash bench/gpu_train.sh --compile --no-baseline --precisions bf16 "${prepared[@]}"

if [[ -z ${MODEL-} ]]; then
  export ROOT beam_run=$ROOT/beam_root/libreoffice_ende
  train_marian() {  # docs/benchmarks.md's Marian recipe: its tokenizer, a random Marian model, 3 epochs
    local where=(--config configs/libreoffice_ende.yaml "data.dir=$DATA" "run.root=$ROOT/beam_root")
    python3 -m torch.distributed.run --standalone --nproc_per_node 1 launch/train_tokenizer.py "${where[@]}" &&
      python3 bench/marian_init.py --tokenizer "$beam_run/tokenizer" --out "$ROOT/marian_init" &&
      python3 -m torch.distributed.run --standalone --nproc_per_node 1 launch/train_generator.py "${where[@]}" \
        generator.engine=hf "generator.init=$ROOT/marian_init" generator.memory=none train.max_epochs=3 \
        train.warmup_steps=200 train.lr=1e-3
  }
  export -f train_marian
  check marian 150 bash -c train_marian
  MODEL=$beam_run/generator TOKENIZER=$beam_run/tokenizer
fi
check beam_5 60 env MODEL="$MODEL" TOKENIZER="$TOKENIZER" bash bench/gpu_beam.sh --examples 512 --settings 5:1
check beam_50 60 env MODEL="$MODEL" TOKENIZER="$TOKENIZER" bash bench/gpu_beam.sh --examples 128 --settings 50:50
check profile 90 python3 bench/train.py --config configs/jrc_ende.yaml --steps 20 --repeats 0 --no-baseline \
  --precisions bf16 --profile bf16 "${prepared[@]}" "data.dir=$DATA" tokenizer.vocab_size=8000 \
  train.max_tokens=32768 train.warmup_steps=100
