"""Error curves (normalised squared errors, bootstrap bands over prompts) and the rules that
compare variants over seeds (escape from the plateau, permutation and Fisher's exact tests)."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch


class Curve(NamedTuple):
    """A curve indexed by the number of in-context examples (or any other x)."""

    mean: list[float]
    low: list[float]
    high: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Curve:
        return cls(list(d["mean"]), list(d["low"]), list(d["high"]))


def bootstrap_band(errors: torch.Tensor, n_resamples: int = 1000, low: float = 5,
                   high: float = 95, seed: int = 0, mask: torch.Tensor | None = None) -> Curve:
    """Mean over prompts of ``errors`` (P, n) with a percentile bootstrap band.

    Prompts are resampled with replacement ``n_resamples`` times from an explicit generator
    (same seed, same band). Each resample is a row of counts, so all resampled means are
    one (R, P) @ (P, n) product instead of an (R, P, n) gather. With ``mask`` (P, n) bool,
    each position's mean is over the prompts where it is True (nan where none is).
    """
    if errors.dim() != 2 or errors.shape[0] < 1:
        raise ValueError(f"expected errors of shape (P, n) with P >= 1; got {tuple(errors.shape)}")
    if not 0 <= low <= high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100; got {low}, {high}")
    e = errors.detach().double()
    n_prompts = e.shape[0]
    gen = torch.Generator(device=e.device).manual_seed(seed)
    idx = torch.randint(0, n_prompts, (n_resamples, n_prompts), generator=gen, device=e.device)
    counts = torch.zeros(n_resamples, n_prompts, dtype=e.dtype, device=e.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=e.dtype))  # (R, P)
    if mask is None:
        means = counts @ e / n_prompts  # (R, n)
        mean = e.mean(0)
    else:
        m = mask.to(e.device, e.dtype)
        e = torch.where(m.bool(), e, 0)  # masked entries count for nothing
        means = counts @ e / (counts @ m)  # (R, n)
        mean = e.sum(0) / m.sum(0)
    q = torch.tensor([low / 100, high / 100], dtype=e.dtype, device=e.device)
    band = torch.quantile(means, q, dim=0)  # (2, n)
    return Curve(mean.tolist(), band[0].tolist(), band[1].tolist())


# --- comparisons over seeds -----------------------------------------------------------------
#
# A study trains each variant on a few seeds. Whether a run leaves the in-context plateau is
# decided by its seed (and by the build), so a variant is summed up by its escape rate, the step
# of its escape and its final error; two variants are compared by exact tests over seeds, never
# by whether min..max bands overlap (a study's confirmatory family: loopformer.exact and
# loopformer.results.confirm; the tests here give exploratory raw p-values).

ESCAPE_THRESHOLD = 0.5
"""Default threshold on the fixed test set's error at the last position (the most in-context
examples) below which a run has left the plateau.

On the plateau a model has not learned to use the prompt's examples. For linear regression
with ``w ~ N(0, I)`` the best predictor that ignores them is the zero predictor (``E[y | x] =
0``), which scores 1 in normalised error; the runs of this project that stayed on the plateau
sat between 0.70 and 0.96 on the test set at the last position, up to 1.02 in the final
evaluation (``docs/results/seed_variants_cpu.md``); the runs that left it fell to 0.02-0.15
within a few hundred steps. 0.5 lies in that gap, clear of both, and below the averaging
estimator (``mean(y_i x_i)``: (d+1)/k = 0.6 at d = 5, k = 10), which uses the examples
without their covariance: a run below 0.5 does better than that. Other tasks have other
plateaus: pass a threshold of their own."""


def permutation_test(a, b, n_resamples: int = 10000, max_exact: int = 100_000,
                     seed: int = 0) -> float:
    """Two-sided p-value of the difference of means of ``a`` and ``b`` (values per seed).

    The statistic is ``|mean(a) - mean(b)|``; the p-value is the share of the splits of the
    pooled values into groups of ``len(a)`` and ``len(b)`` whose statistic is at least the
    observed one. Exact (every split) up to ``max_exact`` splits; above, Monte Carlo with
    ``n_resamples`` random splits from a seeded generator, p = (1 + hits) / (1 + resamples).
    """
    x = torch.tensor([*a, *b], dtype=torch.float64)
    n_a, n = len(a), len(a) + len(b)
    if n_a == 0 or n_a == n:
        raise ValueError(f"permutation_test needs values on both sides; got {len(a)} and "
                         f"{len(b)}")
    total = x.sum()
    observed = abs(x[:n_a].mean() - x[n_a:].mean())
    tol = 1e-9 * max(1.0, float(x.abs().max()))  # equal statistics up to rounding count as hits
    if math.comb(n, n_a) <= max_exact:
        idx = torch.tensor(list(itertools.combinations(range(n), n_a)))  # (splits, n_a)
        sums = x[idx].sum(1)
        stats = (sums / n_a - (total - sums) / (n - n_a)).abs()
        return float((stats >= observed - tol).double().mean())
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(n_resamples, n, generator=g).argsort(1)[:, :n_a]  # (R, n_a)
    sums = x[perm].sum(1)
    stats = (sums / n_a - (total - sums) / (n - n_a)).abs()
    return (1 + int((stats >= observed - tol).sum())) / (1 + n_resamples)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dimension, ties given their average rank."""
    order = x.argsort(dim=-1)
    ranks = torch.empty_like(x)
    ranks.scatter_(-1, order, torch.arange(1, x.shape[-1] + 1, dtype=x.dtype).expand_as(x))
    eq = x.unsqueeze(-1) == x.unsqueeze(-2)  # (..., n, n): tied pairs
    return (eq * ranks.unsqueeze(-2)).sum(-1) / eq.sum(-1)


def trend_test(groups, n_resamples: int = 20000, max_exact: int = 40320,
               seed: int = 0) -> tuple[float, float]:
    """A monotone trend over ordered groups (e.g. the values per seed at b = 4, 8, 12, 20):
    Spearman's rho between the group's position and the value over every value, and its
    two-sided permutation p-value, the share of reassignments of the values to the groups'
    slots with ``|rho|`` at least the observed one. Exact (every permutation) up to
    ``max_exact`` permutations (8 values); above, Monte Carlo from a seeded generator, p = (1 +
    hits) / (1 + resamples)."""
    pos = torch.tensor([float(i) for i, g in enumerate(groups) for _ in g], dtype=torch.float64)
    y = torch.tensor([float(v) for g in groups for v in g], dtype=torch.float64)
    if sum(len(g) > 0 for g in groups) < 2:
        raise ValueError("trend_test needs values in at least two groups")
    rx = _ranks(pos)
    rx = rx - rx.mean()

    def rho(ry: torch.Tensor) -> torch.Tensor:
        ry = ry - ry.mean(-1, keepdim=True)
        den = (rx.square().sum() * ry.square().sum(-1)).sqrt()
        return (ry * rx).sum(-1) / den

    ry = _ranks(y)
    observed = float(rho(ry))
    n = len(y)
    exact = math.factorial(n) <= max_exact
    if exact:
        perms = torch.tensor(list(itertools.permutations(range(n))))
    else:
        g = torch.Generator().manual_seed(seed)
        perms = torch.rand(n_resamples, n, generator=g).argsort(1)
    hits = int((rho(ry[perms]).abs() >= abs(observed) - 1e-12).sum())
    return observed, hits / len(perms) if exact else (1 + hits) / (1 + n_resamples)


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test for ``k_a`` of ``n_a`` against ``k_b`` of
    ``n_b`` (e.g. seeds that escaped): the probability, under the hypergeometric law of the
    table with these margins, of every table no more likely than the observed one."""
    if not (0 <= k_a <= n_a and 0 <= k_b <= n_b) or n_a == 0 or n_b == 0:
        raise ValueError(f"fisher_exact needs 0 <= k <= n and n >= 1; got {k_a}/{n_a}, "
                         f"{k_b}/{n_b}")
    k, n = k_a + k_b, n_a + n_b
    # tables counted, not weighed: integer counts keep ties between equally likely tables exact
    count = {x: math.comb(n_a, x) * math.comb(n_b, k - x)
             for x in range(max(0, k - n_b), min(n_a, k) + 1)}
    return sum(c for c in count.values() if c <= count[k_a]) / math.comb(n, k)


ACCURACY_ESCAPE = 0.9
"""Default threshold on a classification task's fixed-test-set accuracy at the last position
above which a run has escaped (it stays above it to the end). For p-hop over 4 symbols chance
is 0.25 and the short-range shortcut (the previous occurrence two tokens back) plateaus near
0.74 (``tests/test_tokens.py``); 0.9 lies above both and below the issue's 0.99 target."""


def escape_step(steps, errors, threshold: float = ESCAPE_THRESHOLD) -> int | None:
    """The first test step from which the error stays below ``threshold`` to the last test
    point, or None if the last point is not below it.

    No interpolation: the escape happened after the previous test step and by this one, so
    the resolution is the test interval. A run that dips below the threshold and comes back
    counts from its last fall below it."""
    found = None
    for step, err in zip(steps, errors, strict=True):
        found = (found if found is not None else int(step)) if err < threshold else None
    return found
