"""What skipping settled prompts (``eval.settle_tol``) saves in long-loop evaluation, and what
it changes.

    python benchmarks/settle_cost.py RUN_DIR [SETTLE_TOL] [REPEATS] [LOOPS] [cli|model|standard]

``cli`` (default) times ``python -m loopformer.evaluate run=RUN_DIR extra_loops=[LOOPS]
ood=default`` without and with ``settle_tol=SETTLE_TOL`` (default 1e-5, 2 repeats, 20 x the
trained loops), interleaved so both see the same machine load, on a copy of the run
directory. ``model`` times the same evaluation in this process, on one thread, without its
baselines (the part the option acts on: the model at every loop count, on the standard
prompts and every shift), wall and CPU seconds; ``standard`` times ``model_errors`` alone on
the standard prompts at b, 5b and LOOPS, one thread. Each reports the largest change to any
normalised error the evaluation reports (every curve's mean and band at every position, the
loop curve, every shift's curves) and the share of the evaluation's prompts settled by each
loop (computed once, without skipping).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loopformer.data import generator  # noqa: E402
from loopformer.evaluate import evaluate as evaluate_in_process  # noqa: E402
from loopformer.evaluate import load_settings  # noqa: E402
from loopformer.models import SETTLE_PATIENCE, relative_change  # noqa: E402
from loopformer.scoring import load_model, model_errors  # noqa: E402


def evaluate(run: Path, loops: int, settle_tol: float | None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "loopformer.evaluate", f"run={run}", f"extra_loops=[{loops}]",
           "ood=default"] + ([f"settle_tol={settle_tol}"] if settle_tol is not None else [])
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start, json.loads((run / "eval" / "results.json").read_text())


def reported(r: dict, prefix: str = "") -> dict[str, list[float]]:
    """Every normalised error array the results hold, by name."""
    out = {}
    for name, c in r["curves"].items():
        for k in ("mean", "low", "high"):
            out[f"{prefix}{name}.{k}"] = c[k]
    if "loop_curve" in r:
        for k in ("mean", "low", "high"):
            out[f"{prefix}loop_curve.{k}"] = r["loop_curve"][k]
    for shift, s in r.get("ood", {}).items():
        out.update(reported(s, f"ood:{shift}:"))
    return out


def evaluate_model(run: Path, loops: int, settle_tol: float | None) -> tuple[float, dict]:
    """The evaluation without baselines, in this process: (wall s, CPU s) and its results."""
    spec = load_settings(run)
    ev = dataclasses.replace(spec.eval, baselines=[], extra_loops=(loops,), ood="default",
                             settle_tol=settle_tol, device="cpu")
    model = load_model(run, spec)
    start, cpu = time.perf_counter(), time.process_time()
    results = evaluate_in_process(model, spec, ev, "cpu")
    return (time.perf_counter() - start, time.process_time() - cpu), results


def evaluation_prompts(run: Path):
    """The run's settings and model, and the standard evaluation's prompts (on the CPU)."""
    spec = load_settings(run)
    shape, ev = spec.curriculum.final, spec.eval
    xs, ys = spec.function.sample(ev.n_prompts, shape.n_points, shape.n_dims,
                                  generator(torch.device("cpu"), ev.seed, 0))
    return spec, load_model(run, spec).eval(), xs, ys


def score_model(run: Path, loops: int, settle_tol: float | None) -> tuple[float, dict]:
    """``model_errors`` alone on the evaluation's prompts at b, 5b and ``loops``: (wall s,
    CPU s) and the per-prompt errors."""
    spec, model, xs, ys = evaluation_prompts(run)
    shape, ev = spec.curriculum.final, spec.eval
    b = shape.n_loops
    start, cpu = time.perf_counter(), time.process_time()
    errors = model_errors(model, xs, ys, spec.function.normalizer(shape.n_dims), spec,
                          [b, 5 * b, loops], ev.batch_size, settle_tol=settle_tol)
    return (time.perf_counter() - start, time.process_time() - cpu), errors


def error_change(a: dict, b: dict) -> str:
    """Per-prompt errors: the largest change of a mean per position, and of one prompt's."""
    mean = max(float((a[k].mean(0) - b[k].mean(0)).abs().max()) for k in a)
    one = max(float((a[k] - b[k]).abs().max()) for k in a)
    return f"largest change of a mean error per position {mean:.2e}, of one prompt's {one:.2e}"


def max_change(a: dict, b: dict) -> tuple[float, str]:
    ra, rb = reported(a), reported(b)
    return max((max(abs(x - y) for x, y in zip(ra[k], rb[k], strict=True)), k) for k in ra)


@torch.no_grad()
def settled_share(run: Path, loops: int, settle_tol: float) -> list[tuple[int, float]]:
    """The share of the evaluation's prompts settled by each loop: their relative state
    change below ``settle_tol`` for SETTLE_PATIENCE consecutive loops."""
    spec, model, xs, ys = evaluation_prompts(run)
    shape, ev = spec.curriculum.final, spec.eval
    first = torch.full((len(xs),), loops + 1)
    for i in range(0, len(xs), ev.batch_size):
        calm, prev = torch.zeros(len(xs[i:i + ev.batch_size]), dtype=torch.long), None
        for t, z, _ in model.iterate(xs[i:i + ev.batch_size], ys[i:i + ev.batch_size], loops):
            if prev is not None:
                calm = torch.where(relative_change(prev, z) < settle_tol, calm + 1, 0)
                new = (calm == SETTLE_PATIENCE) & (first[i:i + len(calm)] > loops)
                first[i:i + len(calm)][new] = t
            prev = z
    b = shape.n_loops
    marks = sorted({t for t in (b, 2 * b, 5 * b, 10 * b, 20 * b, loops) if t <= loops})
    return [(t, float((first <= t).float().mean())) for t in marks]


def main() -> None:
    run = Path(sys.argv[1])
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-5
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    loops = int(sys.argv[4]) if len(sys.argv) > 4 else 20 * load_settings(
        run).curriculum.final.n_loops
    how = sys.argv[5] if len(sys.argv) > 5 else "cli"
    if how != "cli":  # one thread: on a shared machine two threads mostly wait for each other
        torch.set_num_threads(1)
    times: dict[str, list] = {"full": [], "settle": []}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "analysis"))
        for _ in range(repeats):
            for mode, t in (("full", None), ("settle", tol)):
                run_one = {"cli": evaluate, "model": evaluate_model, "standard": score_model}
                seconds, results[mode] = run_one[how](copy, loops, t)
                times[mode].append(seconds)
                print(f"{mode}: {seconds} s", flush=True)
    wall = {m: [x if how == "cli" else x[0] for x in v] for m, v in times.items()}
    full, fast = statistics.median(wall["full"]), statistics.median(wall["settle"])
    what = "b, 5b and" if how == "standard" else "extra_loops=[...] ood=default with"
    print(f"{how}: {what} {loops} loops, settle_tol={tol:g}: seconds without "
          f"{times['full']}, with {times['settle']}; median wall ratio {full / fast:.2f}x")
    if how == "standard":
        print(error_change(results["full"], results["settle"]))
    else:
        change, where = max_change(results["full"], results["settle"])
        print(f"largest change to a reported normalised error: {change:.2e} ({where})")
    print("settled share by loop: " + ", ".join(
        f"{t}: {s:.1%}" for t, s in settled_share(run, loops, tol)))


if __name__ == "__main__":
    main()
