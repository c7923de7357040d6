#!/usr/bin/env bash
# Beam search on one GPU in fp16 (a few minutes): the native beam search against HF
# generate on the same Marian weights and inputs, (5 beams, 1 returned) and (50 beams, 50
# returned), examples/s, ratio and peak allocated memory. MODEL is a HF Marian checkpoint
# (bench/marian_init.py, trained as docs/benchmarks.md says), TOKENIZER its run's tokenizer.
#   MODEL=dir TOKENIZER=dir DATA=path/to/libreoffice_ende bash bench/gpu_beam.sh [extra bench/beam.py flags]
source "$(dirname "$0")/help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
python3 bench/beam.py --model "$MODEL" --tokenizer "$TOKENIZER" --data "${DATA:-../shared/data/libreoffice_ende}/dev.jsonl" \
  --examples 1000 --batch 64 --repeats 3 --dtype float16 "$@"
