"""A study's confirmatory family, decided from its data: each comparison its YAML stated before
the runs were read (``study.comparisons``, carried in the data by the export) is tested over all
trained seeds by its exact test, the family's p-values are corrected (Holm by default), and each
row gets its floor (the smallest p its design can reach), an effect with the exact interval of
its own test, and a verdict (:func:`evaluate`; rendered by ``table:confirmatory``)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import NamedTuple

from loopformer.errors import ConfigError, typed
from loopformer.exact import (
    adjust,
    best_threshold,
    binomial_interval,
    fisher_floor,
    fisher_test,
    hodges_lehmann,
    mcnemar_test,
    odds_ratio_interval,
    paired_power,
    rank_floor,
    rank_interval,
    rank_test,
    seeds_needed,
    sign_flip_floor,
    sign_flip_interval,
    sign_flip_test,
    thresholds,
    unpaired_power,
)
from loopformer.study import Comparison, check_comparisons

MAX_SEEDS = 30  # the most seeds per variant the seeds-needed search tries
OPPOSITE = {"greater": "less", "less": "greater"}
DESIGN_SWAP = {"paired": "unpaired", "unpaired": "paired"}


class Family(NamedTuple):
    comparisons: list[Comparison]
    correction: str
    alpha: float


class Outcome(NamedTuple):
    """One comparison's values per trained seed: a's and b's (paired: in the same seed order)."""

    a: list[float]
    b: list[float]
    paired: bool
    rates: bool

    @property
    def differences(self) -> list[float]:
        return [x - y for x, y in zip(self.a, self.b, strict=True)]


class Row(NamedTuple):
    """A row of the confirmatory table."""

    comparison: Comparison
    n_a: int
    n_b: int
    floor: float
    other_floor: float | None  # the other design's floor (paired <-> unpaired), where it fits
    effect: str
    p: float
    adjusted: float
    threshold: float  # the level the row's raw p is held to (Holm: alpha / (m - rank))
    verdict: str


def family(data: dict) -> Family:
    """The comparisons the data carries, checked against its variants."""
    if not data.get("comparisons"):
        raise ConfigError(f"the data of {data['study']} states no comparisons; list them under "
                          f"comparisons: in conf/study/{data['study']}.yaml and export again")
    comparisons = [typed(Comparison, d, key=f"comparisons[{i}]")
                   for i, d in enumerate(data["comparisons"])]
    check_comparisons(comparisons, data["variants"])
    return Family(comparisons, data["correction"], data["alpha"])


ERROR_MEASURES = ("final_error", "test_error")
ACCURACY_MEASURES = ("final_accuracy", "test_accuracy", "dial_accuracy")


def check_metric(data: dict, c: Comparison) -> None:
    """An error measure asked of accuracy data, or an accuracy measure of error data, is
    refused naming the comparison."""
    accuracy = data.get("metric") == "accuracy"
    if accuracy and c.measure in ERROR_MEASURES:
        raise ConfigError(f"comparisons[{c.id}].measure={c.measure}: {data['study']} scores "
                          f"accuracy; use final_accuracy, test_accuracy or dial_accuracy")
    if not accuracy and c.measure in ACCURACY_MEASURES:
        raise ConfigError(f"comparisons[{c.id}].measure={c.measure}: {data['study']} scores "
                          f"error; use final_error, test_error or test_area")


def _dial_index(run: dict, c: Comparison) -> int:
    dial = run.get("dial")
    if not dial:
        raise ConfigError(f"comparisons[{c.id}].measure=dial_accuracy: {run['variant']} seed "
                          f"{run['seed']} has no dial block (eval.dial.factor)")
    v = c.k if c.k is not None else dial["values"][-1]
    if v not in dial["values"]:
        raise ConfigError(f"comparisons[{c.id}].k={v} is not a scored {dial['of']} value "
                          f"({dial['values'][0]}..{dial['values'][-1]})")
    return dial["values"].index(v)


def _k(data: dict, c: Comparison) -> int:
    last = data["n_points"] - 1
    if c.measure == "dial_accuracy":
        return last  # k names the dial value (_dial_index)
    if c.measure in ("final_error", "final_accuracy"):
        k = c.k if c.k is not None else max(data["examples"], default=last)
        if k > last:
            raise ConfigError(f"comparisons[{c.id}].k={k} is beyond the prompt's {last} "
                              f"examples")
        return k
    if c.k not in (None, last):
        raise ConfigError(f"comparisons[{c.id}].k={c.k}: the fixed test set's curve is recorded "
                          f"at the last position only, k = {last}")
    return last


def _test_value(run: dict, c: Comparison, step: int) -> float:
    steps = run["test"]["step"]
    errors = run["test"]["accuracy_last" if "accuracy_last" in run["test"] else "error_last"]
    if step not in steps:
        raise ConfigError(f"comparisons[{c.id}].step={step} is not a test step of {run['variant']} "
                          f"seed {run['seed']} (steps {steps[0]}..{steps[-1]})")
    if c.measure in ("test_error", "test_accuracy"):
        return errors[steps.index(step)]
    n = steps.index(step)
    area = sum((steps[i + 1] - steps[i]) * (errors[i] + errors[i + 1]) / 2 for i in range(n))
    return area / (steps[n] - steps[0]) if n else errors[0]


def _last_step(runs: list[dict]) -> int:
    return min(r["test"]["step"][-1] for r in runs)


def value(run: dict, c: Comparison, data: dict, step: int | None) -> float:
    """The run's measure: 1/0 escaped; the evaluation's error (accuracy) at k; the fixed test
    set's error (accuracy) at ``step``; the area under its curve from the first test step to
    ``step`` (trapezoids) divided by that span of steps, i.e. the curve's mean height; or the
    accuracy at the last position at dial value k (default the largest scored), at the loops
    rule's b(p) where the run has a rule, else at its fixed, trained depth."""
    check_metric(data, c)
    if c.measure == "escape_rate":
        return float(run["escape_step"] is not None)
    if c.measure == "final_error":
        return run["error"]["trained"][_k(data, c)]
    if c.measure == "final_accuracy":
        return run["accuracy"]["trained"][_k(data, c)]
    if c.measure == "dial_accuracy":
        dial = run["dial"] if run.get("dial") else {}
        i = _dial_index(run, c)
        return (dial["at_rule"] if dial["at_rule"] is not None else dial["at_fixed"])[i]
    _k(data, c)
    return _test_value(run, c, step)


def outcome(data: dict, c: Comparison) -> Outcome:
    """The comparison's values over every trained seed of a and of b."""
    runs = {v: sorted((r for r in data["runs"] if r["variant"] == v), key=lambda r: r["seed"])
            for v in (c.a, c.b)}
    for v, rs in runs.items():
        if not rs:
            raise ConfigError(f"comparisons[{c.id}]: no runs of {v} in the data")
    step = c.step if c.step is not None or c.measure != "test_area" else _last_step(
        runs[c.a] + runs[c.b])
    seeds = [[r["seed"] for r in runs[v]] for v in (c.a, c.b)]
    if c.design == "paired" and seeds[0] != seeds[1]:
        raise ConfigError(f"comparisons[{c.id}].design=paired needs the same seeds: {c.a} has "
                          f"{seeds[0]}, {c.b} has {seeds[1]}; use design: unpaired")
    a, b = ([value(r, c, data, step) for r in runs[v]] for v in (c.a, c.b))
    return Outcome(a, b, c.design == "paired", c.measure == "escape_rate")


def _discordant(o: Outcome) -> tuple[int, int]:
    d = o.differences
    return sum(x > 0 for x in d), sum(x < 0 for x in d)


def family_p(c: Comparison, o: Outcome, side: str | None = None) -> float:
    """The exact p of the comparison's test, of ``side`` (default its own; TOST: the larger of
    the two one-sided p at -margin and +margin)."""
    side = side or c.side
    if o.rates and o.paired:
        return mcnemar_test(*_discordant(o), side)
    if o.rates:
        return fisher_test(int(sum(o.a)), len(o.a), int(sum(o.b)), len(o.b), side)
    if c.margin is not None:
        return max(_shifted_p(o, "greater", -c.margin), _shifted_p(o, "less", c.margin))
    return _shifted_p(o, side, 0.0)


def _shifted_p(o: Outcome, side: str, shift: float) -> float:
    if o.paired:
        return sign_flip_test(o.differences, side, shift)
    return rank_test(o.a, o.b, side, shift)


def floor(c: Comparison, o: Outcome, n: int | None = None) -> float:
    """The smallest p the row's design can reach, whatever the data (with n seeds per variant
    if given)."""
    side = "greater" if c.margin is not None else c.side
    n_a, n_b = (n, n) if n else (len(o.a), len(o.b))
    if o.paired:
        return sign_flip_floor(n_a, side)
    return fisher_floor(n_a, n_b, side) if o.rates else rank_floor(n_a, n_b, side)


def other_floor(c: Comparison, o: Outcome) -> float | None:
    """The floor of the same comparison in the other design (paired needs as many seeds of a
    as of b), so that the choice of design is visible."""
    if not o.paired and len(o.a) != len(o.b):
        return None
    return floor(dataclasses.replace(c, design=DESIGN_SWAP[c.design]),
                 o._replace(paired=not o.paired))


def effect(c: Comparison, o: Outcome, level: float) -> str:
    """The estimate with the interval of the row's own exact test at ``level`` (TOST rows: the
    two-sided interval at 2 ``level``, whose inclusion in +-margin is the TOST)."""
    side, at = ("two-sided", 2 * level) if c.margin is not None else (c.side, level)
    if o.rates:
        counts = f"{int(sum(o.a))}/{len(o.a)} vs {int(sum(o.b))}/{len(o.b)}"
        if o.paired:
            x, y = _discordant(o)
            lo, hi = binomial_interval(x, x + y, side, at)
            share = f"{x / (x + y):.2f}" if x + y else "-"
            return f"{counts}; discordant {x}:{y}, share {share} [{lo:.2f}, {hi:.2f}]"
        lo, hi = odds_ratio_interval(int(sum(o.a)), len(o.a), int(sum(o.b)), len(o.b), side, at)
        return f"{counts}; odds ratio [{lo:.3g}, {hi:.3g}]"
    if o.paired:
        lo, hi = sign_flip_interval(o.differences, side, at)
        return f"mean {statistics.fmean(o.differences):+.4f} [{lo:+.4f}, {hi:+.4f}]"
    lo, hi = rank_interval(o.a, o.b, side, at)
    return f"HL {hodges_lehmann(o.a, o.b):+.4f} [{lo:+.4f}, {hi:+.4f}]"


def needed(c: Comparison, o: Outcome, level: float) -> str:
    """Seeds per variant for power 0.8 at ``level`` under the observed effect (simulated
    studies resampling the observed values), or ``more than N``."""
    if o.paired:
        d = o.differences
        n = seeds_needed(lambda n: paired_power(d, n, c.side, level, c.margin),
                         lambda n: floor(c, o, n), level, MAX_SEEDS)
    else:
        n = seeds_needed(lambda n: unpaired_power(o.a, o.b, n, c.side, level, c.margin,
                                                  o.rates), lambda n: floor(c, o, n), level,
                         MAX_SEEDS)
    return str(n) if n is not None else f"more than {MAX_SEEDS}"


def _direction(c: Comparison, o: Outcome, side: str) -> str:
    if side == "two-sided":
        est = statistics.fmean(o.differences) if o.paired else (
            statistics.fmean(o.a) - statistics.fmean(o.b) if o.rates
            else hodges_lehmann(o.a, o.b))
        side = "greater" if est > 0 else "less"
    return f"{c.a} {'>' if side == 'greater' else '<'} {c.b}"


def verdict(c: Comparison, o: Outcome, fam: Family, adjusted: float, threshold: float) -> str:
    """holds / does not hold / comparable / not resolved / cannot be resolved (see the table's
    rule)."""
    m = len(fam.comparisons)
    seeds = f"{len(o.a)} vs {len(o.b)} seeds"
    best = best_threshold(m, fam.correction, fam.alpha)
    if floor(c, o) > best:
        return (f"cannot be resolved with {seeds} (floor {floor(c, o):.3g} > threshold "
                f"{best:.3g}); seeds needed: {needed(c, o, threshold)}")
    if adjusted <= fam.alpha:
        return (f"comparable (TOST, margin {c.margin:g})" if c.margin is not None
                else f"holds: {_direction(c, o, c.side)}")
    if c.side in OPPOSITE and family_p(c, o, OPPOSITE[c.side]) <= fam.alpha / m:
        return f"does not hold: {_direction(c, o, OPPOSITE[c.side])}"
    return f"not resolved with {seeds} (seeds needed: {needed(c, o, threshold)})"


def evaluate(data: dict) -> list[Row]:
    """The rows of the study's confirmatory family, in the YAML's order."""
    fam = family(data)
    outcomes = [outcome(data, c) for c in fam.comparisons]
    ps = [family_p(c, o) for c, o in zip(fam.comparisons, outcomes, strict=True)]
    adjusted = adjust(ps, fam.correction)
    levels = thresholds(ps, fam.correction, fam.alpha)
    return [Row(c, len(o.a), len(o.b), floor(c, o), other_floor(c, o), effect(c, o, t), p, q, t,
                verdict(c, o, fam, q, t))
            for c, o, p, q, t in zip(fam.comparisons, outcomes, ps, adjusted, levels,
                                     strict=True)]
