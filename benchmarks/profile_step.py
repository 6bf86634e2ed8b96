"""Where a training step's time goes: the torch profiler over steps of ``train.py``'s path.

    python benchmarks/profile_step.py --extra trainer.accelerator=gpu \\
        trainer.precision=bf16-mixed perf.cuda_graph=true          # on a GPU
    python benchmarks/profile_step.py --shape tiny --steps 10      # a dry run on a CPU

Runs ``loopformer.training.run`` at ``--shape`` (as in ``bench_train.py``) with the ``--extra``
overrides, profiles ``--steps`` steps after ``--warmup`` steps (compilation and graph capture
are over by then) and prints, per step:

- wall time, and the host's time from the start of one step to the start of the next
  (``host_ms_per_step``; without synchronisation the host runs ahead of the device, so when
  the device is the bottleneck this time grows until it matches the wall time);
- device kernels and the device's busy share: the union of the kernels' and copies'
  intervals over the wall time (on a CPU: operator calls instead of kernels);
- host calls that wait for the device (``*Synchronize``, blocking ``cudaMemcpy``), which a
  step should not make;
- the operators or kernels that take most of the time.

``--trace FILE`` keeps the Chrome trace (open it in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import SHAPES, overrides, run_with, sync  # noqa: E402

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# runtime calls that make the host wait for the device
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize",
              "cudaMemcpy")


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise(trace: dict, steps: int, wall_s: float) -> dict:
    """Per-step figures from a Chrome trace of ``steps`` steps that took ``wall_s``."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    device = [e for e in events if e.get("cat") in DEVICE_CATS]
    kernels = [e for e in device if e.get("cat") == "kernel"]
    runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    waits = [e for e in runtime if e.get("name") in SYNC_CALLS]
    out = {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps,
           "cpu_ops_per_step": len(ops) / steps}
    if device:
        busy = busy_us([(e["ts"], e["ts"] + e.get("dur", 0)) for e in device])
        by_name: dict[str, float] = {}
        for e in kernels:
            by_name[e["name"]] = by_name.get(e["name"], 0.0) + e.get("dur", 0)
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
        total = sum(by_name.values()) or 1.0
        out.update(kernels_per_step=len(kernels) / steps,
                   device_busy_ms_per_step=busy / 1e3 / steps,
                   device_busy_share=busy / 1e6 / wall_s,
                   kernel_us_mean=total / max(1, len(kernels)),
                   launches_per_step=sum(e["name"] in ("cudaLaunchKernel", "cudaLaunchKernelExC",
                                                       "cuLaunchKernel", "cuLaunchKernelEx")
                                         for e in runtime) / steps,
                   graph_launches_per_step=sum(e["name"] == "cudaGraphLaunch"
                                               for e in runtime) / steps,
                   waits_per_step=len(waits) / steps,
                   waits=sorted({e["name"] for e in waits}),
                   top_kernels=[(name[:90], round(100 * us / total, 1)) for name, us in top])
    return out


def profile(args) -> dict:
    import lightning as L
    import torch
    from torch.profiler import ProfilerActivity

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    state: dict = {"starts": []}

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, *a):
            if "prof" in state:
                state["starts"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, *a):
            step = trainer.global_step
            if step == args.warmup:
                sync()
                state["prof"] = torch.profiler.profile(activities=activities)
                state["prof"].__enter__()
                state["t0"] = time.perf_counter()
            elif step == args.warmup + args.steps:
                sync()
                state["t1"] = time.perf_counter()
                state["prof"].__exit__(None, None, None)
                trainer.should_stop = True

    run_with([*overrides(args.shape, args.warmup + args.steps + 1, args.extra),
              f"run_dir={args.run_dir}"], Window())
    if "t1" not in state:
        sys.exit("the run ended before the profiled steps did")
    prof, wall = state["prof"], state["t1"] - state["t0"]
    trace_path = Path(args.trace or Path(args.run_dir) / "trace.json")
    prof.export_chrome_trace(str(trace_path))
    opener = gzip.open if trace_path.suffix == ".gz" else open
    with opener(trace_path, "rt") as f:
        trace = json.load(f)
    out = summarise(trace, args.steps, wall)
    starts = state["starts"]
    if len(starts) > 1:
        out["host_ms_per_step"] = 1e3 * (starts[-1] - starts[0]) / (len(starts) - 1)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out["table"] = prof.key_averages().table(sort_by=sort, row_limit=args.top)
    out.update(shape=args.shape, extra=args.extra,
               device=torch.cuda.get_device_name() if cuda else "CPU",
               torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="final")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=10, help="steps before profiling")
    ap.add_argument("--extra", nargs="*", default=[], help="config overrides")
    ap.add_argument("--top", type=int, default=15, help="rows of the operator table")
    ap.add_argument("--trace", help="keep the Chrome trace here (.json or .json.gz)")
    ap.add_argument("--label", default="", help="names this configuration in --jsonl")
    ap.add_argument("--jsonl", type=Path, help="append the summary as a JSON line here")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        args.run_dir = str(Path(tmp) / "run")
        r = profile(args)
    print(r.pop("table"))
    print(f"# {r['device']}, torch {r['torch']}, {r['date']}; shape {r['shape']}; "
          f"{' '.join(r['extra']) or 'defaults'}; {r['steps']} steps")
    for key, value in r.items():
        if key not in ("device", "torch", "date", "shape", "extra"):
            print(f"{key:>26}: {round(value, 3) if isinstance(value, float) else value}")
    if args.jsonl:
        with args.jsonl.open("a") as f:
            f.write(json.dumps({**r, "label": args.label}) + "\n")


if __name__ == "__main__":
    main()
