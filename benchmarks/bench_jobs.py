"""Several training runs on one device at once: aggregate steps/s for K concurrent runs.

    python benchmarks/bench_jobs.py --k 1 2 4 8 --seconds 20 \\
        --extra trainer.accelerator=gpu trainer.precision=bf16-mixed perf.cuda_graph=true
    python benchmarks/bench_jobs.py --k 1 2 4 8 --mps ...   # the same under CUDA MPS, if present
    python benchmarks/bench_jobs.py --shape tiny --k 1 2 --seconds 5   # a dry run on a CPU

For each K, K processes each run ``train.py``'s training path (``loopformer.training.run``) at
``--shape`` (the seed's final shape by default, as in ``bench_train.py``) with the ``--extra``
overrides and ``perf.threads`` = CPUs / K, the share ``sweep.py n_jobs=K`` gives each run.
After ``--warmup`` steps (compilation and graph capture included) each waits for the others,
then all train for ``--seconds`` of wall clock; each counts its steps and synchronises with the
device at both ends of that window. The aggregate is the sum of the K runs' steps/s.

``--mps`` starts the CUDA MPS control daemon for the runs (kernels of different processes then
share the GPU at once instead of taking turns) and stops it afterwards; rows say which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import SHAPES, overrides, run_with, sync  # noqa: E402


def worker(args) -> dict:
    """One run: train until the shared window is over; return its steps and times."""
    import lightning as L
    import torch

    barrier = Path(args.barrier)
    window: dict[str, float] = {}

    class Window(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            step = trainer.global_step
            if "t0" not in window:
                if step < args.warmup:
                    return
                sync()
                (barrier / f"ready.{args.rank}").touch()
                deadline = time.time() + args.barrier_timeout
                while len(list(barrier.glob("ready.*"))) < args.n_runs:
                    if time.time() > deadline:
                        raise SystemExit(f"run {args.rank}: the other runs did not get ready")
                    time.sleep(0.005)
                window.update(t0=time.time(), s0=step)
            elif time.time() - window["t0"] >= args.seconds:
                sync()
                window.update(t1=time.time(), s1=step)
                trainer.should_stop = True

    run_with([*overrides(args.shape, 10**8, args.extra), f"perf.threads={args.threads}",
              f"run_dir={args.run_dir}", f"seed={args.rank}"], Window())
    if "t1" not in window:
        raise SystemExit(f"run {args.rank} stopped before its window ended")
    steps, secs = window["s1"] - window["s0"], window["t1"] - window["t0"]
    out = {"rank": args.rank, "steps": steps, "seconds": secs, "steps_per_s": steps / secs,
           "t0": window["t0"], "t1": window["t1"], "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class MPS:
    """The CUDA MPS control daemon, for the duration of a ``with`` block (its own pipe and
    log directories, so no root-wide state is touched)."""

    def __init__(self, tmp: Path):
        self.env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(tmp / "mps_pipe"),
                        CUDA_MPS_LOG_DIRECTORY=str(tmp / "mps_log"))

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-cuda-mps-control") is not None

    def __enter__(self):
        for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            Path(self.env[key]).mkdir(parents=True, exist_ok=True)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=self.env, check=True)
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=self.env,
                       timeout=30)
        time.sleep(1)


def run_k(k: int, args, tmp: Path, env: dict) -> dict:
    """K concurrent runs; their results and the aggregate."""
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // k)
    barrier = tmp / f"barrier_k{k}"
    shutil.rmtree(barrier, ignore_errors=True)
    barrier.mkdir(parents=True)
    procs = []
    for rank in range(k):
        cmd = [sys.executable, __file__, "--worker", "--rank", str(rank), "--n-runs", str(k),
               "--barrier", str(barrier), "--run-dir", str(tmp / f"k{k}_run{rank}"),
               "--threads", str(threads), "--shape", args.shape, "--warmup", str(args.warmup),
               "--seconds", str(args.seconds), "--barrier-timeout", str(args.barrier_timeout),
               "--extra", *args.extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    runs, errors = [], []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            errors.append(err[-1500:])
        else:
            runs.append(json.loads(out.strip().splitlines()[-1]))
    if errors:
        return {"k": k, "error": errors[0]}
    rates = [r["steps_per_s"] for r in runs]
    return {"k": k, "threads_per_run": threads, "seconds": args.seconds, "shape": args.shape,
            "extra": args.extra, "per_run_min": min(rates), "per_run_max": max(rates),
            "aggregate_steps_per_s": sum(rates),
            # how far apart the runs' windows started and ended (s): the overlap's quality
            "start_spread_s": max(r["t0"] for r in runs) - min(r["t0"] for r in runs),
            "end_spread_s": max(r["t1"] for r in runs) - min(r["t1"] for r in runs),
            "peak_gpu_gib": max((r.get("peak_gpu_gib", 0.0) for r in runs), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--shape", choices=list(SHAPES), default="final")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window per K")
    ap.add_argument("--warmup", type=int, default=10, help="steps before the window")
    ap.add_argument("--barrier-timeout", type=float, default=300.0)
    ap.add_argument("--mps", action="store_true", help="run under the CUDA MPS daemon")
    ap.add_argument("--extra", nargs="*", default=[], help="config overrides for every run")
    ap.add_argument("--label", default="", help="names this configuration in the table")
    ap.add_argument("--jsonl", type=Path, help="append each K's result as a JSON line here")
    # one run's arguments (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n-runs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if any(k < 1 for k in args.k):
        ap.error(f"--k {args.k}: every K must be >= 1")
    if args.mps and not MPS.available():
        sys.exit("--mps: nvidia-cuda-mps-control is not on PATH; CUDA MPS is unavailable here")
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    mode = "MPS" if args.mps else "shared"
    print(f"# {device}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; shape {args.shape}; {args.seconds:g} s windows; "
          f"{' '.join(args.extra) or 'defaults'}", flush=True)
    print(f"{'K':>3} {'mode':<7}{'threads':>8}{'per run steps/s':>18}{'aggregate':>11}"
          f"{'vs K=1':>8}{'spread s':>10}{'GPU GiB':>9}", flush=True)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ctx = MPS(tmp) if args.mps else None
        env = ctx.env if ctx else dict(os.environ)
        if ctx:
            ctx.__enter__()
        try:
            for k in args.k:
                r = run_k(k, args, tmp, env)
                r.update(mode=mode, label=args.label, device=device)
                if "error" in r:
                    print(f"{k:>3} {mode:<7} failed:\n{r['error']}", flush=True)
                else:
                    base = base or (r["aggregate_steps_per_s"] if k == 1 else None)
                    ratio = f"{r['aggregate_steps_per_s'] / base:.2f}" if base else "-"
                    spread = max(r["start_spread_s"], r["end_spread_s"])
                    print(f"{k:>3} {mode:<7}{r['threads_per_run']:>8}"
                          f"{r['per_run_min']:>9.1f}-{r['per_run_max']:<8.1f}"
                          f"{r['aggregate_steps_per_s']:>11.1f}{ratio:>8}{spread:>10.2f}"
                          f"{r['peak_gpu_gib']:>9.2f}", flush=True)
                if args.jsonl:
                    with args.jsonl.open("a") as f:
                        f.write(json.dumps(r) + "\n")
        finally:
            if ctx:
                ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
