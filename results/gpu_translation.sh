#!/usr/bin/env bash
# The translation experiment at the paper's model size on one GPU, for a session lent one for
# minutes: transformer-base (configs/jrc_ende.yaml's architecture: 6+6 layers, d 512, 8 heads,
# FFN 2048) as the joint generator and its no-memory twin on libreoffice_ende_tm, round 0 with
# the BM25 memory, rounds of self memory (B = 1) and the upper bound, through
# results/translation.py with configs/libreoffice_ende.yaml's other settings (its vocabulary,
# its default selector, the driver's 12 epochs and at most 4 rounds), in bf16 where the GPU
# has it, 16k-token batches, lr 7e-4 (the post-norm base model's, for stability). The runs go
# to $ROOT (default runs/gpu_translation; rerun to resume), the report and its plot to $OUT
# (or $ROOT). An estimate from the training bench's throughput, not yet a measurement: about
# 3 minutes for each generator on an H200 and a few for the rounds. k=v arguments go to every
# run after these (e.g. train.max_epochs=6 to halve the training).
#   CORPORA=dir/holding/libreoffice_ende_tm bash results/gpu_translation.sh [k=v ...]
source "$(dirname "$0")/../bench/help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/gpu_translation}
REPORTS=${OUT:-$ROOT}
mkdir -p "$REPORTS"
python3 results/translation.py --corpora tm --systems joint upper --nproc 1 \
  --data "${CORPORA:-../shared/data}" --root "$ROOT" --report "$REPORTS/results_translation_gpu.md" \
  generator.encoder_layers=6 generator.decoder_layers=6 generator.d_model=512 generator.heads=8 \
  generator.ffn_dim=2048 train.max_tokens=16384 train.lr=7e-4 "$@"
