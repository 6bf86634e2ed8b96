"""The confirmatory table of a hand-made study's data, every figure computed by hand, and the
study YAML's comparisons refused before any run when they do not fit."""

import re

import pytest

from loopformer.errors import ConfigError
from loopformer.results.findings import HEADER, confirmatory_rows, findings_errors, supported
from loopformer.results.pages import render
from loopformer.study import Study, load_study

SEEDS = range(1, 8)
A = {s: 0.09 + 0.01 * s for s in SEEDS}  # 0.10 .. 0.16
B = {s: A[s] + 0.01 * s for s in SEEDS}  # a - b = -0.01 s: all negative, mean -0.04
C = {s: B[s] + 0.001 * (-1) ** s for s in SEEDS}  # b - c = +-0.001
D = {1: 0.9, 2: 0.95}  # two seeds, above every seed of a
ESCAPED = {"a": set(SEEDS), "b": {1, 2, 3, 4}, "c": set(), "d": {1, 2}}


def _run(variant: str, seed: int, final: float) -> dict:
    return {"variant": variant, "seed": seed, "error": {"trained": [1.0] * 10 + [final]},
            "escape_step": 500 if seed in ESCAPED[variant] else None,
            "test": {"step": [500, 1000], "error_last": [0.9, final]}}


COMPARISONS = [
    {"id": "C1", "a": "a", "b": "b", "measure": "final_error", "side": "less",
     "claim": "a below b"},
    {"id": "C2", "a": "a", "b": "c", "measure": "escape_rate", "side": "greater",
     "claim": "a escapes more often"},
    {"id": "C3", "a": "b", "b": "c", "measure": "final_error", "margin": 0.5,
     "claim": "b comparable to c"},
    {"id": "C4", "a": "a", "b": "b", "measure": "final_error", "side": "greater",
     "claim": "a above b"},
    {"id": "C5", "a": "d", "b": "a", "measure": "final_error", "design": "unpaired",
     "claim": "d differs from a"},
    {"id": "C6", "a": "b", "b": "c", "measure": "escape_rate", "claim": "b escapes differently"},
]


@pytest.fixture
def data() -> dict:
    runs = [_run(v, s, x) for v, values in (("a", A), ("b", B), ("c", C), ("d", D))
            for s, x in values.items()]
    return {"study": "hand", "variants": ["a", "b", "c", "d"], "n_points": 11,
            "examples": [10], "runs": runs, "comparisons": COMPARISONS, "correction": "holm",
            "alpha": 0.05}


# By hand: 7 pairs. C1, C2, C3 (TOST: both one-sided p) and C4's opposite side reach the
# one-sided floor 1/128 = 0.00781; C5 (2 vs 7, separated) the rank test's floor 2 / C(9, 2) =
# 0.0556; C6 (4 discordant pairs, all for b) 2/16 = 0.125. Holm over six: the three tied at
# 1/128 share 6/128 = 0.0469 (rejected), C5 3 x 0.0556 = 0.167, C6 2 x 0.125 = 0.25, C4 1.
# Intervals at each row's Holm threshold t (ties share the first rank): C1 one-sided, t = 0.05/6:
# (1 + 126)/128 > t keeps all but the largest subset mean, -0.01; C2 Clopper-Pearson pi^7 = t:
# 0.50; C3 at 2t: [min, max] of b - c; C4 t = 0.05: (1 + j)/128 > 0.05 from the 6th smallest
# subset mean, -0.01 x 17/3; C5 t = 0.05/3 is below the floor: every shift kept; C6 t = 0.05/2
# two-sided: pi^4 = 0.0125, 0.33. Seeds needed for C5 at t: separated values reject from the
# first n vs n whose floor 2 / C(2n, n) is within 0.0167: 5. The unpaired floors beside the
# paired ones: 1 / C(14, 7) = 0.000291 one-sided, twice that two-sided (C5: 2 vs 7 seeds cannot
# be paired).
ROWS = [
    "| C1 | a below b | a vs b | error at k=10 | paired, a < b | 7 vs 7 | 0.00781 (unpaired: "
    "0.000291) | "
    "mean -0.0400 [-inf, -0.0100] | 0.00781 | 0.0469 | holds: a < b |",
    "| C2 | a escapes more often | a vs c | escape rate | paired, a > b | 7 vs 7 | 0.00781 "
    "(unpaired: 0.000291) | "
    "7/7 vs 0/7; discordant 7:0, share 1.00 [0.50, 1.00] | 0.00781 | 0.0469 | holds: a > c |",
    "| C3 | b comparable to c | b vs c | error at k=10 | paired, TOST +-0.5 | 7 vs 7 | 0.00781 "
    "(unpaired: 0.000291) | "
    "mean +0.0001 [-0.0010, +0.0010] | 0.00781 | 0.0469 | comparable (TOST, margin 0.5) |",
    "| C4 | a above b | a vs b | error at k=10 | paired, a > b | 7 vs 7 | 0.00781 (unpaired: "
    "0.000291) | "
    "mean -0.0400 [-0.0567, +inf] | 1 | 1 | does not hold: a < b |",
    "| C5 | d differs from a | d vs a | error at k=10 | unpaired, two-sided | 2 vs 7 | 0.0556 | "
    "HL +0.7950 [-inf, +inf] | 0.0556 | 0.167 | cannot be resolved with 2 vs 7 seeds (floor "
    "0.0556 > threshold 0.05); seeds needed: 5 |",
]
C6 = re.compile(r"\| C6 \| b escapes differently \| b vs c \| escape rate \| paired, two-sided \| "
                r"7 vs 7 \| 0\.0156 \(unpaired: 0\.000583\) \| 4/7 vs 0/7; discordant 4:0, "
                r"share 1\.00 \[0\.33, 1\.00\] "
                r"\| 0\.125 \| 0\.25 \| not resolved with 7 vs 7 seeds \(seeds needed: "
                r"(\d+|more than 30)\) \|")


def _rows(table: str) -> list[str]:
    lines = table.splitlines()
    rows = lines[lines.index("|---|---|---|---|---|---|---|---|---|---|---|") + 1:]
    assert lines[lines.index(HEADER) + 2:] == rows == confirmatory_rows(f"text\n{table}\ntext")
    return rows


def test_confirmatory_table_by_hand(data):
    table = render("confirmatory", {"data": "hand"}, data)
    rows = _rows(table)
    assert rows[:5] == ROWS
    assert C6.fullmatch(rows[5]), rows[5]
    assert "Correction: holm at alpha = 0.05" in table
    assert all(supported(r) for r in rows)


def test_a_verdict_its_adjusted_p_does_not_support_is_caught(data):
    rows = _rows(render("confirmatory", {"data": "hand"}, data))
    assert not supported(rows[0].replace("| 0.0469 | holds", "| 0.0625 | holds"))
    assert not supported(rows[5].replace("| 0.25 |", "| 0.04 |"))


def test_verdicts_follow_the_adjusted_p(data):
    # C1 and C2 two-sided reach 2/128 = 0.0156 <= 0.05, but Holm over four holds the smaller to
    # 0.05/4: 4 x 0.0156 = 0.0625, not rejected, and the step-down stops there. C6 one-sided
    # (b escapes more): 1/16, and its opposite side 1: neither holds nor does not hold
    two = [{**COMPARISONS[0], "side": "two-sided"}, {**COMPARISONS[1], "side": "two-sided"},
           COMPARISONS[3], {**COMPARISONS[5], "side": "greater"}]
    rows = _rows(render("confirmatory", {"data": "hand"}, {**data, "comparisons": two}))
    assert [r.split(" | ")[8:10] for r in rows] == [
        ["0.0156", "0.0625"], ["0.0156", "0.0625"], ["1", "1"], ["0.0625", "0.125"]]
    verdicts = [r.split(" | ")[10] for r in rows]
    assert verdicts[0].startswith("not resolved with 7 vs 7 seeds")
    assert verdicts[1].startswith("not resolved with 7 vs 7 seeds")
    assert verdicts[2] == "does not hold: a < b |"
    assert verdicts[3].startswith("not resolved with 7 vs 7 seeds")
    # uncorrected, the two-sided rows hold, in the direction of their effect
    rows = _rows(render("confirmatory", {"data": "hand"}, {**data, "comparisons": two,
                                                           "correction": "none"}))
    assert [r.split(" | ")[10] for r in rows[:2]] == ["holds: a < b |", "holds: a > c |"]


def test_the_correction_changes_the_verdicts(data):
    none = _rows(render("confirmatory", {"data": "hand"}, {**data, "correction": "none"}))
    # unadjusted, C6's 0.125 is still above 0.05; Bonferroni holds the three to 6/128 too
    assert [r.split(" | ")[-1] for r in none[:3]] == ["holds: a < b |", "holds: a > c |",
                                                     "comparable (TOST, margin 0.5) |"]
    assert "| 0.00781 | 0.00781 |" in none[0]
    bonf = _rows(render("confirmatory", {"data": "hand"}, {**data, "correction": "bonferroni"}))
    assert "| 0.00781 | 0.0469 | holds: a < b |" in bonf[0]
    assert "| 0.125 | 0.75 |" in bonf[5]


def test_confirmatory_table_refusals(data):
    with pytest.raises(ConfigError, match="states no comparisons"):
        render("confirmatory", {"data": "hand"}, {**data, "comparisons": []})
    unequal = {**data, "comparisons": [{**COMPARISONS[4], "design": "paired"}]}
    with pytest.raises(ConfigError, match=r"comparisons\[C5\].design=paired needs the same "
                                          r"seeds.*use design: unpaired"):
        render("confirmatory", {"data": "hand"}, unequal)
    late = {**data, "comparisons": [{"id": "T", "a": "a", "b": "b", "measure": "test_error",
                                     "step": 700}]}
    with pytest.raises(ConfigError, match=r"comparisons\[T\].step=700 is not a test step"):
        render("confirmatory", {"data": "hand"}, late)


def test_test_curve_measures(data):
    # the test curve of every run is 0.9 at step 500 and its final error at 1000: the area
    # over 500..1000 divided by the span is (0.9 + final) / 2, so a - b is half C1's; alone in
    # its family it is held to 0.05: (1 + 127 - j)/128 > 0.05 up to the 6th largest subset
    # mean, -0.005 x 7/3
    area = {**data, "comparisons": [{"id": "S", "a": "a", "b": "b", "measure": "test_area",
                                     "k": 10, "side": "less"}]}
    row = _rows(render("confirmatory", {"data": "hand"}, area))[0]
    assert "| test-curve area to step last (k=10) | paired, a < b |" in row
    assert "mean -0.0200 [-inf, -0.0117] | 0.00781 | 0.00781 | holds: a < b |" in row
    at = {**data, "comparisons": [{"id": "S", "a": "a", "b": "b", "measure": "test_error",
                                   "step": 500}]}
    row = _rows(render("confirmatory", {"data": "hand"}, at))[0]
    assert "| 1 | 1 | not resolved with 7 vs 7 seeds (seeds needed: more than 30) |" in row


BASE = {"name": "s", "seeds": [1, 2], "variants": {"looped": [], "skip": []}}


@pytest.mark.parametrize("comparison, message", [
    ({"id": "x", "a": "looped", "b": "ssm", "measure": "final_error"},
     r"study.comparisons\[x\].b=ssm is not a variant of the study; allowed: \['looped', 'skip'\]"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "speed"},
     r"study.comparisons\[x\].measure=speed is not one of"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "escape_rate", "margin": 0.1},
     r"study.comparisons\[x\].margin=0.1 needs an equivalence measure"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "final_error", "margin": 0.1,
      "side": "less"}, r"study.comparisons\[x\].margin=0.1 must be > 0 with side=two-sided"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "final_error", "side": "lower"},
     r"study.comparisons\[x\].side=lower is not one of \['two-sided', 'greater', 'less'\]"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "final_error", "design": "pairs"},
     r"study.comparisons\[x\].design=pairs is not one of"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "test_error"},
     r"study.comparisons\[x\].step is missing"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "final_error", "step": 100},
     r"study.comparisons\[x\].step=100 must be >= 1, for test_error or test_area only"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "escape_rate", "k": 10},
     r"study.comparisons\[x\].k=10 must be >= 1, for an error measure"),
    ({"id": "x", "a": "looped", "b": "looped", "measure": "final_error"},
     r"study.comparisons\[x\] compares looped with itself"),
    ({"id": "x", "a": "looped", "b": "skip", "measure": "final_error", "sides": "less"},
     r"unknown key study.comparisons\[0\].sides"),
])
def test_comparisons_are_refused_before_any_run(comparison, message):
    with pytest.raises(ConfigError, match=message):
        Study.from_config({**BASE, "comparisons": [comparison]})


def test_family_settings_are_checked():
    one = {"id": "x", "a": "looped", "b": "skip", "measure": "final_error"}
    with pytest.raises(ConfigError, match=r"study.comparisons\[1\].id='x' must be a unique"):
        Study.from_config({**BASE, "comparisons": [one, one]})
    with pytest.raises(ConfigError, match=r"study.correction=bh is not one of"):
        Study.from_config({**BASE, "correction": "bh"})
    with pytest.raises(ConfigError, match=r"study.alpha=1.5 must lie in \(0, 1\)"):
        Study.from_config({**BASE, "alpha": 1.5})
    # the confirmatory family of a study is checked against the variants it runs (only)
    with pytest.raises(ConfigError, match=r"comparisons\[x\].b=skip is not a variant"):
        Study.from_config({**BASE, "only": ["looped"], "comparisons": [
            {**one, "b": "skip"}]})


def test_shipped_families():
    findings = load_study("findings_cpu")
    assert [c.id for c in findings.comparisons] == [
        "F4a", "F4b", "F4c", "F5a", "F5b", "F6", "F7", "F8", "F9", "F10a", "F10b"]
    by = {c.id: c for c in findings.comparisons}
    assert (by["F4c"].margin, by["F5b"].margin) == (0.02, 0.02)
    assert [by[i].side for i in ("F7", "F9", "F10a", "F10b")] == [
        "greater", "less", "less", "greater"]
    assert {c.measure for c in findings.comparisons if c.id in ("F5a", "F10a")} == {"test_area"}
    assert all(c.design == "paired" for c in findings.comparisons)
    plateau = load_study("plateau_cpu")
    assert {c.design for c in plateau.comparisons} == {"unpaired"}
    paper = load_study("paper_cpu")
    assert [(c.a, c.b, c.k, c.side) for c in paper.comparisons] == [
        ("looped", "transformer", 10, "two-sided"), ("looped", "tied", 10, "two-sided"),
        ("tied", "looped", 8, "less"), ("tied", "transformer", 8, "less")]


def test_a_findings_table_is_checked_row_by_row(data):
    rows = _rows(render("confirmatory", {"data": "hand"}, data))
    good = ["| C1 | a is below b by 0.0400 on average (p = 0.00781, adjusted 0.0469) | holds |",
            "| C4 | a above b: raw p 1 | does not hold |",
            "| C2, C6 | a escapes 7/7, b 4/7, c 0/7 | holds |"]
    assert findings_errors(good[:2], rows) == []
    # C6's verdict is not resolved: a findings row over C2 and C6 cannot say holds for both
    assert findings_errors(good[2:], rows) == ["C2, C6: verdict 'holds' is not its rows' "
                                               "['holds', 'not resolved']"]
    # a figure of another row (C6's 0.125) and a verdict the adjusted p does not support
    assert findings_errors(["| C1 | p = 0.125 | holds |"], rows) == [
        "C1: 0.125 is not in its row"]
    assert findings_errors(["| C6 | 4/7 vs 0/7 | holds |"], rows) == [
        "C6: verdict 'holds' is not its rows' ['not resolved']"]
    assert findings_errors(["| C4 | a above b | not resolved |"], rows) == [
        "C4: verdict 'not resolved' is not its rows' ['does not hold']"]
    assert findings_errors(["| C9 | - | holds |"], rows) == ["C9: no confirmatory row"]
