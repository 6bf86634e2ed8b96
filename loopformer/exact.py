"""Exact tests over seeds for a study's pre-registered comparisons: the paired sign-flip test,
the unpaired Wilcoxon-Mann-Whitney rank test, exact McNemar and Fisher tests for escape rates,
their floors (the smallest p a design can reach), the intervals obtained by inverting them,
equivalence by two one-sided tests (TOST), Holm's and Bonferroni's corrections, and the seeds
a design needs by simulated exact power.

Sides: ``greater`` is the alternative a > b (the measure of a larger than that of b, or the
per-seed difference a - b above the shift), ``less`` is a < b, and ``two-sided`` either; a
two-sided p is ``min(1, 2 min(p_greater, p_less))``. A test rejects at ``level`` when p <= level.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from loopformer.stats import fisher_exact

SIDES = ("two-sided", "greater", "less")
CORRECTIONS = ("holm", "bonferroni", "none")
MAX_PAIRS = 16  # the sign-flip test enumerates all 2^n sign assignments
POWER = 0.8  # the power at which seeds are counted as enough


class Interval(NamedTuple):
    """The shifts (or odds, or shares) that the row's exact test does not reject."""

    low: float
    high: float


def sided(p_greater: float, p_less: float, side: str) -> float:
    """The p-value for ``side`` from the two one-sided ones."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not one of {SIDES}")
    if side == "greater":
        return p_greater
    if side == "less":
        return p_less
    return min(1.0, 2 * min(p_greater, p_less))


def _sided_batch(p_greater: torch.Tensor, p_less: torch.Tensor, side: str) -> torch.Tensor:
    """:func:`sided` for tensors of p-values."""
    if side == "greater":
        return p_greater
    if side == "less":
        return p_less
    sided(1.0, 1.0, side)  # refuses an unknown side
    return (2 * torch.minimum(p_greater, p_less)).clamp(max=1.0)


def _tol(x: torch.Tensor) -> float:
    return 1e-9 * max(1.0, float(x.abs().max())) if x.numel() else 1e-9


# --- paired: the sign-flip test on per-seed differences -------------------------------------

def _signs(n: int) -> torch.Tensor:
    """Every assignment of signs to n values: (2^n, n) of +-1."""
    if n > MAX_PAIRS:
        raise ValueError(f"the exact sign-flip test enumerates 2^n assignments; n = {n} is "
                         f"above its {MAX_PAIRS} pairs")
    bits = (torch.arange(2**n)[:, None] >> torch.arange(n)) & 1
    return (1 - 2 * bits).double()


def sign_flip_test(d: Sequence[float], side: str = "two-sided", shift: float = 0.0) -> float:
    """Exact sign-flip (Fisher-Pitman) test that the per-seed differences ``d`` are symmetric
    about ``shift``: the statistic is T = sum(d_i - shift); all 2^n sign assignments of the
    ``d_i - shift`` are equally likely, p_greater is the share with T* >= T, p_less with
    T* <= T (a zero difference counts under both signs). Its p is a multiple of 1/2^n."""
    x = torch.tensor(list(d), dtype=torch.float64) - shift
    if x.numel() == 0:
        raise ValueError("sign_flip_test needs at least one pair")
    t = _signs(len(x)) @ x  # (2^n,)
    obs, tol = float(x.sum()), _tol(x)
    return sided(float((t >= obs - tol).double().mean()),
                 float((t <= obs + tol).double().mean()), side)


def sign_flip_floor(n: int, side: str) -> float:
    """The smallest p of the sign-flip test (and of exact McNemar) with n pairs: 1/2^n one-sided,
    2/2^n two-sided (5 pairs: 1/16)."""
    return min(1.0, (2 if side == "two-sided" else 1) / 2**n)


def _step_interval(breaks: torch.Tensor, p_greater: list[float], p_less: list[float],
                   side: str, level: float) -> Interval:
    """The shifts a step test does not reject at ``level``: between the sorted ``breaks``, with
    j of them below the shift, the one-sided p-values are ``p_greater[j]`` and ``p_less[j]``
    (j = 0..len(breaks)); the closure of the accepted shifts."""
    kept = [j for j in range(len(breaks) + 1) if sided(p_greater[j], p_less[j], side) > level]
    if not kept:  # cannot happen for a level below 1: the middle shift has p = 1
        raise ValueError(f"every shift is rejected at level {level}")
    low = -math.inf if kept[0] == 0 else float(breaks[kept[0] - 1])
    high = math.inf if kept[-1] == len(breaks) else float(breaks[kept[-1]])
    return Interval(low, high)


def sign_flip_interval(d: Sequence[float], side: str, level: float) -> Interval:
    """The shifts s whose sign-flip test of ``d - s`` (of ``side``) has p > ``level``. With j of
    the 2^n - 1 means of nonempty subsets of d below s, p_greater = (1 + j) / 2^n and p_less =
    (1 + 2^n - 1 - j) / 2^n (flipping the subset A moves T by -2 sum_A (d_i - s)), so the ends
    are subset means (Hartigan's exact interval for the mean)."""
    x = torch.tensor(list(d), dtype=torch.float64)
    n = len(x)
    member = (1 - _signs(n)[1:]) / 2  # (2^n - 1, n): the nonempty subsets
    means = (member @ x / member.sum(1)).sort().values
    total = 2**n
    return _step_interval(means, [(1 + j) / total for j in range(total)],
                          [(total - j) / total for j in range(total)], side, level)


# --- unpaired: the Wilcoxon-Mann-Whitney rank test -------------------------------------------

def _subset_sum_counts(values: list[int], k: int) -> torch.Tensor:
    """counts[s]: the number of k-element subsets of ``values`` (non-negative integers) whose
    sum is s (dynamic programming over the values)."""
    total = sum(values)
    counts = torch.zeros(k + 1, total + 1, dtype=torch.int64)
    counts[0, 0] = 1
    for v in values:
        shifted = torch.zeros_like(counts)
        shifted[1:, v:] = counts[:-1, : total + 1 - v]
        counts = counts + shifted
    return counts[k]


def _midranks2(x: torch.Tensor) -> list[int]:
    """Twice the ranks 1..N of ``x``, ties given their average rank (integers)."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    eq = x[:, None] == x[None, :]
    return [int(round(2 * float(r))) for r in (eq * ranks[None, :]).sum(1) / eq.sum(1)]


def rank_test(a: Sequence[float], b: Sequence[float], side: str = "two-sided",
              shift: float = 0.0) -> float:
    """Exact Wilcoxon-Mann-Whitney test of ``a - shift`` against ``b``: the statistic is the
    rank sum W of a in the pooled values (ties at their average rank); every split of the
    pooled ranks into groups of len(a) and len(b) is equally likely, and p_greater is the
    share of splits with W* >= W (counted exactly by dynamic programming)."""
    if not a or not b:
        raise ValueError(f"rank_test needs values on both sides; got {len(a)} and {len(b)}")
    x = torch.tensor([*(v - shift for v in a), *b], dtype=torch.float64)
    r2 = _midranks2(x)
    counts = _subset_sum_counts(r2, len(a))
    w = sum(r2[: len(a)])
    total = float(counts.sum())
    return sided(float(counts[w:].sum()) / total, float(counts[: w + 1].sum()) / total, side)


def rank_floor(n_a: int, n_b: int, side: str) -> float:
    """The smallest p of the exact rank test of n_a vs n_b: 1 / C(n_a + n_b, n_a) one-sided,
    twice that two-sided (3 vs 3: 0.1)."""
    return min(1.0, (2 if side == "two-sided" else 1) / math.comb(n_a + n_b, n_a))


def hodges_lehmann(a: Sequence[float], b: Sequence[float]) -> float:
    """The Hodges-Lehmann shift of a over b: the median of the differences a_i - b_j."""
    return statistics.median(x - y for x in a for y in b)


def rank_interval(a: Sequence[float], b: Sequence[float], side: str, level: float) -> Interval:
    """The shifts s whose rank test of ``a - s`` against b (of ``side``) has p > ``level``. With
    j of the n_a n_b differences a_i - b_j below s, the Mann-Whitney count of a above b is
    U = n_a n_b - j; its null law (no ties) gives the one-sided p-values, so the ends are
    differences a_i - b_j (the exact interval of the Hodges-Lehmann shift)."""
    n_a, n_b = len(a), len(b)
    breaks = torch.tensor(sorted(x - y for x in a for y in b), dtype=torch.float64)
    # W = U + n_a (n_a + 1) / 2 over doubled ranks: index 2W
    counts = _subset_sum_counts([2 * r for r in range(1, n_a + n_b + 1)], n_a)
    base = n_a * (n_a + 1)
    law = counts[base::2].double() / float(counts.sum())  # P(U = u), u = 0..n_a n_b
    cdf = law.cumsum(0)
    m = n_a * n_b
    p_less = [float(cdf[m - j]) for j in range(m + 1)]
    p_greater = [float(1 - cdf[m - j - 1]) if m - j > 0 else 1.0 for j in range(m + 1)]
    return _step_interval(breaks, p_greater, p_less, side, level)


# --- escape rates: exact McNemar (paired) and Fisher (unpaired) -----------------------------

def _binom_tail_ge(x: int, n: int, pi: float) -> float:
    return sum(math.comb(n, i) * pi**i * (1 - pi) ** (n - i) for i in range(x, n + 1))


def mcnemar_test(x: int, y: int, side: str = "two-sided") -> float:
    """Exact McNemar test: of the x + y discordant pairs, x where a escaped and b did not;
    under the null x ~ Binomial(x + y, 1/2), p_greater = P(X >= x), p_less = P(X <= x)."""
    n = x + y
    if n == 0:
        return 1.0
    return sided(sum(math.comb(n, i) for i in range(x, n + 1)) / 2**n,
                 sum(math.comb(n, i) for i in range(x + 1)) / 2**n, side)


def _bisect(f: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The root of the increasing ``f(t) = target`` on [low, high] by bisection."""
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) < target else (low, mid)
    return (low + high) / 2


def _inverted(up: Callable[[float], float], down: Callable[[float], float], side: str,
              level: float, low: float, high: float, at_low: bool, at_high: bool,
              ) -> tuple[float, float]:
    """Ends of an exact interval for a parameter t in [low, high]: ``up(t)`` = P(X >= x; t)
    increases in t, ``down(t)`` = P(X <= x; t) decreases; each tail is held at ``level`` (at
    level / 2 two-sided). ``at_low``/``at_high``: x is the smallest/largest possible value."""
    tail = level / 2 if side == "two-sided" else level
    lo = low if at_low or side == "less" else _bisect(up, tail, low, high)
    hi = high if at_high or side == "greater" else _bisect(lambda t: -down(t), -tail, low, high)
    return lo, hi


def binomial_interval(x: int, n: int, side: str, level: float) -> Interval:
    """Clopper-Pearson: the shares pi of discordant pairs in a's favour that the exact binomial
    test of x of n does not reject at ``level``."""
    if n == 0:
        return Interval(0.0, 1.0)
    return Interval(*_inverted(lambda p: _binom_tail_ge(x, n, p),
                               lambda p: 1 - _binom_tail_ge(x + 1, n, p), side, level, 0.0,
                               1.0, x == 0, x == n))


def _hypergeometric(k_a: int, n_a: int, k_b: int, n_b: int) -> dict[int, int]:
    """Tables with the observed margins: a's count x -> C(n_a, x) C(n_b, k - x)."""
    k = k_a + k_b
    return {x: math.comb(n_a, x) * math.comb(n_b, k - x)
            for x in range(max(0, k - n_b), min(n_a, k) + 1)}


def fisher_test(k_a: int, n_a: int, k_b: int, n_b: int, side: str = "two-sided") -> float:
    """Fisher's exact test of k_a of n_a against k_b of n_b: one-sided, p_greater = P(X >= k_a)
    (p_less = P(X <= k_a)) under the hypergeometric law of the tables with these margins;
    two-sided, the probability of every table no more likely than the observed one
    (:func:`loopformer.stats.fisher_exact`)."""
    if side == "two-sided":
        return fisher_exact(k_a, n_a, k_b, n_b)
    count = _hypergeometric(k_a, n_a, k_b, n_b)
    tail = [c for x, c in count.items() if (x >= k_a if side == "greater" else x <= k_a)]
    return sided(sum(tail) / sum(count.values()), 1.0, "greater")


def fisher_floor(n_a: int, n_b: int, side: str) -> float:
    """The smallest p of Fisher's test of n_a vs n_b over every possible outcome (3 vs 3
    two-sided: 0.1)."""
    return min(fisher_test(x, n_a, y, n_b, side) for x in range(n_a + 1) for y in range(n_b + 1))


def odds_ratio_interval(k_a: int, n_a: int, k_b: int, n_b: int, side: str,
                        level: float) -> Interval:
    """The conditional odds ratios psi that Fisher's one-sided tests under the noncentral
    hypergeometric law (weights C(n_a, x) C(n_b, k - x) psi^x) do not reject at ``level``."""
    count = _hypergeometric(k_a, n_a, k_b, n_b)

    def tail(log_psi: float, keep: Callable[[int], bool]) -> float:
        w = {x: math.log(c) + x * log_psi for x, c in count.items()}
        top = max(w.values())
        return (sum(math.exp(v - top) for x, v in w.items() if keep(x))
                / sum(math.exp(v - top) for v in w.values()))

    lo, hi = _inverted(lambda t: tail(t, lambda x: x >= k_a),
                       lambda t: tail(t, lambda x: x <= k_a), side, level, -40.0, 40.0,
                       k_a == min(count), k_a == max(count))
    return Interval(0.0 if lo <= -40 else math.exp(lo), math.inf if hi >= 40 else math.exp(hi))


# --- the family: Holm's step-down method, Bonferroni, none ----------------------------------

def adjust(ps: Sequence[float], correction: str) -> list[float]:
    """Adjusted p-values of a family (a hypothesis is rejected at alpha when its adjusted p <=
    alpha). ``holm``: with the p sorted ascending, the i-th (from 0) becomes the largest
    min(1, (m - j) p_(j)) over j <= i, so once one is not rejected no later one is (the
    step-down stop) and tied p get one adjusted p; ``bonferroni``: min(1, m p); ``none``: p."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r} is not one of {CORRECTIONS}")
    m = len(ps)
    if correction == "none":
        return list(ps)
    if correction == "bonferroni":
        return [min(1.0, m * p) for p in ps]
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def thresholds(ps: Sequence[float], correction: str, alpha: float) -> list[float]:
    """The level each raw p is held to: Holm's alpha / (m - rank) (tied p share the first
    rank of their tie), Bonferroni's alpha / m, or alpha."""
    m = len(ps)
    if correction == "none":
        return [alpha] * m
    if correction == "bonferroni":
        return [alpha / m] * m
    return [alpha / (m - sum(q < p for q in ps)) for p in ps]


def best_threshold(m: int, correction: str, alpha: float) -> float:
    """The largest level a row of a family of m can be held to, before the data: alpha for
    Holm (the last step) and none, alpha / m for Bonferroni."""
    return alpha / m if correction == "bonferroni" else alpha


# --- seeds needed: simulated exact power under the observed effect --------------------------

def _resample(values: Sequence[float], n: int, n_sims: int, g: torch.Generator) -> torch.Tensor:
    x = torch.tensor(list(values), dtype=torch.float64)
    return x[torch.randint(0, len(x), (n_sims, n), generator=g)]  # (R, n)


EXACT_FLIPS = 12  # pairs up to which the power's sign-flip tests enumerate every assignment
RANDOM_FLIPS = 4095  # above: random assignments from the power's generator


def _sign_flip_batch(x: torch.Tensor, side: str, shift: float,
                     g: torch.Generator) -> torch.Tensor:
    """The sign-flip p of each row of ``x`` (R, n), as :func:`sign_flip_test` up to
    ``EXACT_FLIPS`` pairs; above, from ``RANDOM_FLIPS`` random sign assignments besides the
    observed one, p = (1 + hits) / (1 + RANDOM_FLIPS)."""
    x = x - shift
    n, tol = x.shape[1], _tol(x)
    exact = n <= EXACT_FLIPS
    signs = _signs(n) if exact else (
        1 - 2 * torch.randint(0, 2, (RANDOM_FLIPS, n), generator=g)).double()
    out = []
    for chunk in x.split(64):
        t, obs = chunk @ signs.T, chunk.sum(1, keepdim=True)  # (r, flips), (r, 1)
        hits_g, hits_l = (t >= obs - tol).double().sum(1), (t <= obs + tol).double().sum(1)
        if exact:
            pg, pl = hits_g / len(signs), hits_l / len(signs)
        else:
            pg, pl = (1 + hits_g) / (1 + RANDOM_FLIPS), (1 + hits_l) / (1 + RANDOM_FLIPS)
        out.append(_sided_batch(pg, pl, side))
    return torch.cat(out)


def paired_power(d: Sequence[float], n: int, side: str, level: float,
                 margin: float | None = None, n_sims: int = 200, seed: int = 0) -> float:
    """The share of ``n_sims`` studies of n pairs, each drawing its per-seed differences with
    replacement from the observed ``d`` (a seeded generator), whose sign-flip test (TOST within
    +-``margin`` if given; exact up to ``EXACT_FLIPS`` pairs, from random assignments above)
    rejects at ``level``. Escape rates use the differences of the
    0/1 outcomes, for which the sign-flip test is exact McNemar."""
    g = torch.Generator().manual_seed(seed)
    x = _resample(d, n, n_sims, g)
    if margin is None:
        p = _sign_flip_batch(x, side, 0.0, g)
    else:
        p = torch.maximum(_sign_flip_batch(x, "greater", -margin, g),
                          _sign_flip_batch(x, "less", margin, g))
    return float((p <= level).double().mean())


def _rank_batch(a: torch.Tensor, b: torch.Tensor, side: str, g: torch.Generator) -> torch.Tensor:
    """The rank test's p for each row of ``a`` (R, n_a) against ``b`` (R, n_b), ties broken at
    random (the ranks then follow the null law without ties exactly)."""
    x = torch.cat([a, b], 1)
    r, n = x.shape
    noise = torch.rand(r, n, generator=g).argsort(1)
    order = noise.gather(1, x.gather(1, noise).argsort(dim=1, stable=True))
    ranks = torch.empty_like(x).scatter_(1, order, torch.arange(1, n + 1).double().expand(r, n))
    counts = _subset_sum_counts(list(range(1, n + 1)), a.shape[1]).double()
    cdf, total = counts.cumsum(0), counts.sum()
    w = ranks[:, : a.shape[1]].sum(1).long()
    pg = 1 - torch.where(w > 0, cdf[(w - 1).clamp(min=0)], torch.zeros(r, dtype=torch.float64)
                         ) / total
    pl = cdf[w] / total
    return _sided_batch(pg, pl, side)


def unpaired_power(a: Sequence[float], b: Sequence[float], n: int, side: str, level: float,
                   margin: float | None = None, rates: bool = False, n_sims: int = 200,
                   seed: int = 0) -> float:
    """The share of ``n_sims`` studies of n vs n seeds, each drawing a's and b's values with
    replacement from the observed ones (a seeded generator), whose exact test rejects at
    ``level``: Fisher's for 0/1 outcomes (``rates``), else the rank test (TOST within
    +-``margin`` if given)."""
    g = torch.Generator().manual_seed(seed)
    xa, xb = _resample(a, n, n_sims, g), _resample(b, n, n_sims, g)
    if rates:
        cache: dict[tuple[int, int], float] = {}
        ks = zip(xa.sum(1).long().tolist(), xb.sum(1).long().tolist(), strict=True)
        p = torch.tensor([cache[k] if k in cache else
                          cache.setdefault(k, fisher_test(k[0], n, k[1], n, side)) for k in ks])
    elif margin is None:
        p = _rank_batch(xa, xb, side, g)
    else:
        p = torch.maximum(_rank_batch(xa + margin, xb, "greater", g),
                          _rank_batch(xa - margin, xb, "less", g))
    return float((p <= level).double().mean())


def seeds_needed(power_at: Callable[[int], float], floor_at: Callable[[int], float],
                 level: float, n_max: int, power: float = POWER) -> int | None:
    """The fewest seeds per variant (pairs, for a paired design) from 2 to ``n_max`` whose
    design can reach ``level`` (its floor is not above it) and whose power there is at least
    ``power``; None if none up to ``n_max``."""
    for n in range(2, n_max + 1):
        if floor_at(n) <= level and power_at(n) >= power:
            return n
    return None
