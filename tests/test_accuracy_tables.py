"""A classification study's data and tables (issue 33): the export of a hand-made run
(accuracy per position, the test curve, the escape above a threshold, the dial), the tables
and the confirmatory measures on accuracy, every figure worked out by hand."""

import json
import re

import pytest

from loopformer.errors import ConfigError
from loopformer.results import confirm
from loopformer.results.export import _run_record
from loopformer.results.pages import render
from loopformer.rundir import RunDir
from loopformer.study import Comparison

NAN = float("nan")


def _results(dial_rule: bool) -> dict:
    return {"task": "p_hop", "metric": "accuracy", "chance": 0.25, "n_points": 4,
            "n_prompts": 64, "torch": "2.x", "parameters": 10, "trained_loops": 4,
            "accuracy": {"model": 0.8, "model@8": 0.7},
            "curves": {"model": {"kind": "model", "mean": [NAN, 0.5, 0.75, 1.0]},
                       "model@8": {"kind": "model", "mean": [NAN, 0.4, 0.6, 0.9]}},
            "dial": {"of": "hops", "trained": 2, "values": [1, 2, 3, 4], "lengths": [4] * 4,
                     "fixed_loops": 4, "rule_loops": [1, 2, 3, 4] if dial_rule else None,
                     "rule": {"formula": "b(p) = p, p = hops" if dial_rule else "fixed"},
                     "at_fixed": {"mean": [0.3, 1.0, 0.4, 0.2]},
                     "at_rule": {"mean": [1.0, 1.0, 0.9, 0.8]} if dial_rule else None}}


def _write_run(root, accuracies, dial_rule=True):
    run = RunDir(root)
    run.eval.mkdir(parents=True)
    run.results.write_text(json.dumps(_results(dial_rule)))
    rows = ["step,test/accuracy,test/accuracy_pos/003,train/loss"]
    rows += [f"{100 * (i + 1)},{a / 2},{a},1.0" for i, a in enumerate(accuracies)]
    rows.append("550,,,0.5")  # a training row without the test set
    run.metrics.write_text("\n".join(rows) + "\n")
    run.config.write_text("test: {every_n_steps: 100}\n")
    return run


def test_the_export_reads_accuracy_and_escapes_above_the_threshold(tmp_path):
    # accuracy at the last position 0.5, 0.95, 0.8, 0.92, 0.97 at steps 100..500: above 0.9
    # from step 400 to the end (the dip at 300 resets it)
    rec = _run_record("looped", 1, _write_run(tmp_path / "r", [0.5, 0.95, 0.8, 0.92, 0.97]),
                      None)
    assert rec["escape_step"] == 400
    assert rec["accuracy"] == {"trained": [None, 0.5, 0.75, 1.0], "8": [None, 0.4, 0.6, 0.9]}
    assert rec["accuracy_all"] == {"trained": 0.8, "8": 0.7}
    assert rec["test"] == {"step": [100, 200, 300, 400, 500],
                           "accuracy_last": [0.5, 0.95, 0.8, 0.92, 0.97],
                           "accuracy_mean": [0.25, 0.475, 0.4, 0.46, 0.485]}
    assert rec["dial"]["at_rule"] == [1.0, 1.0, 0.9, 0.8] and rec["dial"]["fixed_loops"] == 4
    # a stated threshold of 0.96: only the last point is above it
    assert _run_record("looped", 1, RunDir(tmp_path / "r"), 0.96)["escape_step"] == 500


def _data() -> dict:
    def run(variant, seed, final, last, rule, dial_shift):
        return {"variant": variant, "seed": seed, "torch": "2.x", "trained_loops": 4,
                "accuracy": {"trained": [None, 0.5, 0.75, final]},
                "escape_step": 300 if last > 0.9 else None, "test_every_n_steps": 100,
                "test": {"step": [100, 200, 300], "accuracy_last": [0.3, 0.6, last]},
                "dial": {"of": "hops", "trained": 2, "values": [1, 2, 3, 4, 8],
                         "lengths": [10, 10, 10, 14, 26], "fixed_loops": 4,
                         "rule_loops": [1, 2, 3, 4, 8] if rule else None,
                         "rule": "b(p) = p, p = hops" if rule else "fixed",
                         "at_fixed": [0.5, 1.0, 0.5, 0.4 + dial_shift, 0.3 + dial_shift],
                         "at_rule": ([1.0, 1.0, 0.95, 0.9 + dial_shift, 0.8 + dial_shift]
                                     if rule else None)}}
    runs = [run("looped", s, 0.9 + 0.01 * s, 0.95, True, 0.01 * s) for s in (1, 2, 3)]
    runs += [run("transformer", s, 0.8 + 0.01 * s, 0.85 if s < 3 else 0.92, False, 0.0)
             for s in (1, 2, 3)]
    comparisons = [
        {"id": "H1", "a": "looped", "b": "transformer", "measure": "final_accuracy",
         "side": "greater", "claim": "looped answers better"},
        {"id": "H2", "a": "looped", "b": "transformer", "measure": "dial_accuracy",
         "side": "greater", "claim": "looped extrapolates better"}]
    return {"study": "hand", "metric": "accuracy", "chance": 0.25, "variants":
            ["looped", "transformer"], "n_points": 4, "examples": [3], "seeds": [1, 2, 3],
            "escape": {"threshold": 0.9, "above": True, "metric": "test/accuracy_pos/003"},
            "runs": runs, "comparisons": comparisons, "correction": "holm", "alpha": 0.05}


def test_the_variants_and_runs_tables_read_accuracy():
    data = _data()
    text = "\n".join(render("variants", {}, data).splitlines())
    assert "accuracy at the last position 3 (test/accuracy_pos/003) is above 0.9" in text
    # looped escaped 3/3, final accuracy at k = 3: 0.91, 0.92, 0.93 -> mean 0.92
    assert re.search(r"\| looped \| 3/3 \| 300 \| 0\.9200 \[0\.9100, 0\.9300\] \| - \|", text)
    # transformer: only seed 3 escaped (0.83); seeds 1, 2 listed apart
    assert "| transformer | 1/3 | 300 | 0.8300 [0.8300, 0.8300] | 1: 0.8100, 2: 0.8200 |" in text
    runs = render("runs", {}, data)
    assert "test accuracy (last step)" in runs and "| looped | 1 | 2.x | 300 | 0.9500" in runs


def test_the_dial_table_reads_the_rule_and_the_fixed_depth():
    text = render("dial", {}, _data())
    # default columns: the first value, the trained 2 and its multiples 4 and 8 (6 not scored)
    assert "| variant | depth | hops=1 | hops=2 | hops=4 | hops=8 |" in text
    # looped at the rule: hops 8 -> 0.81, 0.82, 0.83; fixed: 0.31, 0.32, 0.33
    assert "| looped | rule b(p) | 1.0000 [1.0000, 1.0000] | 1.0000 [1.0000, 1.0000] | " \
           "0.9200 [0.9100, 0.9300] | 0.8200 [0.8100, 0.8300] |" in text
    assert "| looped | fixed (4) | 0.5000 [0.5000, 0.5000] | 1.0000 [1.0000, 1.0000] | " \
           "0.4200 [0.4100, 0.4300] | 0.3200 [0.3100, 0.3300] |" in text
    assert "| transformer | rule" not in text  # no rule: the fixed depth only
    assert "lengths 1: 10, 2: 10, 4: 14, 8: 26 tokens" in text


def test_the_confirmatory_measures_on_accuracy():
    data = _data()
    runs = {(r["variant"], r["seed"]): r for r in data["runs"]}
    c1, c2 = (Comparison(**d) for d in data["comparisons"])
    assert confirm.value(runs["looped", 2], c1, data, None) == pytest.approx(0.92)
    assert confirm.value(runs["transformer", 2], c1, data, None) == pytest.approx(0.82)
    # dial_accuracy: at the largest hop count, the rule's where the run has one
    assert confirm.value(runs["looped", 2], c2, data, None) == pytest.approx(0.82)
    assert confirm.value(runs["transformer", 2], c2, data, None) == pytest.approx(0.3)
    k4 = Comparison(**{**data["comparisons"][1], "k": 4})
    assert confirm.value(runs["looped", 1], k4, data, None) == pytest.approx(0.91)
    # three pairs, every difference positive: the one-sided sign-flip p is 1/8
    rows = confirm.evaluate(data)
    assert [r.p for r in rows] == [0.125, 0.125]
    assert all(r.verdict.startswith("cannot be resolved with 3 vs 3 seeds") for r in rows)
    with pytest.raises(ConfigError, match=re.escape("comparisons[H1].measure=final_error: "
                                                    "hand scores accuracy")):
        confirm.value(runs["looped", 1], Comparison(**{**data["comparisons"][0],
                                                        "measure": "final_error"}), data, None)
    with pytest.raises(ConfigError, match=re.escape("comparisons[H2].k=6 is not a scored hops")):
        confirm.value(runs["looped", 1], Comparison(**{**data["comparisons"][1], "k": 6}),
                      data, None)
    table = render("confirmatory", {}, data)
    assert "accuracy at the last position at dial value hops=8" in table
