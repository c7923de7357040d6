#!/usr/bin/env bash
# Generator training on one GPU (under 3 minutes): transformer-base (configs/jrc_ende.yaml's
# architecture) on the LibreOffice corpus with joint memory and 32k-token batches (the plain
# loop's random batches, padded to their longest example, hold up to 80 GB of activations at 64k). Prints
# tokens/s of a plain fp32 loop and of this project's loop in fp32, fp16 AMP (GradScaler)
# and bf16, with model FLOPs utilisation against the GPU's dense fp16 peak.
#   DATA=path/to/libreoffice_ende bash bench/gpu_train.sh [extra bench/train.py flags]
# With train.compile beside the eager loop (each precision's first compiled run compiles):
#   DATA=path/to/libreoffice_ende bash bench/gpu_train.sh --compile --no-baseline
source "$(dirname "$0")/help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
python3 bench/train.py --config configs/jrc_ende.yaml --steps 40 --repeats 1 --precisions fp32,fp16,bf16 \
  "data.dir=${DATA:-../shared/data/libreoffice_ende}" tokenizer.vocab_size=8000 train.max_tokens=32768 \
  train.warmup_steps=100 "$@"
