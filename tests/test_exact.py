"""The exact tests of a study's confirmatory family against hand-computed cases."""

import math

import pytest

from loopformer.exact import (
    adjust,
    binomial_interval,
    fisher_floor,
    fisher_test,
    hodges_lehmann,
    mcnemar_test,
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
from loopformer.results.confirm import Outcome, family_p
from loopformer.study import Comparison


def test_holm_ties_and_the_step_down_stop():
    # sorted 0.001, 0.01, 0.04, 0.04 held to 0.05/4, /3, /2, /1: the third fails (0.04 > 0.025),
    # so the fourth is not rejected although 0.04 <= 0.05/1; the tied 0.04 share 2 x 0.04
    ps = [0.01, 0.04, 0.04, 0.001]
    assert adjust(ps, "holm") == pytest.approx([0.03, 0.08, 0.08, 0.004])
    assert [q <= 0.05 for q in adjust(ps, "holm")] == [True, False, False, True]
    # three tied at 0.0125: the first step holds all three to 0.05/3... and the running max
    # gives them one adjusted p, 3 x 0.0125, whatever their order
    assert adjust([0.0125, 0.0125, 0.0125], "holm") == pytest.approx([0.0375] * 3)
    assert adjust([0.02, 0.5, 0.02], "holm") == pytest.approx([0.06, 0.5, 0.06])
    assert thresholds([0.02, 0.5, 0.02], "holm", 0.05) == pytest.approx([0.05 / 3, 0.05, 0.05 / 3])
    assert adjust(ps, "bonferroni") == pytest.approx([0.04, 0.16, 0.16, 0.004])
    assert adjust([0.3, 0.6], "bonferroni") == [0.6, 1.0]
    assert adjust(ps, "none") == ps
    with pytest.raises(ValueError, match="correction='bh'"):
        adjust(ps, "bh")


def test_sign_flip_exact_p_for_five_pairs():
    # 32 sign assignments; all differences positive: only the observed one reaches T = 15
    assert sign_flip_test([1, 2, 3, 4, 5], "greater") == 1 / 32
    assert sign_flip_test([1, 2, 3, 4, 5]) == 1 / 16
    assert sign_flip_test([1, 2, 3, 4, 5], "less") == 1.0
    # one negative: T = 11 = 15 - 2 x 2; T* >= 11 when the flipped values sum to <= 2: {}, {1},
    # {2}: 3/32 one-sided, 6/32 two-sided
    assert sign_flip_test([1, -2, 3, 4, 5], "greater") == 3 / 32
    assert sign_flip_test([1, -2, 3, 4, 5]) == 6 / 32
    for d in ([0.3, -0.1, 0.2, 0.05, -0.4], [1, -2, 3, 4, 5]):
        assert (sign_flip_test(d) * 32).is_integer()
    # a zero difference counts under both signs: T* of (0, 1, 2) is +-1 +-2, |T*| >= 3 in 4 of 8
    assert sign_flip_test([0, 1, 2]) == 0.5
    assert sign_flip_test([1.5, 2.5, 3.5], "greater", shift=1.0) == 1 / 8


def test_floors():
    assert sign_flip_floor(5, "two-sided") == 1 / 16
    assert sign_flip_floor(5, "greater") == 1 / 32
    assert sign_flip_floor(10, "two-sided") == 2 / 1024
    assert rank_floor(3, 3, "two-sided") == pytest.approx(0.1)  # 2 / C(6, 3)
    assert rank_floor(5, 5, "two-sided") == pytest.approx(2 / 252)
    assert rank_floor(2, 3, "two-sided") == pytest.approx(0.2)
    assert fisher_floor(3, 3, "two-sided") == pytest.approx(0.1)
    assert fisher_floor(3, 3, "greater") == pytest.approx(0.05)
    # the floor is reached: full separation
    assert rank_test([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert sign_flip_test([0.1] * 5) == sign_flip_floor(5, "two-sided")


def test_exact_mcnemar():
    # 4 discordant pairs all for a: P(X >= 4) = 1/16 under Binomial(4, 1/2)
    assert mcnemar_test(4, 0, "greater") == 1 / 16
    assert mcnemar_test(4, 0) == 1 / 8
    assert mcnemar_test(0, 4, "greater") == 1.0
    # 5 of 6 for a: P(X >= 5) = (6 + 1) / 64
    assert mcnemar_test(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_test(0, 0) == 1.0
    # the sign-flip test of the 0/1 outcomes' differences is the same test (concordant = 0)
    d = [1, 1, 1, 1, 1, -1, 0, 0]
    assert sign_flip_test(d) == pytest.approx(mcnemar_test(5, 1))
    assert sign_flip_test(d, "less") == pytest.approx(mcnemar_test(5, 1, "less"))


def test_inverted_permutation_intervals_by_hand():
    # 6 pairs at 0.05: the shift is rejected only where 2 (1 + j) / 64 <= 0.05, j = 0 means
    # below it: the ends are the smallest and largest subset means, min and max of d
    assert sign_flip_interval([1, 2, 3, 4, 5, 6], "two-sided", 0.05) == (1.0, 6.0)
    assert sign_flip_test([1, 2, 3, 4, 5, 6], shift=0.999) <= 0.05 < \
        sign_flip_test([1, 2, 3, 4, 5, 6], shift=1.001)
    # 7 pairs: j >= 3 needed (2 x 4 / 128 > 0.05); the third smallest subset mean of 1..7 is 2
    # ({1} = 1, {1, 2} = 1.5, then {2} = 2)
    assert sign_flip_interval([1, 2, 3, 4, 5, 6, 7], "two-sided", 0.05) == (2.0, 6.0)
    # one-sided: (1 + j) / 128 > 0.05 needs j >= 6; the means run 1, 1.5, 2, 2, 2 ({2}, {1, 3},
    # {1, 2, 3}), then 7/3 ({1, 2, 4})
    assert sign_flip_interval([1, 2, 3, 4, 5, 6, 7], "greater", 0.05) == \
        pytest.approx((7 / 3, math.inf))
    # 5 pairs two-sided cannot reach 0.05: every shift is kept
    assert sign_flip_interval([1, 2, 3, 4, 5], "two-sided", 0.05) == (-math.inf, math.inf)
    # rank test, 4 vs 4: P(U <= 0, 1, 2) = 1, 2, 4 (/70); the 16 differences a - b run 7
    # (once), 8 (twice), ..., 13; at 0.1 the shift needs 2 differences below it and 2 above
    a, b = [10, 11, 12, 13], [0, 1, 2, 3]
    assert hodges_lehmann(a, b) == 10.0
    assert rank_interval(a, b, "two-sided", 0.1) == (8.0, 12.0)
    assert rank_interval(a, b, "two-sided", 0.05) == (7.0, 13.0)
    assert rank_test(a, b, shift=7.99) <= 0.1 < rank_test(a, b, shift=8.01)


def test_rate_intervals_invert_the_exact_tests():
    # Clopper-Pearson for 4 of 4 at 0.05: the lower end solves pi^4 = 0.025
    lo, hi = binomial_interval(4, 4, "two-sided", 0.05)
    assert lo == pytest.approx(0.025 ** 0.25, abs=1e-9) and hi == 1.0
    assert binomial_interval(0, 0, "two-sided", 0.05) == (0.0, 1.0)
    assert fisher_test(3, 3, 0, 3) == pytest.approx(0.1)
    assert fisher_test(3, 3, 0, 3, "greater") == pytest.approx(0.05)  # 1 / C(6, 3)
    assert fisher_test(2, 3, 1, 3, "less") == pytest.approx(19 / 20)


def test_tost_at_a_known_margin():
    d = [0.001, -0.002, 0.003, 0.0, -0.001]
    o = Outcome(d, [0.0] * 5, paired=True, rates=False)

    def tost(margin):
        return family_p(Comparison("x", "a", "b", "final_error", margin=margin), o)

    # +-0.02: every d + 0.02 > 0 and every d - 0.02 < 0: both one-sided p are 1/32
    assert tost(0.02) == 1 / 32
    # +-0.0025: d - 0.0025 has one positive value (0.0005) among |x| = .0015, .0045, .0005,
    # .0025, .0035; T* <= T = -0.0115 for all-negative and the observed signs: 2/32
    assert tost(0.0025) == 2 / 32
    assert sign_flip_test([x + 0.0025 for x in d], "greater") == 1 / 32


def test_exact_power_and_seeds_needed_by_hand():
    # differences +1 (3 of 4) or -1: with 10 pairs the one-sided sign-flip test at 0.05 rejects
    # iff 9 or 10 are positive (P = 11/1024 <= 0.05 < 56/1024), which happens with probability
    # 10 (3/4)^9 (1/4) + (3/4)^10 = 0.2440
    assert paired_power([1, 1, 1, -1], 10, "greater", 0.05, n_sims=4000) == \
        pytest.approx(0.2440, abs=0.03)
    assert paired_power([1, 1, 1, -1], 10, "less", 0.05, n_sims=500) == 0.0
    # all differences positive: 6 pairs give p = 2/64 = 0.031, within 0.05 and not 0.01
    assert paired_power([0.5, 1, 2], 6, "two-sided", 0.05) == 1.0
    assert paired_power([0.5, 1, 2], 6, "two-sided", 0.01) == 0.0
    # above 12 pairs the simulated tests draw 4095 random sign assignments: 14 positive
    # differences give p = 2 (1 + hits) / 4096 two-sided with about 1/4 hit expected (each draw
    # is all-positive with probability 2^-14): within 0.001 (the exact p is 2^-13)
    assert paired_power([0.5, 1, 2], 14, "two-sided", 0.001) == 1.0
    assert paired_power([1, -1], 14, "two-sided", 0.05) < 0.1  # no effect: about the level
    # the search: the first n whose floor is within the level and whose power is >= 0.8
    assert seeds_needed(lambda n: {2: 0.5, 3: 0.79}.get(n, 0.8), lambda n: 0.0, 0.05, 9) == 4
    assert seeds_needed(lambda n: 1.0, lambda n: 1 / n, 0.2, 9) == 5
    assert seeds_needed(lambda n: 0.79, lambda n: 0.0, 0.05, 9) is None
    # power 1 from the first n whose floor 2/2^n is within the level
    floor = lambda n: sign_flip_floor(n, "two-sided")  # noqa: E731
    at = lambda level: lambda n: paired_power([0.5, 1, 2], n, "two-sided", level)  # noqa: E731
    assert seeds_needed(at(0.05), floor, 0.05, 14) == 6  # 2/64 <= 0.05 < 2/32
    assert seeds_needed(at(0.05 / 11), floor, 0.05 / 11, 14) == 9  # 2/512 <= 0.0045 < 2/256
    # no effect: never
    assert seeds_needed(lambda n: paired_power([1, -1], n, "two-sided", 0.05), floor, 0.05,
                        10) is None
    # unpaired, separated: the first n vs n whose floor 2 / C(2n, n) is within 0.05 is 4
    rank_floor_at = lambda n: rank_floor(n, n, "two-sided")  # noqa: E731
    assert seeds_needed(lambda n: unpaired_power([1, 2, 3], [10, 11, 12], n, "two-sided", 0.05),
                        rank_floor_at, 0.05, 10) == 4
    assert seeds_needed(lambda n: unpaired_power([1, 1], [0, 0], n, "two-sided", 0.05,
                                                 rates=True),
                        lambda n: fisher_floor(n, n, "two-sided"), 0.05, 10) == 4
