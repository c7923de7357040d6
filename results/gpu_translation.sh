#!/usr/bin/env bash
# The libreoffice_ende_tm experiment on one GPU, for a session lent one for minutes: the `_tm`
# systems of results/translation.py (joint with its no-memory twin, then by default dual,
# augment, slots, close, Top-B and the upper bound) at configs/libreoffice_ende.yaml's size with
# the driver's settings, each system's lift in a process of its own, side by side on the one
# GPU. fp32 (a 7.6M model's step is bound by the host, and autocast's casts add kernel
# launches) and the CPU runs' steps: two 6,000-token micro-batches a step (train.accumulate=2, as
# their 2 processes take them: the same batches and dropout seeds). One 12,000-token batch a step,
# the default before 2026-12-04, trains worse generators (each step one length band: the batcher
# packs by length): the no-memory twin 31.96 dev BLEU against 34.91, and on a CPU the same
# single batches follow the GPU's dev losses, not the CPU runs' (docs/results.md).
#
# Order: joint's lift first (the no-memory twin is its first stage); once the twin is done, the
# systems in FORKS (default: dual augment slots close) fork from joint (sharing its tokenizer,
# BM25 memory and twin) and train their generators beside joint's; once joint's round 0 is done,
# those in LATER (default: topb4 upper), which decode with joint's generator. At DEADLINE
# seconds (default: none) whatever is unfinished is stopped; the report is written from the
# stages that finished. Measured on an H200 (2026-12-04, docs/results.md; one 12,000-token batch
# a step, so training was faster than it is now, by up to half): the twin 69 s, the five
# generators side by side 161-242 s, each round 0 29-64 s, then a round of self memory 4-5 minutes
# for each of the seven processes side by side (the 50-beam candidates of dev alone 133 s): a
# 10-minute call reached every round 0, not the rounds; with three systems (FORKS="dual augment"
# LATER="" and lift.max_rounds=1) two calls on a warm machine, 535 and 250 s, reached round 1.
# The runs go to ROOT (rerun to resume); the report, its plot, the driver's log and a tarball of
# the runs' small files (states, metrics, hypotheses, memories, logs; no checkpoints or
# candidates) to OUT (default ROOT). k=v arguments go to every run.
# SEEDS (e.g. "1234 2 3"; default none: one run at the config's seed) runs the whole experiment
# once per seed, side by side, each with run.seed=N under ROOT/seedN (started from a copy of
# joint's prepared run under ROOT; the tokenizer is trained again for its seed), its report,
# tarball and driver log under OUT/seedN, then results_translation_gpu_seeds.md: each system that
# trains a generator of its own across the seeds, its gain in each, their mean and spread (one
# run's gain of about a BLEU is within the GPU's run-to-run noise, docs/results.md). Prepare on
# a CPU first (docs/results.md, "On a GPU"): the corpus under CORPORA, joint's tokenizer and BM25
# memory under ROOT.
#   CORPORA=dir/holding/libreoffice_ende_tm [ROOT=dir] [DEADLINE=s] [FORKS=...] [LATER=...] [SEEDS=...] \
#     bash results/gpu_translation.sh [k=v ...]
source "$(dirname "$0")/../bench/help.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
export ROOT=${ROOT:-runs/gpu_translation} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
export FORKS=${FORKS-dual augment slots close} LATER=${LATER-topb4 upper}
DEADLINE=${DEADLINE:-0}
for system in $FORKS; do  # a system that shares joint's generator would copy it while it trains
  [[ $system =~ ^(dual|augment|copy|slots|close)$ ]] ||
    { echo "error: FORKS takes systems with generators of their own (dual augment copy slots close), not '$system'" >&2; exit 2; }
done
for system in $LATER; do
  [[ $system =~ ^(topb4|upper)$ ]] || { echo "error: LATER takes topb4 and upper, not '$system'" >&2; exit 2; }
done
[[ $DEADLINE =~ ^[0-9]+$ ]] || { echo "error: DEADLINE is in whole seconds, got '$DEADLINE'" >&2; exit 2; }
read -ra seeds <<< "${SEEDS-}"
for seed in "${seeds[@]}"; do
  [[ $seed =~ ^(0|[1-9][0-9]*)$ ]] || { echo "error: SEEDS takes whole numbers, not '$seed'" >&2; exit 2; }
done
[[ $(printf '%s\n' "${seeds[@]}" | sort | uniq -d) == "" ]] ||
  { echo "error: SEEDS names a seed twice: '$SEEDS'" >&2; exit 2; }
mkdir -p "${OUT:-$ROOT}" "$ROOT/logs"
REPORTS=$(realpath "${OUT:-$ROOT}")
export SETTINGS="--corpora tm --nproc 1 --data ${CORPORA:-../shared/data} --root $ROOT train.precision=fp32
  train.max_tokens=6000 train.accumulate=2 $*"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if (( ${#seeds[@]} )); then  # this script once per seed, side by side, then the report across them
  trap 'kill $(jobs -p) 2> /dev/null' INT TERM
  roots=()
  for seed in "${seeds[@]}"; do
    run=$ROOT/seed$seed
    if [[ ! -d $run/tm/joint ]]; then  # joint's prepared tokenizer and BM25 memory (its forks fork again)
      rm -rf "$run.partial" && mkdir -p "$run.partial/tm" && cp -r "$ROOT/tm/joint" "$run.partial/tm/" &&
        mkdir -p "$run" && mv "$run.partial/tm" "$run/" && rmdir "$run.partial"
    fi
    mkdir -p "$REPORTS/seed$seed"
    # the seed after the k=v arguments: the last setting of a key wins
    ROOT=$run OUT=$REPORTS/seed$seed SEEDS="" bash results/gpu_translation.sh "$@" "run.seed=$seed" \
      > "$REPORTS/seed$seed/driver.log" 2>&1 &
    roots+=("$run")
  done
  while [[ -n $(jobs -rp) ]]; do wait; done  # a signal ends a wait, not the runs: on until they stop
  for seed in "${seeds[@]}"; do
    echo "seed $seed:" && grep -E "^\[|^stopped|^experiment" "$REPORTS/seed$seed/driver.log" | sed 's/^/  /'
  done
  set -f
  # shellcheck disable=SC2086
  python3 results/translation.py $SETTINGS --report "$REPORTS/results_translation_gpu_seeds.md" \
    --across "${roots[@]}" > /dev/null
  exit
fi

drive() {  # drive SYSTEM: the driver for one system, its log (this call's) and its own report under $ROOT/logs
  local start=$SECONDS status
  echo "[$(date +%T)] $1: started"
  set -f  # SETTINGS is a list of words, none a pattern
  # shellcheck disable=SC2086
  python3 results/translation.py --systems "$1" $SETTINGS --report "$ROOT/logs/$1.md" > "$ROOT/logs/$1.log" 2>&1
  status=$?
  echo "[$(date +%T)] $1: exit $status after $((SECONDS - start)) s"
}
await() {  # await STAGE: until joint's lift says, in this call's log, that its STAGE is done
  # (not its state.json: a stage an earlier call finished may be redone under other settings)
  until grep -q "stage $1: done" "$ROOT/logs/joint.log" 2> /dev/null; do
    kill -0 "$joint" 2> /dev/null || grep -q "stage $1: done" "$ROOT/logs/joint.log" || return 1
    sleep 5
  done
}
experiment() {
  drive joint & joint=$!
  if await no_memory; then  # the forks share joint's twin (lift.no_memory_baseline stays on)
    for system in $FORKS; do drive "$system" & done
  fi
  if await round_0; then
    for system in $LATER; do drive "$system" & done
  fi
  wait
}
export -f drive await experiment

start=$SECONDS
# timeout (0: none) stops the drivers at the deadline, and passes on a signal this script gets
timeout --kill-after 10 "$DEADLINE" bash -c experiment &
experiment=$!
trap 'kill "$experiment" 2> /dev/null' INT TERM
wait "$experiment"
status=$?
while kill -0 "$experiment" 2> /dev/null; do  # a signal ended the wait, not the experiment
  wait "$experiment"
  status=$?
done
[[ $status -eq 0 ]] || echo "stopped: exit $status (124: the deadline, $DEADLINE s)"
echo "experiment: $((SECONDS - start)) s"
set -f
# shellcheck disable=SC2086
python3 results/translation.py --report-only $SETTINGS --report "$REPORTS/results_translation_gpu.md" > /dev/null
(cd "$ROOT" && find . -path ./logs -prune -o \( -name '*.json' -o -name '*.jsonl' -o -name '*.txt' -o -name '*.md' \) \
  -not -path '*/candidates/*' -not -path '*/index/*' -not -name 'train.jsonl' -print) |
  tar czf "$REPORTS/gpu_translation_runs.tgz" -C "$ROOT" -T - logs
