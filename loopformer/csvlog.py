"""``RUN_DIR/metrics.csv``: every logged metric, one row per logged step."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (empty cells are left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class CSVMetricsLogger(Logger):
    """Merges metrics logged for the same step into one row. On resume (``resume_step``),
    rows after that step (from an interrupted run) are dropped, so the file of a resumed
    run equals that of an uninterrupted one."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict] = {}
        if resume_step is not None and self.path.exists():
            for row in read_metrics(self.path):
                step = int(row.pop("step"))
                if step <= resume_step:
                    self.rows[step] = row

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    @rank_zero_experiment
    def experiment(self):
        return self

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the resolved config is RUN_DIR/config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = self.rows.setdefault(int(step or 0), {})
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch"})

    @rank_zero_only
    def save(self) -> None:
        keys = sorted({k for row in self.rows.values() for k in row})
        tmp = self.path.with_suffix(".csv.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *keys])
            writer.writeheader()
            for step in sorted(self.rows):
                writer.writerow({"step": step, **self.rows[step]})
        os.replace(tmp, self.path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
