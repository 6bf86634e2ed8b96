#!/usr/bin/env bash
# GPU verification, in two stages that run on the same machine one after the other:
#
#   bash benchmarks/gpu_check.sh check OUTDIR   # gpu-marked tests + training-step benchmark
#   bash benchmarks/gpu_check.sh train OUTDIR   # time-boxed experiment=seed_lr run + evaluation
#
# check: the `gpu` tests, then the training step at the seed's final shape (20 dims, 41 points,
#   30 loops, window 15, batch 64, 256 wide) in fp32 (Lightning and a plain PyTorch loop), bf16,
#   bf16 + torch.compile, bf16 + per-block CUDA graphs (compile_mode=reduce-overhead) and the
#   whole-step CUDA graph (perf.cuda_graph) in fp32 and bf16.
#   Writes OUTDIR/check.log, OUTDIR/bench.jsonl and OUTDIR/gpu_tests.xml.
# train: experiment=seed_lr for TRAIN_MINUTES (default 6) with the fixed test set evaluated every
#   2500 steps, then the end-of-run evaluation. Its speed settings are TRAIN_EXTRA if set, else
#   the fastest benchmarked configuration whose gpu tests passed. Writes OUTDIR/seed_lr/ and
#   OUTDIR/train.log.
# PYTHON selects the interpreter (default python3); BENCH_SHAPE (final), BENCH_STEPS (100) and
# BENCH_WARMUP (10) shrink the benchmark for a dry run on a CPU.
set -uo pipefail
stage=${1:?usage: gpu_check.sh check|train OUTDIR}
out=${2:?usage: gpu_check.sh check|train OUTDIR}
PY=${PYTHON:-python3}
SHAPE=${BENCH_SHAPE:-final}
STEPS=${BENCH_STEPS:-100}
WARMUP=${BENCH_WARMUP:-10}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
mkdir -p "$out"

bench() {  # bench LABEL SHAPE [OVERRIDES...]
    local label=$1 shape=$2
    shift 2
    timeout 240 "$PY" benchmarks/bench_train.py --shapes "$shape" --paths lightning \
        --steps "$STEPS" --warmup "$WARMUP" --predict-loops 0 --label "$label" --jsonl "$out/bench.jsonl" \
        --extra "$@" 2>&1 | grep -v '^#\|^shape' || echo "benchmark $label failed"
}

case $stage in
check)
    exec > >(tee "$out/check.log") 2>&1
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
        --steps "$STEPS" --warmup "$WARMUP" --predict-loops 500 --label fp32 \
        --jsonl "$out/bench.jsonl"
    bench bf16 "$SHAPE" trainer.precision=bf16-mixed
    bench bf16+compile "$SHAPE" trainer.precision=bf16-mixed perf.compile=true
    bench bf16+cudagraphs "$SHAPE" trainer.precision=bf16-mixed perf.compile=true \
        perf.compile_mode=reduce-overhead
    bench fp32+stepgraph "$SHAPE" perf.cuda_graph=true
    bench bf16+stepgraph "$SHAPE" trainer.precision=bf16-mixed perf.cuda_graph=true
    echo "== fastest configuration whose tests passed: $("$PY" benchmarks/gpu_pick.py "$out" \
"$SHAPE")"
    date -u
    ;;
train)
    exec > >(tee "$out/train.log") 2>&1
    extra=${TRAIN_EXTRA-$("$PY" benchmarks/gpu_pick.py "$out" "$SHAPE")}
    minutes=${TRAIN_MINUTES:-6}
    echo "== experiment=seed_lr for $minutes min with: ${extra:-defaults}"
    date -u
    # shellcheck disable=SC2086
    timeout $((minutes * 60 + 150)) "$PY" train.py experiment=seed_lr \
        run_dir="$out/seed_lr" logger=csv callbacks=none trainer.enable_progress_bar=false \
        trainer.max_time="00:00:$(printf %02d "$minutes"):00" \
        test.every_n_steps=2500 test.size=20000 $extra
    date -u
    ;;
*)
    echo "unknown stage $stage: use check or train" >&2
    exit 2
    ;;
esac
