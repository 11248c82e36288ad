#!/usr/bin/env bash
# The Mamba paper's synthetic tasks (§4.1, appendix E.1) at paper scale on one CUDA GPU.
#   bash benchmarks/synthetic_device.sh [induction] [copying] [ablation]     (default: all three)
#   bash benchmarks/synthetic_device.sh copying_curriculum ablation_curriculum induction_state_passing
#                                     (a length curriculum for copying, with its ablation; state passing for induction)
#   bash benchmarks/synthetic_device.sh induction_profile   (where an induction training step's time goes, cProfile)
#   bash benchmarks/synthetic_device.sh induction_far_seeds
#                                     (induction at 256 with the first trigger among the first FAR_SPAN positions for
#                                     every step, as the public reproduction of Table 2 (mamba-recall, state-spaces/
#                                     mamba#62) generates it; one run per seed in SEEDS, side by side on the one GPU,
#                                     each with its own log; checkpoints every 8192 steps for measuring on a CPU)
#   bash benchmarks/synthetic_device.sh induction_far
#                                     (induction, the first trigger far from the query first, paper preset, curriculum
#                                     64 -> 256: benchmarks/NOTES_induction.md; not yet run on a GPU, and 16,000 CPU
#                                     steps of it reached 46.9% at 65,536)
# Each run trains through the engine (python -m ssm_core.synthetic ... --preset paper) and writes
# synthetic_<name>.json (results.json: accuracy by test length) and synthetic_<name>.png (accuracy vs length) to
# $OUT when set (the device tool brings that folder back), else to benchmarks/results/; one log for all runs.
#
# The paper trains induction heads for 204,800 steps and selective copying for 400,000; a device call is capped at
# 10 minutes, so the step budgets and wall-clock limits below are what fits (override through the environment):
#   INDUCTION_STEPS / INDUCTION_MIN   default 204800 steps / 3 min  (stops earlier at 100% validation accuracy)
#   COPYING_STEPS / COPYING_MIN       default 400000 steps / 3.5 min
#   COPYING_LR                        default 1e-3 (the paper's 1e-4 needs its 400K steps)
#   ABLATION_MIN                      default 1 min (selection off: Δ, B, C not input-dependent)
#   CURRICULUM_START / CURRICULUM_STEPS   default 256 / 6000: copying_curriculum trains at 256, 512, 1024, 2048 for
#                                     the first half of the steps, then at 4096 (the paper's 400K steps at 4096 do
#                                     not fit a call)
#   FAR_STEPS / FAR_STEPS_TOTAL / FAR_MIN   default 34000 / 40000 steps / 9.5 min: induction_far's far-trigger steps
#                                     and total steps (lengths 64 -> 128 -> 256 over the first 75%)
#   SEEDS / FAR_SPAN                  default "1 2 3 4" / 10: induction_far_seeds' seeds and trigger span (its
#                                     steps: FAR_STEPS_TOTAL, default 65536 here; its time limit: FAR_MIN, default
#                                     8.5 min here)
#   RESUME=1                          keep the run directory and continue it from its last checkpoint (a run that
#                                     hit its time limit; checkpoints every 8192 steps and at the limit)
#   LOG                               the log's path (default $RESULTS/synthetic_device.log), for parallel calls
#   EXTRA_ARGS                        more flags for every run, e.g. "--set train.early_stop.metric=null" to train
#                                     on after the first 100% validation accuracy (extrapolation keeps improving)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
PY="${PYTHON:-python3}"
RESULTS="${OUT:-benchmarks/results}"
RUNS="${RUNS:-/tmp/synthetic_runs}"
LOG="${LOG:-$RESULTS/synthetic_device.log}"
mkdir -p "$RESULTS" "$RUNS"
"$PY" -c 'import torch; print("torch", torch.__version__, "gpu", torch.cuda.get_device_name())' 2>&1 | tee "$LOG"

status=0
run() {  # run NAME ARGS...: one synthetic training + evaluation, results copied next to the log
    local name=$1; shift
    local resume=()
    if [ -n "${RESUME:-}" ]; then resume=(--resume); else rm -rf "${RUNS:?}/$name"; fi
    echo "== $name: python -m ssm_core.synthetic $* --out $RUNS/$name --device cuda ${resume[*]}" | tee -a "$LOG"
    "$PY" -m ssm_core.synthetic "$@" --out "$RUNS/$name" --device cuda "${resume[@]}" 2>&1 | tr '\r' '\n' \
        | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed with exit $rc" | tee -a "$LOG"; status=1; return; }
    cp "$RUNS/$name/results.json" "$RESULTS/synthetic_$name.json"
    cp "$RUNS/$name/plots/accuracy_vs_length.png" "$RESULTS/synthetic_$name.png"
}

for what in "${@:-induction copying ablation}"; do
  for w in $what; do
    case "$w" in
      induction) run induction induction --preset paper --steps "${INDUCTION_STEPS:-204800}" \
                     --set train.time_limit_min="${INDUCTION_MIN:-3}" ${EXTRA_ARGS:-} ;;
      copying)   run copying copying --preset paper --steps "${COPYING_STEPS:-400000}" --lr "${COPYING_LR:-1e-3}" \
                     --set train.time_limit_min="${COPYING_MIN:-3.5}" ${EXTRA_ARGS:-} ;;
      copying_curriculum)  # lengths 256 -> 4096 over the first half of the steps (ssm_core.train.curriculum)
                 run copying_curriculum copying --preset paper --curriculum-start "${CURRICULUM_START:-256}" \
                     --steps "${CURRICULUM_STEPS:-6000}" --lr "${COPYING_LR:-1e-3}" \
                     --set train.time_limit_min="${COPYING_MIN:-3.5}" ${EXTRA_ARGS:-} ;;
      induction_state_passing)  # each training sequence starts from the state another example left
                 run induction_state_passing induction --preset paper --state-passing \
                     --steps "${INDUCTION_STEPS:-204800}" --set train.time_limit_min="${INDUCTION_MIN:-3}" \
                     ${EXTRA_ARGS:-} ;;
      induction_far)  # the first trigger among the first 8 positions for FAR_STEPS steps, then anywhere
                 run induction_far induction --preset paper --curriculum-start 64 \
                     --set data.curriculum_fraction=0.75 --far-trigger-steps "${FAR_STEPS:-34000}" \
                     --steps "${FAR_STEPS_TOTAL:-40000}" --set train.time_limit_min="${FAR_MIN:-9.5}" ${EXTRA_ARGS:-} ;;
      induction_far_seeds)  # seeds side by side: a step is mostly launch overhead, so one run leaves the GPU idle
                 pids=() total="${FAR_STEPS_TOTAL:-65536}"
                 for seed in ${SEEDS:-1 2 3 4}; do
                     ( LOG="$RESULTS/synthetic_device_induction_far${FAR_SPAN:-10}_seed$seed.log"
                       run "induction_far${FAR_SPAN:-10}_seed$seed" induction --preset paper --steps "$total" \
                           --far-trigger-steps "$total" --far-trigger-span "${FAR_SPAN:-10}" \
                           --set train.seed="$seed" --set train.early_stop.metric=null \
                           --set train.checkpoint_every=8192 --set train.keep_last=30 \
                           --set train.time_limit_min="${FAR_MIN:-8.5}" ${EXTRA_ARGS:-} > /dev/null
                       exit $status ) &
                     pids+=($!)
                 done
                 for pid in "${pids[@]}"; do wait "$pid" || status=1; done ;;
      induction_profile)  # where a step's time goes: PROFILE_STEPS (default 3000) steps of the paper preset under
                          # cProfile, the functions by own time in synthetic_induction_profile.txt
                 prof="$RUNS/induction_profile.prof"; rm -rf "$RUNS/induction_profile"
                 "$PY" -m cProfile -o "$prof" -m ssm_core.synthetic induction --preset paper \
                     --steps "${PROFILE_STEPS:-3000}" --eval-lens 256 --set train.early_stop.metric=null \
                     --out "$RUNS/induction_profile" --device cuda 2>&1 | tr '\r' '\n' | tail -3 | tee -a "$LOG"
                 "$PY" -c "import pstats, sys; s = pstats.Stats(sys.argv[1], stream=sys.stdout)
s.sort_stats('tottime').print_stats(45); s.sort_stats('cumulative').print_stats(45)" "$prof" \
                     > "$RESULTS/synthetic_induction_profile.txt" || status=1 ;;
      ablation_curriculum)  # the ablation under the same curriculum and step budget as copying_curriculum
                 run copying_curriculum_no_selection copying --preset paper --no-selection \
                     --curriculum-start "${CURRICULUM_START:-256}" --steps "${CURRICULUM_STEPS:-6000}" \
                     --lr "${COPYING_LR:-1e-3}" --set train.time_limit_min="${COPYING_MIN:-3.5}" ${EXTRA_ARGS:-} ;;
      ablation)  run copying_no_selection copying --preset paper --no-selection --steps "${COPYING_STEPS:-400000}" \
                     --lr "${COPYING_LR:-1e-3}" --set train.time_limit_min="${ABLATION_MIN:-1}" ${EXTRA_ARGS:-} ;;
      *) echo "unknown run $w (expected induction, copying, ablation, copying_curriculum, ablation_curriculum," \
              "induction_state_passing, induction_far, induction_far_seeds, induction_profile)" >&2; exit 2 ;;
    esac
  done
done
exit $status
