"""How fast a run trained, from its own ``metrics.csv`` (``time/steps_per_s``, logged by the
default callbacks at every logging step; evaluations and checkpoints included).

    python benchmarks/run_speed.py RUN_DIR

Prints steps/s for each curriculum stage (input dims, prompt points, loops) and overall.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loopformer.csvlog import read_metrics  # noqa: E402

KEYS = ("curriculum/n_dims", "curriculum/n_points", "curriculum/n_loops")


def speed_by_stage(rows: list[dict]) -> tuple[list[tuple], float]:
    """``[(stage, first step, last step, median steps/s)]`` and the overall steps/s (all
    intervals together: their steps over their seconds)."""
    timed = [r for r in rows if "time/steps_per_s" in r]
    if not timed:
        raise SystemExit("no time/steps_per_s in metrics.csv: the run reached fewer than two "
                         "logging steps (trainer.log_every_n_steps) or had no step_rate "
                         "callback (callbacks=default adds it)")
    stages: dict[tuple, list] = {}
    steps = seconds = 0.0
    prev = None
    for r in rows:
        if "time/steps_per_s" in r and prev is not None:
            n = r["step"] - prev
            steps, seconds = steps + n, seconds + n / r["time/steps_per_s"]
        if "curriculum/n_dims" in r:
            prev = r["step"]
        if "time/steps_per_s" in r:
            stage = tuple(int(r[k]) for k in KEYS if k in r)
            stages.setdefault(stage, []).append((int(r["step"]), r["time/steps_per_s"]))
    table = [(stage, v[0][0], v[-1][0], statistics.median(x for _, x in v))
             for stage, v in stages.items()]
    return table, steps / seconds if seconds else float("nan")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = Path(sys.argv[1]) / "metrics.csv"
    if not path.is_file():
        sys.exit(f"{path} does not exist")
    table, overall = speed_by_stage(read_metrics(path))
    print(f"{'dims, points, loops':<22}{'steps':>16}{'median steps/s':>16}")
    for stage, first, last, rate in table:
        print(f"{', '.join(map(str, stage)):<22}{f'{first}-{last}':>16}{rate:>16.1f}")
    print(f"overall: {overall:.1f} steps/s")


if __name__ == "__main__":
    main()
