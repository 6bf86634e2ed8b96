"""The depth dial (issue 33, part 3): the loops rule b(p) against values worked out by hand,
the hop counts drawn in training, the refusals, and a training run whose every step runs the
rule's loop count for the hop count it drew."""

import re
import sys
from collections import Counter

import pytest
from conftest import compose_cfg, run_cmd
from hop_oracles import HopOracle

from loopformer.config import Settings
from loopformer.csvlog import read_metrics
from loopformer.curriculum import Curriculum, LoopsRule, Schedule
from loopformer.dial import score_dial
from loopformer.errors import ConfigError
from loopformer.training import run

# TINY's 5 -> 9 tokens (+2 every 3 steps); 2 hops from step 6, when the prompts hold them
TINY_P_HOP = ["task=p_hop", "task.length=9", "task.hops=2", "curriculum.hops.interval=6"]


def _cur(hops, loops, rule, mix=False):
    cur = Curriculum(dims=Schedule(1, 1), points=Schedule(64, 64), loops=loops, window=1,
                     hops=hops, hops_mix=mix, loops_rule=rule)
    cur.validate()
    return cur


def test_a_linear_rule_gives_a_p_plus_c_loops_at_each_hop_count():
    # b(p) = 2p + 1 for p = 1, 2, 3, 4 hops (one more every 10 steps): 3, 5, 7, 9
    cur = _cur(Schedule(1, 4, 1, 10), Schedule(9, 9), LoopsRule("linear", "hops", 2, 1))
    assert [cur.at(s).n_loops for s in (0, 9, 10, 20, 30, 1000)] == [3, 3, 5, 7, 9, 9]
    assert cur.final.n_loops == 9


def test_a_log2_rule_gives_ceil_log2_p_plus_c_and_the_schedule_bounds_it():
    # b(p) = ceil(log2 p) + 2 for p = 1..8: 2, 3, 4, 4, 5, 5, 5, 5; the loops schedule 2 -> 5
    # (+1 every 20 steps) caps it early on: min(2 + step // 20, b(1 + step // 10))
    cur = _cur(Schedule(1, 8, 1, 10), Schedule(2, 5, 1, 20), LoopsRule("log2", "hops", 1, 2))
    hand = {0: 2, 10: 2, 20: 3, 30: 3, 40: 4, 50: 4, 60: 5, 70: 5, 1000: 5}
    assert {s: cur.at(s).n_loops for s in hand} == hand


def test_a_fixed_rule_leaves_the_schedule_alone():
    cur = _cur(Schedule(1, 4, 1, 10), Schedule(2, 6, 1, 5), LoopsRule())
    assert [cur.at(s).n_loops for s in (0, 5, 10, 20)] == [2, 3, 4, 6]


def test_mixed_hops_cover_every_count_up_to_the_scheduled_one_and_the_loops_follow():
    cur = _cur(Schedule(4, 4), Schedule(5, 5), LoopsRule("linear", "hops", 1, 1), mix=True)
    states = [cur.train_state(s, seed=3) for s in range(2000)]
    counts = Counter(st.n_hops for st in states)
    assert set(counts) == {1, 2, 3, 4}
    assert all(0.2 < n / 2000 < 0.3 for n in counts.values()), counts  # uniform: 1/4 each
    assert all(st.n_loops == st.n_hops + 1 for st in states)
    assert states == [cur.train_state(s, seed=3) for s in range(2000)]  # a function of the step
    assert states != [cur.train_state(s, seed=4) for s in range(2000)]  # and of the seed
    assert cur.at(7).n_hops == 4 and cur.at(7).n_loops == 5  # the test set keeps P and b(P)


RULE = "curriculum.loops_rule"


@pytest.mark.parametrize("overrides,message", [
    ([f"{RULE}.kind=sqrt"], f"{RULE}.kind='sqrt' is unknown"),
    ([f"{RULE}.kind=linear", f"{RULE}.a=0", f"{RULE}.c=12"], f"{RULE}.a=0 must be >= 1"),
    ([f"{RULE}.kind=fixed", f"{RULE}.a=2", f"{RULE}.c=0"],
     f"{RULE}.a=2 and {RULE}.c=0 have no effect with {RULE}.kind=fixed"),
    ([f"{RULE}.kind=linear", f"{RULE}.c=4"],
     "curriculum.loops.end=10 differs from the rule's b = 12 at hops = 8"),
    ([f"{RULE}.kind=log2", f"{RULE}.c=0", "curriculum.loops={start:3,end:3}",
      "curriculum.window=3"],
     "gives b = 0 loops at hops = 1; raise curriculum.loops_rule.c to at least 1"),
    (["curriculum.hops.start=8", "curriculum.hops_mix=false"],
     "gives the same b = 10 for every hops trained (8..8): it has no effect"),
    ([f"{RULE}.of=points", "curriculum.points={start:16,end:32,inc:8,interval:100}"],
     "curriculum.loops.end=10 differs from the rule's b = 34 at points = 32"),
    ([f"{RULE}.of=points"], f"{RULE} (b(p) = p + 2, p = points) gives the same b = 34 for "
                            f"every points trained (32..32): it has no effect"),
    # linear regression's points 11 -> 41, loops 15 -> 30: b(41) = 5 * 6 = 30 fits the schedule
    (["task=linear_regression", f"{RULE}.kind=log2", f"{RULE}.a=5", f"{RULE}.of=points"],
     f"{RULE}.of=points is not a depth dial of task.name=linear_regression: it has no depth "
     f"dial"),
    (["model=transformer"],
     f"{RULE}.kind=linear sets a loop count, which model.family=transformer has not"),
])
def test_a_loops_rule_that_does_not_fit_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_config(compose_cfg(*(() if "task=" in overrides[0] else
                                           ("experiment=p_hop_cpu",)), *overrides))


def test_the_rule_composes_on_the_presets_and_parity_follows_its_length():
    # the preset: b(p) = p + 2 under a constant 10, hops 1 -> 8 (+1 every 300 steps)
    s = Settings.from_config(compose_cfg("experiment=p_hop_cpu"))
    assert s.curriculum.final.n_loops == 10
    assert [s.curriculum.at(t).n_loops for t in (0, 300, 1800, 2100, 2999)] == [3, 4, 9, 10, 10]
    # parity: 4 bits, +2 every 300 steps; b(n) = 2 ceil(log2 n) + 4 under a constant 12
    p = Settings.from_config(compose_cfg("experiment=parity_cpu", f"{RULE}.kind=log2",
                                         f"{RULE}.a=2", f"{RULE}.c=4",
                                         "curriculum.loops.start=12"))
    assert [p.curriculum.at(s).n_loops for s in (0, 300, 600, 900, 1800)] == [8, 10, 10, 12, 12]
    with pytest.raises(ConfigError, match=re.escape("curriculum.hops_mix=true draws hop counts "
                                                    "up to the scheduled one, but curriculum."
                                                    "hops is null")):
        Settings.from_config(compose_cfg("experiment=parity_cpu", "+curriculum.hops_mix=true"))


def test_every_training_step_runs_the_rule_for_the_hop_count_it_drew(tiny, tmp_path):
    # TINY: loops 2 -> 3; 1 -> 2 hops from step 6; b(p) = p + 1 with the hop count drawn
    cfg = compose_cfg(*tiny, *TINY_P_HOP, "curriculum.hops_mix=true",
                      f"{RULE}.kind=linear", f"{RULE}.c=1", "trainer.max_steps=24",
                      run_dir=tmp_path / "run")
    run(cfg)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv")
            if "curriculum/train_hops" in r]
    assert len(rows) == 24
    assert {r["curriculum/train_hops"] for r in rows} == {1.0, 2.0}
    assert all(r["curriculum/train_loops"] == r["curriculum/train_hops"] + 1 for r in rows)
    assert all(r["curriculum/train_hops"] <= r["curriculum/n_hops"] for r in rows)


# ----------------------------------------------------------------------------- evaluation

def _spec(*overrides):
    return Settings.from_config(compose_cfg(
        "task=p_hop", "task.vocab=3", "task.length=20", "task.hops=2",
        "model.n_positions=40", "curriculum.points.start=20", "curriculum.hops.start=1",
        "curriculum.loops={start:2,end:2}", "curriculum.window=1", "curriculum.hops_mix=true",
        f"{RULE}.kind=linear", "eval.dial.factor=4", "eval.dial.n_prompts=64", *overrides))


def test_the_dial_scores_every_hop_count_at_the_rule_and_at_the_fixed_loop_count():
    # an oracle whose loop t answers t hops: at the rule b(p) = p it is right at every hop
    # count; at the fixed b = 2 it answers 2 hops, right at p = 2 only (elsewhere the 2-hop
    # answer is the p-hop one by chance: well below 1 at 8 hops)
    spec = _spec()
    d = score_dial(HopOracle(3, lambda t: t), spec, "cpu", n_resamples=50, seed=0,
                   batch_size=32)
    assert d["values"] == list(range(1, 9)) and d["trained"] == 2
    # 20 tokens hold 9 hops of 3 symbols; 8 hops need 8 * 2 + 2 = 18 <= 20: all at 20
    assert d["lengths"] == [20] * 8
    assert d["rule_loops"] == d["values"] and d["fixed_loops"] == 2
    assert d["loops"] == list(range(1, 9))
    assert d["at_rule"]["mean"] == [1.0] * 8
    assert d["at_fixed"]["mean"][1] == 1.0 and d["at_fixed"]["mean"][7] < 0.8
    for i, v in enumerate(d["values"]):  # the two read-outs are columns of the grid
        assert d["accuracy_last"][i][v - 1] == d["at_rule"]["mean"][i]
        assert d["accuracy_last"][i][1] == d["at_fixed"]["mean"][i]


def test_longer_hop_counts_get_the_shortest_prompt_that_holds_them():
    spec = _spec("eval.dial.factor=8")  # 16 hops of 3 symbols need 16 * 2 + 2 = 34 tokens
    d = score_dial(HopOracle(3, lambda t: t), spec, "cpu", n_resamples=20, seed=0,
                   batch_size=64)
    assert d["lengths"] == [max(20, 2 * v + 2) for v in range(1, 17)]
    assert d["lengths"][-1] == 34 and d["at_rule"]["mean"] == [1.0] * 16


def test_a_dial_beyond_the_positions_is_refused_naming_the_key(tmp_path, tiny):
    with pytest.raises(ConfigError, match=re.escape(
            "eval.dial.factor=12 scores prompts of up to 50 tokens, beyond "
            "model.n_positions=40; use model.n_positions >= 50")):
        _spec("eval.dial.factor=12")
    with pytest.raises(ConfigError, match=re.escape(
            "eval.dial.factor=2 scores a depth dial, which task.name=linear_regression has "
            "not")):
        Settings.from_config(compose_cfg("eval.dial.factor=2"))
    # the evaluation's command line: one line, exit 2, before the checkpoint is read
    cfg = compose_cfg(*tiny, *TINY_P_HOP, "trainer.max_steps=2", run_dir=tmp_path / "run")
    run(cfg)
    proc = run_cmd([sys.executable, "-m", "loopformer.evaluate", f"run={tmp_path / 'run'}",
                    "dial={factor: 8}"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: eval.dial.factor=8 scores prompts "
                                                   "of up to 50 tokens"), lines
    assert not (tmp_path / "run" / "eval").exists()


def test_evaluate_writes_the_dial_and_its_plot(tiny, tmp_path):
    cfg = compose_cfg(*tiny, *TINY_P_HOP, "trainer.max_steps=2", "curriculum.hops_mix=true",
                      f"{RULE}.kind=linear", f"{RULE}.c=1", "eval.at_end=true",
                      "eval.n_prompts=16", "eval.n_resamples=20", "eval.dial.factor=2",
                      "eval.dial.n_prompts=16", "model.n_positions=16",
                      run_dir=tmp_path / "run")
    res = run(cfg).eval_results
    d = res["dial"]
    assert d["values"] == [1, 2, 3, 4] and d["rule_loops"] == [2, 3, 4, 5]
    assert d["lengths"] == [9, 9, 11, 14]  # p hops of 4 symbols: 9 tokens, or 3p + 2
    assert (tmp_path / "run" / "eval" / "accuracy_vs_dial.png").is_file()
