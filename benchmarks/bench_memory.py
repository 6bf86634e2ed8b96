"""Peak memory of one training step against the loop count b at a fixed window.

    python benchmarks/bench_memory.py                 # b = 20, 50, 100, 200; window 15
    python benchmarks/bench_memory.py --loops 20 500 --window 15 --batch 64

Each b runs in its own process (seed final shape: 20 dims, 41 points, 256 wide, batch 64) and
reports the peak resident memory of the step above the process's memory before it (CPU), or
``torch.cuda.max_memory_allocated`` (GPU). Iterations before the window run under no_grad and
keep nothing, so the peak should not grow with b.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(b: int, window: int, batch: int) -> dict:
    import torch

    from loopformer import ModelConfig, build_model, build_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(ModelConfig()).to(device)
    xs, ys = build_task("linear_regression", 20).sample(
        batch, 41, 20, torch.Generator(device=device).manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    loss = (model(xs, ys, n_loops=b, window=window) - ys).square().mean()
    loss.backward()
    out = {"b": b, "window": window,
           "peak_step_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, nargs="*", default=[20, 50, 100, 200])
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.window, args.batch)))
        return
    print(f"{'b':>5}{'window':>8}{'step peak MiB':>15}")
    rows = []
    for b in args.loops:
        # large blocks through mmap, so freed memory leaves the RSS at once and the peak
        # measures live tensors rather than the C allocator's fragmentation
        env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
        out = subprocess.run([sys.executable, __file__, "--one", str(b), "--window",
                              str(args.window), "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        gpu = f"{r['peak_gpu_mib']:>12.1f} (GPU)" if "peak_gpu_mib" in r else ""
        print(f"{b:>5}{args.window:>8}{r['peak_step_mib']:>15.1f}{gpu}")
    ratio = rows[-1]["peak_step_mib"] / rows[0]["peak_step_mib"]
    print(f"peak at b={rows[-1]['b']} / peak at b={rows[0]['b']} = {ratio:.3f}")


if __name__ == "__main__":
    main()
