"""The comparison rules against hand-computed cases."""

import math

import pytest

from loopformer.stats import (
    escape_step,
    fisher_exact,
    permutation_test,
)


def test_permutation_exact_by_hand():
    # 20 splits of 6 values into 3 + 3; only the observed one and its mirror reach |diff| = 3
    assert permutation_test([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    # {1,2,3,4} into 2 + 2: |diff| of the 6 splits is 2, 1, 0, 0, 1, 2; observed |2 - 3| = 1
    assert permutation_test([1, 3], [2, 4]) == pytest.approx(4 / 6)
    assert permutation_test([1, 2, 3], [1, 2, 3]) == 1.0
    # 4 vs 4 fully separated: 2 / C(8, 4) = 2 / 70
    assert permutation_test([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]) == pytest.approx(2 / 70)


def test_permutation_monte_carlo_matches_exact():
    a, b = [1.0, 2.5, 3.0, 4.2, 5.1, 6.0], [3.9, 5.2, 6.1, 7.3, 8.0, 9.4]
    exact = permutation_test(a, b)  # C(12, 6) = 924 splits
    mc = permutation_test(a, b, n_resamples=20000, max_exact=100)
    assert 0 < exact < 0.1
    assert mc == pytest.approx(exact, abs=0.01)
    assert permutation_test(a, b, n_resamples=2000, max_exact=100, seed=3) == \
        permutation_test(a, b, n_resamples=2000, max_exact=100, seed=3)


def test_fisher_exact_by_hand():
    # margins 3 escaped of 6: P(x) = C(3,x) C(3,3-x) / 20 = 1, 9, 9, 1 (/20)
    assert fisher_exact(3, 3, 0, 3) == pytest.approx(2 / 20)
    # margins 2 of 6: P(x) = 3, 9, 3 (/15); x = 2 and x = 0 are as likely
    assert fisher_exact(2, 3, 0, 3) == pytest.approx(6 / 15)
    assert fisher_exact(5, 5, 0, 5) == pytest.approx(2 / math.comb(10, 5))
    assert fisher_exact(2, 4, 2, 4) == 1.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        fisher_exact(4, 3, 0, 3)


def test_escape_step_from_hand_made_curves():
    steps = [500, 1000, 1500, 2000, 2500]
    assert escape_step(steps, [0.95, 0.9, 0.4, 0.1, 0.05], 0.5) == 1500
    assert escape_step(steps, [0.95, 0.45, 0.8, 0.3, 0.2], 0.5) == 2000  # dipped, came back
    assert escape_step(steps, [0.95, 0.3, 0.2, 0.1, 0.7], 0.5) is None  # fell back at the end
    assert escape_step(steps, [0.95, 0.9, 0.8, 0.8, 0.7], 0.5) is None
    assert escape_step(steps, [0.95, 0.9, 0.8, 0.8, 0.7], 0.75) == 2500
    with pytest.raises(ValueError):
        escape_step(steps, [0.9, 0.1], 0.5)


def test_trend_test_by_hand():
    from loopformer.stats import trend_test

    # three groups of one value, in order: rho = 1; of the 3! = 6 orders, 2 reach |rho| = 1
    assert trend_test([[1.0], [2.0], [3.0]]) == pytest.approx((1.0, 2 / 6))
    assert trend_test([[3.0], [2.0], [1.0]]) == pytest.approx((-1.0, 2 / 6))
    # two groups of two: group ranks tie at 1.5 and 3.5, rho = 4 / sqrt(5 * 4) = 0.894;
    # |rho| is as large in the 8 of the 24 orders that keep {1, 2} together
    assert trend_test([[1.0, 2.0], [3.0, 4.0]]) == pytest.approx((0.8 ** 0.5, 8 / 24))
    # ten values falling with the group: Monte Carlo, the smallest p it can give
    rho, p = trend_test([[9.0, 10.0], [7.0, 8.0], [5.0, 6.0], [3.0, 4.0], [1.0, 2.0]])
    # centred group ranks +-4, +-2, 0 (twice each), value ranks 10, 9, ..., 1: sum of products
    # -80, of squares 80 and 82.5
    assert rho == pytest.approx(-80 / (80 * 82.5) ** 0.5)
    assert p == pytest.approx(1 / 20001)
    with pytest.raises(ValueError, match="at least two groups"):
        trend_test([[1.0, 2.0], []])
