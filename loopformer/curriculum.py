"""Curriculum schedules: pure functions of the global step, so resume needs no state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from loopformer.errors import ConfigError


@dataclass
class Schedule:
    """``min(end, start + (step // interval) * inc)``."""

    start: int
    end: int
    inc: int = 0
    interval: int = 1

    def at(self, step: int) -> int:
        if self.inc == 0 or self.end == self.start:
            return self.start
        return min(self.end, self.start + (step // self.interval) * self.inc)

    def validate(self, key: str) -> None:
        """Raise a ConfigError naming ``key`` (e.g. ``curriculum.points``) if ill-formed."""
        if self.end < self.start:
            raise ConfigError(f"{key}.end={self.end} is below {key}.start={self.start}; "
                              f"use {key}.end >= {self.start}")
        if self.end > self.start and self.inc <= 0:
            raise ConfigError(f"{key}.inc={self.inc} must be > 0 when {key}.end > {key}.start")
        if self.interval <= 0:
            raise ConfigError(f"{key}.interval={self.interval} must be > 0")
        if self.start < 1:
            raise ConfigError(f"{key}.start={self.start} must be >= 1")


@dataclass(frozen=True)
class CurriculumState:
    n_dims: int
    n_points: int  # points per prompt; tokens per prompt for a token task
    n_loops: int
    n_hops: int | None = None  # a p-hop task's hop count; None without a hops schedule


@dataclass
class Curriculum:
    """Active dims, points per prompt (a token task's length), loop count and, for a task
    with a hop count (p_hop), hops as schedules of the global step."""

    dims: Schedule
    points: Schedule
    loops: Schedule = field(default_factory=lambda: Schedule(1, 1))
    window: int = 1
    # each training step runs b + u loops, u uniform in [-loops_jitter, loops_jitter] around the
    # scheduled b (at least 1); the test set and the evaluation keep b. 0: every step runs b.
    # Like the loop schedule, it does nothing for the transformer and the weight-tied model
    loops_jitter: int = 0
    # the hop count of a task that has one (conf/task/p_hop.yaml); null: none
    hops: Schedule | None = None

    def at(self, step: int) -> CurriculumState:
        return CurriculumState(self.dims.at(step), self.points.at(step), self.loops.at(step),
                               None if self.hops is None else self.hops.at(step))

    def train_loops(self, step: int, seed: int) -> int:
        """The loop count training step ``step`` runs: the scheduled b, moved by
        ``loops_jitter``. A pure function of ``(seed, step)``, so a resumed run repeats the
        draws of an uninterrupted one."""
        b = self.loops.at(step)
        if not self.loops_jitter:
            return b
        u = random.Random(seed * 1_000_003 + step).randint(-self.loops_jitter, self.loops_jitter)
        return max(1, b + u)

    @property
    def final(self) -> CurriculumState:
        return CurriculumState(self.dims.end, self.points.end, self.loops.end,
                               None if self.hops is None else self.hops.end)

    def validate(self) -> None:
        for name in ("dims", "points", "loops", "hops"):
            if getattr(self, name) is not None:
                getattr(self, name).validate(f"curriculum.{name}")
        if self.window < 1:
            raise ConfigError(f"curriculum.window={self.window} must be >= 1")
        if self.loops_jitter < 0:
            raise ConfigError(f"curriculum.loops_jitter={self.loops_jitter} must be >= 0")
        if self.loops_jitter >= self.loops.end:
            # at the trained b every draw b + u then runs >= 1 loop, so the clamp to 1 in
            # train_loops never skews it; only steps at a smaller scheduled b are clamped
            raise ConfigError(f"curriculum.loops_jitter={self.loops_jitter} must be below the "
                              f"trained loop count curriculum.loops.end={self.loops.end}; use "
                              f"0..{self.loops.end - 1}")
        if self.window > self.loops.end:
            raise ConfigError(f"curriculum.window={self.window} exceeds the maximum loop count "
                              f"curriculum.loops.end={self.loops.end}; use 1..{self.loops.end}")
