"""The analysis of token tasks (issue 33, part 4): per loop, the read-out's accuracy against
the exact j-hop answer for every j, read as linear hopping or pointer doubling on hand-built
models whose answer after each loop is known; and the analysis of a trained p-hop run, whose
regression parts say why they do not apply."""

import json
import logging
import math

import pytest
import torch
from conftest import compose_cfg
from hop_oracles import HopOracle

from loopformer.analyze.__main__ import main as analyze_main
from loopformer.analyze.hops import hop_accuracy, hop_reading
from loopformer.analyze.run import Options, analyze
from loopformer.config import Settings
from loopformer.data import generator
from loopformer.errors import ConfigError
from loopformer.tasks import build_task, hop_targets
from loopformer.training import run

V, LENGTH, J = 4, 64, 16


def _prompts(n=256):
    task = build_task("p_hop", 1, hops=4, vocab=V, length=LENGTH)
    return task.sample(n, LENGTH, generator=generator(torch.device("cpu"), 5))


def _answers(xs, hops_of_loop, loops):
    """Loop t answers the hops_of_loop(t)-hop question (class 0 where it is undefined)."""
    return torch.stack([hop_targets(xs, hops_of_loop(t), V).clamp_min(0)
                        for t in range(1, loops + 1)])  # (L, P, n)


def test_a_model_that_hops_once_per_loop_reads_as_linear():
    xs, _ = _prompts()
    acc = hop_accuracy(_answers(xs, lambda t: t, 20), xs, J, V)  # (20, 16)
    for t in range(1, J + 1):
        assert acc[t - 1, t - 1] == 1.0  # loop t gives the t-hop answer wherever it is defined
        # and no other j's answer everywhere: different hop counts differ somewhere
        assert all(acc[t - 1, j - 1] < 1.0 for j in range(1, J + 1) if j != t)
    r = hop_reading(acc)
    assert r["j_star"][:J] == list(range(1, J + 1))
    assert r["reading"] == "linear"
    assert r["forms"]["linear"] == {"offset": 0, "share": 1.0, "loops": J}


def test_a_model_that_doubles_its_hops_per_loop_reads_as_doubling():
    xs, _ = _prompts()
    acc = hop_accuracy(_answers(xs, lambda t: 2 ** t, 6), xs, J, V)  # 2, 4, 8, 16, 32, 64 hops
    r = hop_reading(acc)
    assert r["j_star"][:4] == [2, 4, 8, 16]
    assert [acc[t - 1, 2 ** t - 1].item() for t in range(1, 5)] == [1.0] * 4
    assert r["reading"] == "doubling"
    assert r["forms"]["doubling"]["offset"] == 0 and r["forms"]["doubling"]["share"] == 1.0


def test_a_model_stuck_at_one_hop_reads_as_neither():
    xs, _ = _prompts()
    r = hop_reading(hop_accuracy(_answers(xs, lambda t: 1, 10), xs, J, V))
    assert r["j_star"] == [1] * 10 and r["reading"] == "neither"


def test_a_j_defined_nowhere_is_nan():
    xs = torch.tensor([[0, 1, 2, 3]])  # no symbol repeats: no hop is ever defined
    acc = hop_accuracy(torch.zeros(2, 1, 4, dtype=torch.long), xs, 2, V, min_positions=1)
    assert all(math.isnan(v) for v in acc.flatten().tolist())


def test_a_long_chain_defined_only_in_an_alternating_prompt_is_not_scored():
    # 64 random prompts and one alternating prompt a b a b ...: there every hop moves back one
    # token and the j-hop answers repeat with period 2, so the 33-hop answer, defined almost
    # only there, equals the 1-hop answer; a model answering 1 hop with one mistake elsewhere
    # then matches j = 33 (on few positions) better than j = 1 (on thousands)
    xs, _ = _prompts(64)
    xs = torch.cat((xs, torch.arange(LENGTH).remainder(2)[None]))  # (65, 64)
    answers = _answers(xs, lambda t: 1, 1)  # (1, 65, 64)
    first = hop_targets(xs[:1], 1, V)[0]
    i = int((first != -100).nonzero()[0])  # a position of a random prompt with a 1-hop answer
    answers[0, 0, i] = (answers[0, 0, i] + 1) % V
    n_33 = int((hop_targets(xs, 33, V) != -100).sum())
    assert 0 < n_33 < 100
    loose = hop_accuracy(answers, xs, 40, V, min_positions=1)
    assert loose[0, 32] == 1.0 > loose[0, 0] and hop_reading(loose)["j_star"][0] > 20
    acc = hop_accuracy(answers, xs, 40, V)
    assert math.isnan(acc[0, 32]) and hop_reading(acc)["j_star"] == [1]


def test_the_analysis_reads_the_oracles_through_the_models_interface(tmp_path):
    spec = Settings.from_config(compose_cfg(
        "task=p_hop", f"task.vocab={V}", f"task.length={LENGTH}", "task.hops=4",
        f"model.n_positions={LENGTH}", "curriculum=fixed", "curriculum.loops.end=4",
        "curriculum.window=1", "eval.batch_size=128"))
    opts = Options(run=tmp_path, n_prompts=256, max_loops=12, max_hops=J)
    for hops_of_loop, reading in ((lambda t: t, "linear"), (lambda t: 2 ** t, "doubling")):
        r = analyze(HopOracle(V, hops_of_loop), spec, opts, ("hops",), "cpu")
        assert r["hops"]["reading"] == reading
        assert set(r["not_defined"]) == {"match", "probe", "exit"}
        assert all("classification task" in w for w in r["not_defined"].values())


def test_a_trained_p_hop_run_is_analysed_and_the_rest_says_why_not(tiny, tmp_path, caplog):
    cfg = compose_cfg(*tiny, "task=p_hop", "task.length=9", "task.hops=2",
                      "curriculum.hops.interval=6", "trainer.max_steps=4",
                      run_dir=tmp_path / "run")
    run(cfg)
    with caplog.at_level(logging.INFO, logger="loopformer.analyze.run"):
        assert analyze_main([f"run={tmp_path / 'run'}", "n_prompts=32", "max_loops=8"]) == 0
    r = json.loads((tmp_path / "run" / "analysis" / "analysis.json").read_text())
    assert r["parts"] == ["dynamics", "hops"] and r["metric"] == "accuracy"
    dyn = r["dynamics"]
    assert len(dyn["accuracy"]["last"]["mean"]) == 8
    for shares in dyn["classes"]["at"].values():  # every prompt in one class
        assert shares["fixed"] + shares["cycle"] + shares["moving"] == pytest.approx(1.0)
    assert len(r["hops"]["j_star"]) == 8 and len(r["hops"]["accuracy"][0]) == 8  # 4 x 2 hops
    for name in ("dynamics.png", "hops.png"):
        assert (tmp_path / "run" / "analysis" / name).is_file()
    text = caplog.text
    assert "match: not defined" in text and "reading:" in text


def test_the_reading_counts_only_the_loops_whose_j_is_scored():
    # a linear model whose j = 13..16 are not scored (too few positions): loops 13..20 name no
    # scored j and are not counted, rather than counted as misses
    xs, _ = _prompts()
    acc = hop_accuracy(_answers(xs, lambda t: t, 20), xs, J, V)
    acc[:, 12:] = float("nan")
    r = hop_reading(acc)
    assert r["forms"]["linear"] == {"offset": 0, "share": 1.0, "loops": 12}
    assert r["reading"] == "linear" and "j = 1..12" in r["rule"]


def test_the_hop_table_gives_each_runs_reading_and_best_match_per_loop():
    from loopformer.analyze.hops import hops_part
    from loopformer.results.analysis_record import record
    from loopformer.results.analysis_tables import table_analysis

    xs, _ = _prompts()

    def run_of(hops_of_loop, seed, escape):
        part = hops_part(_answers(xs, hops_of_loop, 8), xs, J, V, trained_hops=4)
        an = {"family": "looped", "unit": "loop", "trained_depth": 4, "n_prompts": 256,
              "seed": seed, "seconds": {"total": 1.0}, "hops": part}
        return {"variant": "looped", "seed": seed, "escape_step": escape,
                "analysis": record(an)}

    data = {"study": "s", "variants": ["looped"],
            "runs": [run_of(lambda t: t, 1, 100), run_of(lambda t: 2 ** t, 2, None)]}
    lines = table_analysis(data, {"part": "hop_seeds"})
    assert lines[2].startswith("| looped | 1 | yes | linear | +0, 100% of 8 | ")
    assert "| 1: 1 (1.00), 2: 2 (1.00), 3: 3 (1.00), 4: 4 (1.00), 5: 5 (1.00), 6: 6 (1.00), " \
           "7: 7 (1.00), 8: 8 (1.00) |" in lines[2]
    assert lines[3].startswith("| looped | 2 | no | doubling | ")
    assert "1: 2 (1.00), 2: 4 (1.00), 3: 8 (1.00), 4: 16 (1.00)" in lines[3]
    with pytest.raises(ConfigError, match="has the hops part"):
        table_analysis({**data, "runs": [{**data["runs"][0], "analysis": {
            k: v for k, v in data["runs"][0]["analysis"].items() if k != "hops"}}]},
            {"part": "hop_seeds"})
