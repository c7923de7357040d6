#!/usr/bin/env bash
# The libreoffice_ende_tm experiment on one GPU, for a session lent one for minutes: the `_tm`
# systems of results/translation.py (joint with its no-memory twin, then by default dual,
# augment, slots, close, Top-B and the upper bound) at configs/libreoffice_ende.yaml's size with
# the driver's settings, each system's lift in a process of its own, side by side on the one
# GPU. fp32 (a 7.6M model's step is bound by the host, and autocast's casts add kernel
# launches) and 12,000-token batches, one a step (the CPU runs' 2 processes take 2 x 6,000,
# which pack less tightly: 248 steps an epoch against 199 here).
#
# Order: joint's lift first (the no-memory twin is its first stage); once the twin is done, the
# systems in FORKS (default: dual augment slots close) fork from joint (sharing its tokenizer,
# BM25 memory and twin) and train their generators beside joint's; once joint's round 0 is done,
# those in LATER (default: topb4 upper), which decode with joint's generator. At DEADLINE
# seconds (default: none) whatever is unfinished is stopped; the report is written from the
# stages that finished. Measured on an H200 (2026-12-04, docs/results.md): the twin 69 s, the
# five generators side by side 161-242 s, each round 0 29-64 s, then a round of self memory 4-5
# minutes for each of the seven processes side by side (the 50-beam candidates of dev alone
# 133 s): a 10-minute call reaches every round 0, not the rounds; with fewer systems
# (e.g. FORKS="dual augment" LATER="" and lift.max_rounds=1) it reaches round 1. The runs go to
# ROOT (rerun to resume); the report, its plot, the driver's log and a tarball of the runs'
# small files (states, metrics, hypotheses, memories, logs; no checkpoints or candidates) to
# OUT (default ROOT). k=v arguments go to every run. Prepare on a CPU first (docs/results.md,
# "On a GPU"): the corpus under CORPORA, joint's tokenizer and BM25 memory under ROOT.
#   CORPORA=dir/holding/libreoffice_ende_tm [ROOT=dir] [DEADLINE=s] [FORKS=...] [LATER=...] \
#     bash results/gpu_translation.sh [k=v ...]
source "$(dirname "$0")/../bench/help.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
export ROOT=${ROOT:-runs/gpu_translation} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
export FORKS=${FORKS-dual augment slots close} LATER=${LATER-topb4 upper}
REPORTS=${OUT:-$ROOT}
mkdir -p "$REPORTS" "$ROOT/logs"
export SETTINGS="--corpora tm --nproc 1 --data ${CORPORA:-../shared/data} --root $ROOT train.precision=fp32
  train.max_tokens=12000 $*"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

drive() {  # drive SYSTEM: the driver for one system, its log and its own report under $ROOT/logs
  local start=$SECONDS
  echo "[$(date +%T)] $1: started"
  # shellcheck disable=SC2086  # SETTINGS is a list of words
  python3 results/translation.py --systems "$1" $SETTINGS --report "$ROOT/logs/$1.md" > "$ROOT/logs/$1.log" 2>&1
  echo "[$(date +%T)] $1: exit $? after $((SECONDS - start)) s"
}
stage_done() {  # stage_done RUN STAGE: whether joint's (or another run's) stage is done
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["stages"]; sys.exit(not s.get(sys.argv[2], {}).get("done"))' \
    "$ROOT/tm/$1/state.json" "$2" 2> /dev/null
}
await() {  # await STAGE: until joint's STAGE is done; fails once joint's driver has ended without it
  until stage_done joint "$1"; do
    kill -0 "$joint" 2> /dev/null || stage_done joint "$1" || return 1
    sleep 5
  done
}
experiment() {
  drive joint & joint=$!
  if await no_memory; then
    for system in $FORKS; do drive "$system" & done
  fi
  if await round_0; then
    for system in $LATER; do drive "$system" & done
  fi
  wait
}
export -f drive stage_done await experiment

start=$SECONDS
if [[ ${DEADLINE:-0} -gt 0 ]]; then
  timeout --kill-after 10 "$DEADLINE" bash -c experiment || echo "stopped at the deadline ($DEADLINE s) or failed: exit $?"
else
  experiment
fi
echo "experiment: $((SECONDS - start)) s"
# shellcheck disable=SC2086
python3 results/translation.py --report-only $SETTINGS --report "$REPORTS/results_translation_gpu.md" > /dev/null
cd "$ROOT" && find . -path ./logs -prune -o \( -name '*.json' -o -name '*.jsonl' -o -name '*.txt' -o -name '*.md' \) \
  -not -path '*/candidates/*' -not -path '*/index/*' -not -name 'train.jsonl' -print |
  tar czf "$REPORTS/gpu_translation_runs.tgz" -T - logs
