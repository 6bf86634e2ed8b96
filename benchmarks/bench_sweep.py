"""How to spend a machine's cores on a study: runs one after another with all threads, or K
runs at once (joblib launcher) with an equal share of the threads each.

    python benchmarks/bench_sweep.py                              # 4 runs, n_jobs 1 and 2
    python benchmarks/bench_sweep.py --runs 4 --steps 300 --n-jobs 1 2 \\
        --base experiment=quickstart --jsonl sweep.jsonl

Each mode runs the same micro study through ``sweep.py`` (``--runs`` seeds of ``--base`` at
``--steps`` training steps, with its end-of-run evaluation) in a fresh directory and prints
the wall time of the whole sweep, seconds per run and runs per hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loopformer.study import launcher_overrides  # noqa: E402


def one(mode_jobs: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        conf = tmp / "conf" / "study"
        conf.mkdir(parents=True)
        base = [*args.base, f"trainer.max_steps={args.steps}", "trainer.enable_progress_bar=false",
                "logger=csv"]
        study = {"name": "bench", "base": base, "seeds": list(range(1, args.runs + 1)),
                 "variants": {"run": []}}
        (conf / "bench.yaml").write_text(json.dumps(study))
        cmd = [sys.executable, str(ROOT / "sweep.py"), f"hydra.searchpath=[file://{tmp / 'conf'}]",
               "study=bench", f"study_dir={tmp / 'bench'}", f"n_jobs={mode_jobs}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"sweep failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    # the threads sweep.py gave each run (torch's default, one per core, when it set none)
    threads = next((int(o.split("=")[1]) for o in launcher_overrides(None, mode_jobs, ())
                    if o.startswith("perf.threads=")), os.cpu_count() or 1)
    return {"n_jobs": mode_jobs, "threads_per_run": threads, "runs": args.runs,
            "steps": args.steps, "wall_s": round(wall, 1),
            "s_per_run": round(wall / args.runs, 1),
            "runs_per_hour": round(3600 * args.runs / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--base", nargs="+", default=["experiment=quickstart"])
    p.add_argument("--jsonl", type=Path)
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; study: {args.runs} runs of {' '.join(args.base)} at "
          f"{args.steps} steps")
    print(f"{'n_jobs':>6} {'threads/run':>11} {'wall s':>8} {'s/run':>7} {'runs/h':>7}")
    for k in args.n_jobs:
        r = one(k, args)
        print(f"{r['n_jobs']:>6} {r['threads_per_run']:>11} {r['wall_s']:>8} "
              f"{r['s_per_run']:>7} {r['runs_per_hour']:>7}", flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
