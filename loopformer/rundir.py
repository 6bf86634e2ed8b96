"""The layout of a run directory: every file a run writes or reads, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """``root/``: ``config.yaml`` (the resolved config), ``run.json`` (W&B id, the overrides of
    each launch), ``metrics.csv``, ``checkpoints/{last,step=N}.ckpt`` and ``eval/``."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def kept_ckpt(self, step: int | str) -> Path:
        return self.checkpoints / f"step={step}.ckpt"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.eval / "results.json"
