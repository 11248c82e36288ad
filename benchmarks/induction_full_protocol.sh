#!/usr/bin/env bash
# The Mamba paper's induction-heads protocol run to its end (issue #23, benchmarks/NOTES_induction.md): the paper
# preset at length 256 for its 25 "epochs" of 8,192 steps (204,800), trigger anywhere, no early stop; every epoch's
# checkpoint kept and measured at 2^6 .. 2^20.
#   DEVICE=cpu MINUTES=120 bash benchmarks/induction_full_protocol.sh     # stops cleanly after MINUTES; run it
#                                                                        # again (any device) to continue
#   DEVICE=cuda MINUTES=9 EVAL=0 bash benchmarks/induction_full_protocol.sh   # on the device (carry $RUN there and
#                                                                        # back); the epochs are measured on a CPU
# About 11 steps/s on one CPU thread (5 h in all), about 70 on an H100 (48 min, an estimate from the 24,784-step
# run). The run directory is $RUN (default runs/induction_paper_full, ignored by git): keep it between sessions.
# STEPS (default 204800) shortens the run; EXTRA_ARGS adds runner flags, e.g. the public reproduction's data (the
# first trigger among the first 10 positions, mamba-recall, state-spaces/mamba#62):
#   STEPS=65536 EXTRA_ARGS="--far-trigger-steps 65536 --far-trigger-span 10" RUN=runs/induction_far10 NAME=far10 ...
# Each invocation ends with the runner's own accuracy by length of the latest model, 2^6 to 2^20 (RUN/results.json;
# about 5 min on a CPU; the test lengths are part of the run, so a resume must keep them).
# Each epoch's accuracy by length (measured on the CPU, n = 64 per length, 32 at 2^20; an epoch in which the weights
# moved less than MOVED_MIN since the last measured one is skipped, see below) goes to
# benchmarks/results/induction_paper_full_epoch_<k>.json, all of them to induction_paper_full_epochs.png; the run's
# log (steps/s, validation) to $RUN.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL="${TQDM_MININTERVAL:-60}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
RUN="${RUN:-runs/induction_paper_full}"
NAME="${NAME:-paper_full}"
resume=(); [ -f "$RUN/config.json" ] && resume=(--resume)
# on a CPU, THREADS (default 1: the model is tiny, and another core can measure the epochs meanwhile)
if [ "$DEVICE" = cpu ]; then
    export OMP_NUM_THREADS="${THREADS:-1}" NUMBA_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
fi
"$PY" -m ssm_core.synthetic induction --preset paper --steps "${STEPS:-204800}" --set train.early_stop.metric=null \
    --set train.checkpoint_every=8192 --set train.keep_last=30 --set train.log_every=1024 \
    --set train.time_limit_min="${MINUTES:-0}" --set train.seed="${SEED:-0}" --out "$RUN" --device "$DEVICE" \
    "${resume[@]}" ${EXTRA_ARGS:-} \
    2>&1 | tr '\r' '\n' | grep -av '^ *$' >> "$RUN.log"
[ "${EVAL:-1}" = 1 ] || exit 0  # EVAL=0 on a GPU machine: measure the epochs later on a CPU (one thread each)
# An epoch is measured only when the weights moved more than MOVED_MIN (relative, default 1%) since the last measured
# epoch: in a plateau they move 1e-4 to 1e-3 per epoch and the curve stays as it was. Each epoch's movement goes to
# benchmarks/results/induction_${NAME}_moved.tsv.
moved_log="benchmarks/results/induction_${NAME}_moved.tsv"
[ -f "$moved_log" ] || printf 'step\tmoved_since_previous_epoch\tmoved_since_last_measured\tmeasured\n' > "$moved_log"
moved() { "$PY" benchmarks/induction_experiments.py moved --weights-moved "$1" "$2"; }
previous="" last_measured=""
for ckpt in "$RUN"/checkpoints/step-*.ckpt; do
    [ -e "$ckpt" ] || continue
    step=$(basename "$ckpt" .ckpt); step=$((10#${step#step-}))
    [ $((step % 8192)) -eq 0 ] || continue
    name="${NAME}_epoch_$((step / 8192))"
    if [ -f "benchmarks/results/induction_$name.json" ]; then
        previous=$ckpt last_measured=$ckpt
        continue
    fi
    measure=$(awk -F'\t' -v s="$step" '$1 == s {print $4}' "$moved_log")  # decided by an earlier invocation
    if [ -z "$measure" ]; then
        since_previous=nan since_measured=nan
        [ -z "$previous" ] || since_previous=$(moved "$previous" "$ckpt")
        [ -z "$last_measured" ] || since_measured=$(moved "$last_measured" "$ckpt")
        measure=$(awk -v a="$since_measured" -v b="${MOVED_MIN:-0.01}" \
            'BEGIN {print (a == "nan" || a + 0 > b + 0) ? 1 : 0}')  # nan (nothing measured yet) measures
        printf '%s\t%s\t%s\t%s\n' "$step" "$since_previous" "$since_measured" "$measure" >> "$moved_log"
    fi
    previous=$ckpt
    [ "$measure" = 1 ] || continue
    "$PY" benchmarks/induction_experiments.py "$name" --train-len 256 --from-run "$ckpt" --steps "$step" \
        --eval-lens 64,256,1024,4096,16384,65536,262144,1048576 --eval-samples 64
    last_measured=$ckpt
done
"$PY" benchmarks/induction_experiments.py "${NAME}_epochs" --plot-curves "${NAME}_epoch_"
