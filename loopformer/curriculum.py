"""Curriculum schedules: pure functions of the global step, so resume needs no state."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

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


RULES = ("fixed", "linear", "log2")
BACKPROP = ("window", "all")  # curriculum.backprop
DIALS = ("hops", "points")


@dataclass
class LoopsRule:
    """The depth dial: the loop count b as a function of the task's dial p (``of``: ``hops``,
    a p-hop task's hop count, or ``points``, a token task's length such as parity's).
    ``fixed``: b is the loops schedule's alone; ``linear``: b(p) = a * p + c; ``log2``:
    b(p) = a * ceil(log2 p) + c. The loops schedule bounds the rule: a step at dial p runs
    ``min(loops.at(step), b(p))`` loops, so the schedule can still ramp the count up, and its
    end must be b at the dial's end (what the test set and the evaluation run)."""

    kind: str = "fixed"  # fixed | linear | log2
    of: str = "hops"  # the dial p: hops | points (a token task's length)
    a: int = 1  # the slope: loops per hop (linear) or per doubling of p (log2)
    c: int = 0  # the offset

    def __call__(self, p: int) -> int:
        if self.kind == "linear":
            return self.a * p + self.c
        if self.kind == "log2":
            return self.a * math.ceil(math.log2(p)) + self.c
        raise ValueError("a fixed rule has no b(p); the loops schedule gives the count")

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    def describe(self) -> str:
        if self.fixed:
            return "b fixed by the loops schedule"
        term = "p" if self.kind == "linear" else "ceil(log2 p)"
        slope = term if self.a == 1 else f"{self.a} {term}"
        offset = "" if self.c == 0 else f" {'+' if self.c > 0 else '-'} {abs(self.c)}"
        return f"b(p) = {slope}{offset}, p = {self.of}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "of": self.of, "a": self.a, "c": self.c,
                "formula": self.describe()}


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
    # the iterations a looped model's training step backpropagates through: "window" (the
    # loss's window only; the state entering it is a constant, as in Yang et al.) or "all"
    # (every iteration, with the loss still on the window's; with window 1, the loss on the
    # output and gradients through the whole loop, as in Saunshi et al.). The transformer and
    # the weight-tied model always backpropagate through every layer or application
    backprop: str = "window"
    # each training step runs b + u loops, u uniform in [-loops_jitter, loops_jitter] around the
    # scheduled b (at least 1); the test set and the evaluation keep b. 0: every step runs b.
    # Like the loop schedule, it does nothing for the transformer and the weight-tied model
    loops_jitter: int = 0
    # the hop count of a task that has one (conf/task/p_hop.yaml); null: none
    hops: Schedule | None = None
    # true: each training step draws its hop count uniformly from 1..the scheduled hops (a
    # pure function of seed and step), so training covers every hop count <= P to the end;
    # the test set and the evaluation keep the scheduled hops. false: every step trains there
    hops_mix: bool = False
    # the loop count as a function of the hop count or length (the depth dial); fixed: none
    loops_rule: LoopsRule = field(default_factory=LoopsRule)

    def loops_at(self, step: int, n_hops: int | None, n_points: int) -> int:
        """The loop count at ``step`` for prompts of ``n_hops`` hops and ``n_points`` tokens:
        the schedule's, bounded by the rule's b(p)."""
        b = self.loops.at(step)
        if self.loops_rule.fixed:
            return b
        return min(b, self.loops_rule(n_hops if self.loops_rule.of == "hops" else n_points))

    def at(self, step: int) -> CurriculumState:
        hops = None if self.hops is None else self.hops.at(step)
        points = self.points.at(step)
        return CurriculumState(self.dims.at(step), points, self.loops_at(step, hops, points),
                               hops)

    def train_state(self, step: int, seed: int) -> CurriculumState:
        """The shape training step ``step`` draws its prompts at and the loop count it runs:
        ``at(step)``, its hop count drawn from 1..the scheduled one with ``hops_mix`` (and the
        loops following it by the rule), its loops moved by ``loops_jitter``. A pure function
        of ``(seed, step)``, so a resumed run repeats the draws of an uninterrupted one, and
        the data module and the curriculum callback always agree."""
        state = self.at(step)
        if self.hops_mix and state.n_hops is not None:
            p = random.Random(f"hops {seed} {step}").randint(1, state.n_hops)
            state = replace(state, n_hops=p, n_loops=self.loops_at(step, p, state.n_points))
        if not self.loops_jitter:
            return state
        u = random.Random(seed * 1_000_003 + step).randint(-self.loops_jitter, self.loops_jitter)
        return replace(state, n_loops=max(1, state.n_loops + u))

    def train_loops(self, step: int, seed: int) -> int:
        """The loop count training step ``step`` runs (:meth:`train_state`)."""
        return self.train_state(step, seed).n_loops

    @property
    def final(self) -> CurriculumState:
        return CurriculumState(self.dims.end, self.points.end, self.loops.end,
                               None if self.hops is None else self.hops.end)

    def dial_values(self) -> list[int]:
        """The values the loops rule's dial takes in training (hops: 1..P with ``hops_mix``)."""
        if self.loops_rule.of == "hops":
            if self.hops is None:
                return []
            if self.hops_mix:
                return list(range(1, self.hops.end + 1))
            return sorted({self.hops.at(s) for s in _change_steps(self.hops)})
        return sorted({self.points.at(s) for s in _change_steps(self.points)})

    def validate(self) -> None:
        for name in ("dims", "points", "loops", "hops"):
            if getattr(self, name) is not None:
                getattr(self, name).validate(f"curriculum.{name}")
        if self.window < 1:
            raise ConfigError(f"curriculum.window={self.window} must be >= 1")
        if self.backprop not in BACKPROP:
            raise ConfigError(f"curriculum.backprop={self.backprop!r} is unknown; choose one of "
                              f"{', '.join(BACKPROP)}")
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
        if self.hops_mix and self.hops is None:
            raise ConfigError("curriculum.hops_mix=true draws hop counts up to the scheduled "
                              "one, but curriculum.hops is null; schedule hops or set "
                              "curriculum.hops_mix=false")
        self.validate_rule()

    def validate_rule(self) -> None:
        """A loops rule that does not fit, or that would change nothing, is refused."""
        r, key = self.loops_rule, "curriculum.loops_rule"
        if r.kind not in RULES:
            raise ConfigError(f"{key}.kind={r.kind!r} is unknown; choose one of "
                              f"{', '.join(RULES)}")
        if r.of not in DIALS:
            raise ConfigError(f"{key}.of={r.of!r} is unknown; choose one of {', '.join(DIALS)}")
        if r.fixed:
            if (r.a, r.c) != (1, 0):
                raise ConfigError(f"{key}.a={r.a} and {key}.c={r.c} have no effect with "
                                  f"{key}.kind=fixed; choose kind=linear or log2, or drop them")
            return
        if r.a < 1:
            raise ConfigError(f"{key}.a={r.a} must be >= 1 (a = 0 makes b constant: use "
                              f"{key}.kind=fixed and the loops schedule)")
        values = self.dial_values()
        if not values:
            raise ConfigError(f"{key}.of=hops but curriculum.hops is null; schedule hops or use "
                              f"{key}.of=points")
        if r(values[0]) < 1:
            raise ConfigError(f"{key} ({r.describe()}) gives b = {r(values[0])} loops at "
                              f"{r.of} = {values[0]}; raise {key}.c to at least "
                              f"{r.c + 1 - r(values[0])}")
        if r(values[0]) == r(values[-1]):
            raise ConfigError(f"{key} ({r.describe()}) gives the same b = {r(values[-1])} for "
                              f"every {r.of} trained ({values[0]}..{values[-1]}): it has no "
                              f"effect; widen curriculum.{r.of}"
                              + (" or set curriculum.hops_mix=true" if r.of == "hops" else "")
                              + f", or use {key}.kind=fixed")
        if self.loops.end != r(values[-1]):
            raise ConfigError(f"curriculum.loops.end={self.loops.end} differs from the rule's "
                              f"b = {r(values[-1])} at {r.of} = {values[-1]} ({r.describe()}); "
                              f"set curriculum.loops.end={r(values[-1])}")


def _change_steps(s: Schedule) -> list[int]:
    """Step 0 and the steps at which schedule ``s`` changes value."""
    if not s.inc or s.end <= s.start:
        return [0]
    return [k * s.interval for k in range(-(-(s.end - s.start) // s.inc) + 1)]
