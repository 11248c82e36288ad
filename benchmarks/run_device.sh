#!/usr/bin/env bash
# The one command for a GPU machine, per workload: its GPU tests, then its benchmark. Each fits one 10-minute
# device call (the scan with mamba-ssm's build running beside the tests).
#   bash benchmarks/run_device.sh [scan] [arguments for benchmarks/gpu_scan.py, e.g. --no-sweep]
#        as a user gets it: the suite built into a wheel and installed in a fresh virtual environment (the image's
#        torch and Triton visible), run with no nvcc on PATH and no CUDA_HOME, from outside the checkout; then
#        the first-use compile times (cold and warm cache) and the scan benchmark
#   bash benchmarks/run_device.sh audio [arguments for benchmarks/audio_generation.py, e.g. --sweep]
#   bash benchmarks/run_device.sh genomics [arguments for benchmarks/genomics_throughput.py gpu]
#   bash benchmarks/run_device.sh genomics-accuracy [--set FIELD=VALUE for both checks]
#        the real-genome check (carry benchmarks/.cache/genomics_real/sources) and the simulated apes, side by side
#        on the one GPU, each within 9 minutes (their tables are rewritten after every window length)
#   bash benchmarks/run_device.sh main-job [arguments for python -m suite run, e.g. --size h100-20min]
#        the README's main job on the GPU (default size unless told), its report copied to $RESULTS/main_job_<size>/;
#        the run directory is $RUNS/main_job_<size> (RUNS=runs keeps it in the checkout, so a second call on the
#        same machine resumes it); STOP_AFTER_S=N stops the job with Ctrl-C after N seconds (the next call
#        resumes from the last finished stage and training checkpoint), so a size longer than one device call
#        (h100-20min: 10 min measured on an H100 on 2026-12-06) finishes in two calls
#   bash benchmarks/run_device.sh packing [arguments for benchmarks/classify_packing.py]
#        classify's packed read path against one record at a time, on the GPU (the suite's genomics dependencies
#        must be importable: see benchmarks/README.md for the wheels the image lacks)
#   bash benchmarks/run_device.sh profile [arguments for benchmarks/profile_scan.py, e.g. --shapes wide]
#        one forward+backward of the CUDA scan kernels per shape under Nsight Compute (ncu): scan_profile_*.txt
#   bash benchmarks/run_device.sh tests   (every test marked gpu: more than one call's 10 minutes)
# (The synthetic tasks have their own script: benchmarks/synthetic_device.sh.)
# Logs and JSON go to $OUT when it is set (the device tool brings that folder back), else to benchmarks/results/.
# mamba-ssm is compared only when MAMBA_SSM_PATH names a source tree whose selective_scan_cuda extension is built
# in place: this script never fetches or builds it (see benchmarks/README.md).
# SCAN_TESTS, if set, names the test files the scan workload runs (empty: none; default: test_scan_cuda.py test_scan_gpu.py
# test_varlen.py). SSM_WHEEL, if set, names a wheel built beforehand to install instead of building one here (the
# image's setuptools may be too old for pyproject metadata: build it with `make wheel` and carry .whl/). WAIT_FOR_PID, if set, names a process (say a background build of mamba-ssm) the benchmark waits for after the tests.
# Exit status: non-zero if the tests or the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
TEST_DIR=$PWD/tests

install_wheel() {  # the suite from its wheel into a fresh venv; PY, TEST_DIR and the environment then point there
    local build=/tmp/ssm_wheel env=/tmp/ssm_wheel_env
    rm -rf "$build" "$env" && mkdir -p "$build/tests"
    if [ -n "${SSM_WHEEL:-}" ]; then  # a wheel built elsewhere (the image's setuptools may predate PEP 621)
        cp "$SSM_WHEEL" "$build/" || return 1
    else
        "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$build" . || return 1
    fi
    ls "$build"/mamba_seq_suite-*.whl || { echo "no mamba_seq_suite wheel was built: $(ls "$build")"; return 1; }
    # Without PYTHONPATH (the checkout on it, with an egg-info from an earlier build, made pip skip the install as
    # "already satisfied"), and forced for the same reason.
    "$PY" -m venv --system-site-packages "$env" && env -u PYTHONPATH "$env/bin/python" -m pip install -q --no-deps \
        --no-index --force-reinstall "$build"/*.whl || return 1
    # The image's torch may live in a virtual environment of its own, which --system-site-packages does not reach:
    # a .pth puts the building interpreter's site-packages after the venv's own (as a user's pip install into it).
    "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
        > "$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/image_packages.pth"
    cp tests/*.py "$build/tests/"
    PY="$env/bin/python" TEST_DIR="$build/tests"
    unset PYTHONPATH CUDA_HOME CUDA_PATH
    PATH=$(tr ':' '\n' <<< "$PATH" | grep -v -i cuda | paste -sd:)
    ! command -v nvcc || { echo "nvcc is still on PATH"; return 1; }
    (cd /tmp && "$PY" -c 'import ssm_core, ssm_core.ops.scan_cuda as s; print("ssm_core from", ssm_core.__file__);
assert s.SOURCE.is_file(), s.SOURCE')
}

workload=scan
case "${1:-}" in
    scan|audio|genomics|genomics-accuracy|main-job|packing|profile|tests) workload=$1; shift ;;
esac
case $workload in
    scan) install_wheel > "$RESULTS/gpu_scan_install.log" 2>&1
          rc=$?
          cat "$RESULTS/gpu_scan_install.log"
          [ $rc -eq 0 ] || { echo "scan: installing the wheel failed"; exit 1; }
          tests=()
          for t in ${SCAN_TESTS-test_scan_cuda.py test_scan_gpu.py test_varlen.py}; do tests+=("$TEST_DIR/$t"); done ;;
    audio) tests=(tests/test_block_step.py tests/test_audio_model.py) ;;
    genomics|genomics-accuracy|main-job|packing|profile) tests=() ;;
    tests) tests=("$TEST_DIR") ;;
esac

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "gpu",
torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1 | tee "$RESULTS/gpu_${workload}.log"

tests_rc=0
if [ ${#tests[@]} -gt 0 ]; then
    # Test modules that cannot import here (a CPU-only dependency missing on the device) are reported, not fatal.
    (cd "$TEST_DIR/.." && "$PY" -m pytest -m gpu "${tests[@]}" -q -rs --durations=8 -p no:cacheprovider \
        --continue-on-collection-errors 2>&1) | tee -a "$RESULTS/gpu_${workload}.log"
    tests_rc=${PIPESTATUS[0]}
fi

bench() {  # bench SCRIPT ARGS...: one benchmark, its output appended to the log; returns its exit status
    "$PY" "$@" 2>&1 | tee -a "$RESULTS/gpu_${workload}.log"
    return "${PIPESTATUS[0]}"
}
bench_rc=0
if [ -n "${WAIT_FOR_PID:-}" ]; then
    # (A finished background job stays a zombie until its parent reaps it, and kill -0 still finds a zombie.)
    while kill -0 "$WAIT_FOR_PID" 2>/dev/null && [ "$(ps -o stat= -p "$WAIT_FOR_PID" | cut -c1)" != Z ]; do
        sleep 5
    done
fi
case $workload in
    scan) bench benchmarks/gpu_scan.py --out-dir "$RESULTS" "$@" || bench_rc=$?
          bench benchmarks/scan_first_use.py --out-dir "$RESULTS" || bench_rc=$? ;;
    audio) bench benchmarks/audio_generation.py --out-dir "$RESULTS" "$@" || bench_rc=$? ;;
    packing) bench benchmarks/classify_packing.py --device cuda --out-dir "$RESULTS" "$@" || bench_rc=$? ;;
    profile)
        gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))')
        ncu --profile-from-start off --kernel-name-base mangled --kernel-name regex:ssm_scan --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section SchedulerStats \
            --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            "$PY" benchmarks/profile_scan.py "$@" > "$RESULTS/scan_profile_$gpu.txt" 2>&1 || bench_rc=$?
        grep -E "^==|^  [a-z_:<>, 0-9A-Za-z]+\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible" \
            "$RESULTS/scan_profile_$gpu.txt" | head -n 120 ;;
    genomics) bench benchmarks/genomics_throughput.py gpu "$@" || bench_rc=$?
              [ "$RESULTS" = benchmarks/results ] || cp benchmarks/results/genomics_throughput_gpu_* "$RESULTS/" ;;
    genomics-accuracy)  # the settings of the 2026-11-23 H100 run (1.4m preset, mean pooling, 1-64 kbp windows)
        common=(--device cuda --results-dir "$RESULTS" --set preset=1.4m --set windows=1024,4096,16384,65536
                --set finetune_tokens=131072 --set test_samples=1024 --set nb_train_windows=1024 --set pooling=mean)
        timeout 540 "$PY" benchmarks/genomics_real.py "${common[@]}" --set pretrain_seqlen=4096 \
            --set pretrain_steps=300 --set pretrain_batch=16 --set finetune_steps=250 --set markov_orders=2,4,6,8 \
            --set lr=0.002 "$@" > "$RESULTS/genomics_real.log" 2>&1 &
        real=$!
        timeout 540 "$PY" benchmarks/genomics_apes.py "${common[@]}" --set finetune_steps=300 --set lr=0.003 "$@" \
            > "$RESULTS/genomics_apes.log" 2>&1 &
        apes=$!
        wait $real || bench_rc=$?
        wait $apes || bench_rc=$?
        grep -ah "window \|order " "$RESULTS"/genomics_real.log "$RESULTS"/genomics_apes.log ;;
    main-job)
        size=default
        for ((i = 1; i <= $#; i++)); do  # the size, for the folder names only
            case "${!i}" in --size) j=$((i + 1)); size=${!j} ;; --full|--gpu) size=full ;; esac
        done
        run_dir="${RUNS:-/tmp}/main_job_$size"
        timeout -s INT "${STOP_AFTER_S:-0}" "$PY" -m suite run --device cuda --out "$run_dir" "$@" 2>&1 \
            | tr '\r' '\n' \
            | grep -av '^ *$' > "$RESULTS/main_job_$size.log"
        bench_rc=${PIPESTATUS[0]}
        tail -n 25 "$RESULTS/main_job_$size.log"
        if [ "$RESULTS" != benchmarks/results ]; then
            mkdir -p "$RESULTS/main_job_$size"  # a job stopped early has stages.json but no report yet
            for made in stages.json report; do
                [ ! -e "$run_dir/$made" ] || cp -r "$run_dir/$made" "$RESULTS/main_job_$size/"
            done
        fi ;;
esac

echo "$workload: pytest -m gpu exit $tests_rc; benchmark exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
