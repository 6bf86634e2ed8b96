"""Time the in-context baselines at evaluation size.

* least squares on 1280 prompts x 41 points, d = 20 (the linear-regression eval);
* the full decision-tree suite (least squares, 3-NN, averaging, greedy tree of depth 4,
  xgboost) on 1280 prompts x 101 points, d = 20. ``--prompts`` times fewer prompts and
  extrapolates linearly (the CPU-fitted baselines cost the same per prompt);
* the sparse-regression suite's Lasso fits (alpha 1, 0.1, 0.01, 0.001) on 1280 prompts x 41
  points, d = 20, sparsity 3 (``--lasso-prompts`` times fewer and extrapolates), with the
  number of fits that stopped at ``max_iter`` before reaching ``tol``;
* optionally (``--reference-prompts``) the naive loop of Garg et al. -- a fresh
  ``DecisionTreeRegressor`` / default ``XGBRegressor`` per prompt and prefix, one process --
  on a few prompts, extrapolated to 1280.

    python benchmarks/bench_baselines.py                   # full size
    python benchmarks/bench_baselines.py --prompts 256     # extrapolate from 256 prompts
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from loopformer import baselines as B
from loopformer.tasks import build_task

FULL_PROMPTS = 1280
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _descendant_cpu(root: int) -> float:
    """CPU seconds (user + system) of the live descendants of ``root`` (joblib workers),
    from /proc; 0 where /proc is unavailable."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, frontier = 0.0, {root}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier}
        total += sum(cpu[p] for p in kids)
        frontier = kids
    return total


def cpu_seconds() -> float:
    """CPU time of this process and its worker processes: with other jobs on the machine,
    CPU time / cores estimates the wall time on an idle machine."""
    return time.process_time() + _descendant_cpu(os.getpid())


def timed_cpu(fn, *args):
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, cpu_seconds() - c0


def sample(task: str, prompts: int, points: int, dims: int, seed: int, **params):
    g = torch.Generator().manual_seed(seed)
    return build_task(task, dims, **params).sample(prompts, points, generator=g)


def bench_least_squares(args) -> None:
    xs, ys = sample("linear_regression", FULL_PROMPTS, args.ls_points, args.dims, args.seed)
    ls = B.LeastSquares()
    runs = [timed_cpu(ls, xs, ys)[1:] for _ in range(args.repeats)]
    wall, cpu = zip(*runs, strict=True)
    print(f"least_squares  {FULL_PROMPTS} x {args.ls_points} x d={args.dims}: "
          f"wall best {min(wall):.3f} s, median {np.median(wall):.3f} s; CPU median "
          f"{np.median(cpu):.3f} s; {args.repeats} runs, torch threads {torch.get_num_threads()}")


def naive_reference(xs: torch.Tensor, ys: torch.Tensor) -> float:
    """Garg et al.'s loops: fresh estimators per prompt and prefix, default settings."""
    import xgboost as xgb
    from sklearn.tree import DecisionTreeRegressor

    x, y = xs.numpy(), ys.numpy()
    t0 = time.perf_counter()
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            DecisionTreeRegressor(max_depth=4).fit(x[b, :k], y[b, :k]).predict(x[b, k:k + 1])
            xgb.XGBRegressor(n_jobs=1).fit(x[b, :k], y[b, :k]).predict(x[b, k:k + 1])
    return time.perf_counter() - t0


def bench_tree_suite(args) -> None:
    xs_full, ys_full = sample("decision_tree", FULL_PROMPTS, args.tree_points, args.dims,
                              args.seed, depth=4)
    xs, ys = xs_full[: args.prompts], ys_full[: args.prompts]
    # the decision-tree task's suite, as conf/task/decision_tree.yaml lists it
    suite = B.build_baselines("default", OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf" / "task" / "decision_tree.yaml").eval.suite),
        n_jobs=args.jobs)
    # start the worker processes once, outside the timings (reused by every later call)
    _, startup = timed(B.DecisionTree(4, n_jobs=args.jobs), xs[: 2 * args.jobs, :3],
                       ys[: 2 * args.jobs, :3])
    print(f"\ndecision-tree suite, {FULL_PROMPTS} prompts x {args.tree_points} points x "
          f"d={args.dims}, n_jobs={args.jobs} (worker start-up {startup:.1f} s, not counted)\n"
          f"  batched tensor baselines run on all {FULL_PROMPTS} prompts; the CPU-fitted ones "
          f"on {args.prompts}, scaled linearly")
    print(f"  {'baseline':28s} {'prompts':>7s} {'wall':>9s} {'CPU':>9s}   {FULL_PROMPTS} prompts")
    full = full_cpu = 0.0
    for baseline in suite:
        # per-(prompt, prefix) fits cost the same per prompt: time a subset, scale linearly
        subset = isinstance(baseline, B.CpuFitBaseline)
        bx, by = (xs, ys) if subset else (xs_full, ys_full)
        scale = FULL_PROMPTS / bx.shape[0]
        _, sec, cpu = timed_cpu(baseline, bx, by)
        full, full_cpu = full + sec * scale, full_cpu + cpu * scale
        print(f"  {baseline.name:28s} {bx.shape[0]:7d} {sec:8.2f}s {cpu:8.2f}s   -> wall "
              f"{sec * scale:7.1f} s")
    total, idle = full, full_cpu / args.jobs
    print(f"  {'total':28s} {'':7s} {'':9s} {full_cpu:8.1f}s   -> wall {total:7.1f} s = "
          f"{total / 60:.2f} min for {FULL_PROMPTS} prompts ({47 * 60 / total:.1f}x under 47 min)")
    print(f"  idle-machine estimate (CPU / {args.jobs} workers): {idle:.1f} s = "
          f"{idle / 60:.2f} min ({47 * 60 / idle:.1f}x under 47 min)")
    if args.reference_prompts:
        n = args.reference_prompts
        _, sec, cpu = timed_cpu(naive_reference, xs[:n], ys[:n])
        ref = sec * FULL_PROMPTS / n
        print(f"  naive per-prefix loop (tree + default xgboost, 1 process) on {n} prompts: "
              f"wall {sec:.1f} s, CPU {cpu:.1f} s -> wall {ref / 60:.1f} min for "
              f"{FULL_PROMPTS}, idle-machine {cpu * FULL_PROMPTS / n / 60:.1f} min; this "
              f"suite is {ref / full:.1f}x faster (wall, same conditions)")


def bench_lasso_suite(args) -> None:
    xs, ys = sample("sparse_linear_regression", args.lasso_prompts, args.ls_points, args.dims,
                    args.seed, sparsity=3)
    suite = [b for b in B.build_baselines("default", OmegaConf.to_container(OmegaConf.load(
        ROOT / "conf" / "task" / "sparse_linear_regression.yaml").eval.suite), n_jobs=args.jobs)
        if isinstance(b, B.Lasso)]
    scale = FULL_PROMPTS / args.lasso_prompts
    print(f"\nsparse-regression Lasso fits, {args.lasso_prompts} prompts x {args.ls_points} "
          f"points x d={args.dims}, n_jobs={args.jobs}, scaled to {FULL_PROMPTS} prompts")
    total = total_cpu = 0.0
    for baseline in suite:
        _, sec, cpu = timed_cpu(baseline, xs, ys)
        total, total_cpu = total + sec * scale, total_cpu + cpu * scale
        fits = getattr(baseline, "diagnostics", {})
        print(f"  {baseline.name:14s} wall {sec:6.2f} s, CPU {cpu:6.2f} s -> wall "
              f"{sec * scale:6.1f} s; {fits or 'no fit counts'}")
    print(f"  {'total':14s} -> wall {total:6.1f} s, CPU {total_cpu:6.1f} s for {FULL_PROMPTS} "
          f"prompts")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=FULL_PROMPTS,
                   help="prompts for the tree suite (extrapolated linearly to 1280)")
    p.add_argument("--dims", type=int, default=20)
    p.add_argument("--ls-points", type=int, default=41)
    p.add_argument("--tree-points", type=int, default=101)
    p.add_argument("--jobs", type=int, default=2, help="joblib workers for the CPU fits")
    p.add_argument("--repeats", type=int, default=5, help="least-squares timing runs")
    p.add_argument("--lasso-prompts", type=int, default=FULL_PROMPTS,
                   help="prompts for the Lasso fits (extrapolated linearly to 1280)")
    p.add_argument("--skip-lasso", action="store_true")
    p.add_argument("--reference-prompts", type=int, default=0,
                   help="also time the naive per-prefix loop on this many prompts")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default)")
    p.add_argument("--skip-tree", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()}")
    bench_least_squares(args)
    if not args.skip_lasso:
        bench_lasso_suite(args)
    if not args.skip_tree:
        bench_tree_suite(args)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
