#!/usr/bin/env bash
# GPU verification, in stages that run on the same machine one after the other:
#
#   bash benchmarks/gpu_check.sh check OUTDIR    # gpu-marked tests + training-step benchmark
#   bash benchmarks/gpu_check.sh profile OUTDIR  # torch profiler summary of the fastest step
#   bash benchmarks/gpu_check.sh jobs OUTDIR     # K = 1, 2, 4, 8 runs at once on the GPU
#   bash benchmarks/gpu_check.sh train OUTDIR    # time-boxed experiment=seed_lr run + evaluation
#   bash benchmarks/gpu_check.sh all OUTDIR      # all four; training gets the time left
#
# check: the `gpu` tests, then the training step at the seed's final shape (20 dims, 41 points,
#   30 loops, window 15, batch 64, 256 wide) in fp32 (Lightning and a plain PyTorch loop), bf16,
#   and the whole-step CUDA graph (perf.cuda_graph) in fp32, bf16 and bf16 with compiled
#   blocks. FULL=1 adds bf16 + torch.compile and per-block CUDA graphs (compile_mode=
#   reduce-overhead), measured on 2026-11-27. Writes OUTDIR/bench.jsonl, OUTDIR/gpu_tests.xml.
# profile: benchmarks/profile_step.py on the fastest configuration whose gpu tests passed
#   (benchmarks/gpu_pick.py): kernels per step, device busy share, host time per step, host
#   waits, top kernels. Writes OUTDIR/profile.jsonl.
# jobs: benchmarks/bench_jobs.py, K = 1 2 4 8 concurrent runs of that configuration (JOBS_K),
#   10 s windows (JOBS_SECONDS), then K = 8 under CUDA MPS where nvidia-cuda-mps-control exists.
#   Writes OUTDIR/jobs.jsonl.
# train: experiment=seed_lr on the GPU (trainer.accelerator=gpu) at the seed's cadence (fixed test set of 100,000 prompts every
#   10,000 steps, checkpoints every 1,000) for TRAIN_SECONDS (default 360), then the end-of-run
#   evaluation. Speed settings: TRAIN_EXTRA if set, else the fastest configuration whose gpu
#   tests passed. The run lives in logs/gpu_seed_lr (kept while the machine stays warm);
#   RESUME=1 continues it with the settings it started with. Copies metrics.csv, the
#   evaluation's results.json and training_curve.png to OUTDIR/seed_lr/ and prints steps/s per
#   curriculum stage (benchmarks/run_speed.py). Any step that fails (training, a missing file
#   to copy) stops the stage with a message and a non-zero exit.
# all: check, profile, jobs, then train for what is left of ALL_SECONDS (default 570) after a
#   margin of 150 s for the evaluation and the copies. Everything printed goes to
#   OUTDIR/<stage>.log. At most 8 files come back from a device call: all writes 8.
# PYTHON selects the interpreter (default python3); BENCH_SHAPE (final), BENCH_STEPS (200),
# BENCH_WARMUP (10) and PREDICT_LOOPS (500; 0 skips) shrink the benchmark for a dry run on a CPU:
#   BENCH_SHAPE=tiny BENCH_STEPS=5 BENCH_WARMUP=3 PREDICT_LOOPS=0 JOBS_K="1 2" JOBS_SECONDS=3 \
#   ALL_SECONDS=0 PYTHON=python bash benchmarks/gpu_check.sh all /tmp/gpu_dry
set -uo pipefail
stage=${1:?usage: gpu_check.sh check|profile|jobs|train|all OUTDIR}
out=${2:?usage: gpu_check.sh check|profile|jobs|train|all OUTDIR}
PY=${PYTHON:-python3}
SHAPE=${BENCH_SHAPE:-final}
STEPS=${BENCH_STEPS:-200}
WARMUP=${BENCH_WARMUP:-10}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$out"
start=$(date +%s)

bench() {  # bench LABEL [OVERRIDES...]
    local label=$1
    shift
    timeout 240 "$PY" benchmarks/bench_train.py --shapes "$SHAPE" --paths lightning \
        --steps "$STEPS" --warmup "$WARMUP" --predict-loops 0 --label "$label" \
        --jsonl "$out/bench.jsonl" --extra "$@" 2>&1 | grep -v '^#\|^shape' ||
        echo "benchmark $label failed"
}

fastest() {  # the overrides of the fastest configuration whose gpu tests passed
    "$PY" benchmarks/gpu_pick.py "$out" "$SHAPE"
}

check() {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import torch, lightning, hydra; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'lightning', lightning.__version__, 'hydra', hydra.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" || exit 1
    echo "== gpu tests"
    timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$out/gpu_tests.xml" \
        tests/test_perf_options.py tests/test_tasks.py tests/test_graphs.py
    echo "== training step at the $SHAPE shape ($STEPS steps after $WARMUP warm-up steps)"
    rm -f "$out/bench.jsonl"
    timeout 240 "$PY" benchmarks/bench_train.py --shapes "$SHAPE" --paths lightning plain \
        --steps "$STEPS" --warmup "$WARMUP" --predict-loops "${PREDICT_LOOPS:-500}" --label fp32 \
        --jsonl "$out/bench.jsonl"
    bench bf16 trainer.precision=bf16-mixed
    bench fp32+stepgraph perf.cuda_graph=true
    bench bf16+stepgraph trainer.precision=bf16-mixed perf.cuda_graph=true
    bench bf16+compile+stepgraph trainer.precision=bf16-mixed perf.compile=true \
        perf.cuda_graph=true
    if [ "${FULL:-0}" = 1 ]; then
        bench bf16+compile trainer.precision=bf16-mixed perf.compile=true
        bench bf16+cudagraphs trainer.precision=bf16-mixed perf.compile=true \
            perf.compile_mode=reduce-overhead
    fi
    echo "== fastest configuration whose tests passed: $(fastest || true)" |
        sed 's/: $/: the defaults (fp32, eager)/'
    date -u
}

profile() {
    local extra
    extra=$(fastest)
    echo "== profile at the $SHAPE shape with: ${extra:-defaults}"
    rm -f "$out/profile.jsonl"
    # shellcheck disable=SC2086
    timeout 240 "$PY" benchmarks/profile_step.py --shape "$SHAPE" --steps 20 \
        --warmup "$WARMUP" --jsonl "$out/profile.jsonl" --label "${extra:-defaults}" \
        --extra $extra
}

run_jobs() {
    local extra
    extra=$(fastest)
    echo "== K runs at once at the $SHAPE shape with: ${extra:-defaults}"
    rm -f "$out/jobs.jsonl"
    # shellcheck disable=SC2086
    timeout 420 "$PY" benchmarks/bench_jobs.py --shape "$SHAPE" --k ${JOBS_K:-1 2 4 8} \
        --seconds "${JOBS_SECONDS:-10}" --warmup "$WARMUP" --jsonl "$out/jobs.jsonl" \
        --extra $extra
    if command -v nvidia-cuda-mps-control >/dev/null; then
        # shellcheck disable=SC2086
        timeout 240 "$PY" benchmarks/bench_jobs.py --shape "$SHAPE" --k 8 --mps \
            --seconds "${JOBS_SECONDS:-10}" --warmup "$WARMUP" --jsonl "$out/jobs.jsonl" \
            --extra $extra
    else
        echo "CUDA MPS: nvidia-cuda-mps-control not found; skipped"
    fi
}

train() (  # train SECONDS; a subshell under set -e: the first failed step fails the stage
    set -e
    trap 'echo "== train: failed (exit $?): $BASH_COMMAND" >&2' ERR
    local seconds=$1 extra run=logs/gpu_seed_lr resume=() budget=$1 file
    if [ "${RESUME:-0}" = 1 ]; then  # the settings the run started with, unless TRAIN_EXTRA
        for file in "$run.extra" "$run.seconds"; do
            [ -f "$file" ] || { echo "== train: RESUME=1 but $file is missing: no run to" \
                "continue (start one without RESUME)" >&2; exit 1; }
        done
        extra=${TRAIN_EXTRA-$(cat "$run.extra")}
        resume=(ckpt_path=last)
        # trainer.max_time counts the training time of every segment of a resumed run
        budget=$(( $(cat "$run.seconds") + seconds ))
    else
        extra=${TRAIN_EXTRA-$(fastest)}
        rm -rf "$run"
        mkdir -p logs
        echo "$extra" >"$run.extra"
    fi
    echo "$budget" >"$run.seconds"
    echo "== experiment=seed_lr for $seconds s on the GPU with: ${extra:-defaults} ${resume[*]}"
    date -u
    # shellcheck disable=SC2086
    timeout $((seconds + 150)) "$PY" train.py experiment=seed_lr run_dir="$run" \
        trainer.accelerator=gpu logger=csv trainer.enable_progress_bar=false "${resume[@]}" \
        $extra trainer.max_time="$(printf '00:%02d:%02d:%02d' $((budget / 3600)) \
            $((budget % 3600 / 60)) $((budget % 60)))"
    date -u
    mkdir -p "$out/seed_lr"
    cp "$run/metrics.csv" "$run/eval/results.json" "$run/eval/training_curve.png" \
        "$out/seed_lr/"
    "$PY" benchmarks/run_speed.py "$run"
)

case $stage in
check | profile)
    $stage 2>&1 | tee "$out/$stage.log"
    ;;
jobs)
    run_jobs 2>&1 | tee "$out/jobs.log"
    ;;
train)
    train "${TRAIN_SECONDS:-360}" 2>&1 | tee "$out/train.log"
    ;;
all)
    {
        check
        profile
        run_jobs
        left=$(( ${ALL_SECONDS:-570} - 150 - ($(date +%s) - start) ))
        if [ "$left" -ge 60 ]; then
            train "$left"
        else
            echo "== no time left to train ($left s)"
        fi
    } 2>&1 | tee "$out/all.log"
    ;;
*)
    echo "unknown stage $stage: use check, profile, jobs, train or all" >&2
    exit 2
    ;;
esac
