"""Token prompts and the classification read-out: the p-hop and parity tasks against answers
worked out by hand, cross-entropy and accuracy against hand computations, every model family
on token and class prompts, the refusals, a bitwise resume and a model that learns 1-hop."""

import math
import re

import pytest
import torch
from conftest import compose_cfg, resume_is_bitwise, run_cmd, train_cmd

from loopformer import build_model
from loopformer.analyze.__main__ import main as analyze_main
from loopformer.config import Settings
from loopformer.curriculum import Curriculum, Schedule
from loopformer.errors import ConfigError
from loopformer.models import ModelConfig
from loopformer.readout import IGNORE, class_loss, correct, cross_entropy
from loopformer.tasks import (
    build_task,
    hop_targets,
    p_hop_reference,
    parity_reference,
)
from loopformer.training import run

A, B, C, D, E = range(5)


def letters(word: str) -> list[int]:
    return ["abcde".index(c) for c in word]


def answers(seq: list[int], hops: int) -> list[int]:
    """The vectorised targets of one sequence, IGNORE where undefined."""
    return hop_targets(torch.tensor([seq]), hops)[0].tolist()


# ----------------------------------------------------------------------------- p-hop by hand

# (sequence, hops, the answer at the last position: None where find_p is 0)
LAST_ANSWERS = [
    # Sanford et al.'s example: the last a's previous a is followed by b (1 hop); that b's
    # previous b is followed by c (2 hops); c never occurred before (3 hops: none)
    ("baebcabebdea", 0, A), ("baebcabebdea", 1, B), ("baebcabebdea", 2, C),
    ("baebcabebdea", 3, None),
    # a chain that crosses itself: a (pos 8) -> b (6) -> a (5) -> c (3) -> none; it passes
    # through symbol a twice and leaves it the second time by another successor
    ("bacbabca", 1, B), ("bacbabca", 2, A), ("bacbabca", 3, C), ("bacbabca", 4, None),
    # alternating symbols: every hop moves back one position and the chain alternates
    ("ababab", 1, A), ("ababab", 3, A), ("ababab", 4, B), ("ababab", 5, None),
    # a symbol twice in a row: the previous a is followed by the last a itself, a fixed point
    ("caa", 1, A), ("caa", 5, A),
]


@pytest.mark.parametrize("word,hops,answer", LAST_ANSWERS)
def test_p_hop_answers_at_the_last_position_by_hand(word, hops, answer):
    seq = letters(word)
    assert p_hop_reference(seq, hops)[-1] == answer
    assert answers(seq, hops)[-1] == (IGNORE if answer is None else answer)


def test_p_hop_answers_at_every_position_by_hand():
    # ababab, 1 hop: positions 1-2 have no earlier occurrence; from 3 on the answer is the
    # token just before (the previous occurrence is two back)
    assert p_hop_reference(letters("ababab"), 1) == [None, None, B, A, B, A]
    # 2 hops: from position 4 on, the token two positions back
    assert answers(letters("ababab"), 2) == [IGNORE, IGNORE, IGNORE, B, A, B]
    # the first token never has an answer, and 0 hops is the token itself
    assert answers(letters("bacbabca"), 0) == letters("bacbabca")


def test_the_vectorised_targets_equal_the_literal_definition():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # repeats in a row included: the definition's fixed points
        n = int(torch.randint(1, 15, (1,), generator=g))
        seq = torch.randint(0, 3, (n,), generator=g).tolist()
        hops = int(torch.randint(0, 5, (1,), generator=g))
        expected = [IGNORE if a is None else a for a in p_hop_reference(seq, hops)]
        assert answers(seq, hops) == expected, (seq, hops)


# ----------------------------------------------------------------------------- p-hop prompts


def test_p_hop_prompts_are_seeded_repeat_free_and_answered_at_the_last_position():
    task = build_task("p_hop", 1, hops=6, vocab=4, length=20)  # 6 * 3 = 18 = 20 - 2: the limit
    draw = lambda seed: task.sample(300, 20, generator=torch.Generator().manual_seed(seed))
    xs, ys = draw(1)
    assert xs.dtype == ys.dtype == torch.long and xs.shape == ys.shape == (300, 20)
    assert torch.equal(xs, draw(1).xs) and not torch.equal(xs, draw(2).xs)
    assert int(xs.min()) >= 0 and int(xs.max()) <= 3
    assert bool((xs[:, 1:] != xs[:, :-1]).all())  # no symbol twice in a row
    assert bool((ys[:, -1] != IGNORE).all())  # every prompt has a last answer
    for seq, target in zip(xs.tolist(), ys.tolist(), strict=True):
        assert target == [IGNORE if a is None else a for a in p_hop_reference(seq, 6)]


def test_two_symbols_alternate_and_a_hop_moves_back_one_position():
    xs, ys = build_task("p_hop", 1, hops=3, vocab=2, length=10).sample(
        8, 10, generator=torch.Generator().manual_seed(0))
    assert bool((xs[:, 1:] != xs[:, :-1]).all())
    # 0-based: position t has an answer from t = 4 on, the token 3 positions back
    assert bool((ys[:, :4] == IGNORE).all()) and torch.equal(ys[:, 4:], xs[:, 1:7])


def test_the_curriculum_hop_count_reaches_the_prompts():
    task = build_task("p_hop", 1, hops=4, vocab=4, length=16)
    cur = Curriculum(dims=Schedule(1, 1), points=Schedule(16, 16), hops=Schedule(1, 4, 1, 10))
    g = lambda: torch.Generator().manual_seed(3)
    early, late = task.sample_at(50, cur.at(0), g()), task.sample_at(50, cur.at(30), g())
    assert cur.at(0).n_hops == 1 and cur.at(30).n_hops == 4
    assert torch.equal(early.ys, hop_targets(early.xs, 1))
    assert torch.equal(late.ys, hop_targets(late.xs, 4))


# ----------------------------------------------------------------------------- parity


def test_parity_by_hand_and_its_prompts():
    assert parity_reference([1, 0, 1, 1]) == 1 and parity_reference([1, 1, 0, 0]) == 0
    assert parity_reference([0]) == 0
    task = build_task("parity", 1, length=7)
    xs, ys = task.sample(64, 7, generator=torch.Generator().manual_seed(0))
    assert set(xs.unique().tolist()) == {0, 1}
    assert bool((ys[:, :-1] == IGNORE).all())
    assert ys[:, -1].tolist() == [parity_reference(s) for s in xs.tolist()]


# ----------------------------------------------------------------------------- the read-out


def test_cross_entropy_and_accuracy_against_a_hand_computation():
    # two prompts of three tokens, two classes; softmax([log 3, 0]) = (3/4, 1/4)
    third = [math.log(3), 0.0]
    logits = torch.tensor([[third, [0.0, 0.0], [0.0, 2.0]],
                           [[0.0, math.log(3)], third, third]])  # (B=2, n=3, C=2)
    targets = torch.tensor([[0, 1, IGNORE], [0, 0, 1]])
    ce = cross_entropy(logits, targets)
    expected = torch.tensor([[math.log(4 / 3), math.log(2), 0.0],
                             [math.log(4), math.log(4 / 3), math.log(4)]])
    assert torch.allclose(ce, expected)
    # arg-max: class 0, a tie (the first), class 1 | class 1, class 0, class 0
    assert correct(logits, targets).tolist() == [[True, False, False], [False, True, False]]
    # a window of two iterations: the second doubles the logits
    loss, stats = class_loss(torch.stack((logits, 2 * logits)), targets)
    ce2 = cross_entropy(2 * logits, targets)
    assert math.isclose(float(loss), float((ce + ce2).sum() / (5 * 2)), rel_tol=1e-6)
    # 5 asked tokens; accuracy is the last iteration's: the tie at (0, 1) stays wrong
    assert stats[2].tolist() == [2, 2, 1] and stats[1].tolist() == [1, 1, 0]
    assert torch.allclose(stats[0], ((ce + ce2) / 2).sum(0))


# ----------------------------------------------------------------------------- the models

FAMILIES = [("looped", "attention"), ("transformer", "attention"), ("tied", "attention"),
            ("looped", "ssm"), ("transformer", "ssm"), ("tied", "ssm")]


@pytest.mark.parametrize("family,mixer", FAMILIES)
def test_every_family_reads_tokens_and_reads_out_classes(family, mixer):
    torch.manual_seed(0)
    cfg = dict(family=family, mixer=mixer, n_dims=3, n_positions=10, n_embd=16, n_head=2,
               n_layer=2)
    tokens = build_model(ModelConfig(**cfg, vocab=5, n_classes=5))
    xs = torch.randint(0, 5, (4, 10))
    out = tokens(xs, None, n_loops=3, window=2)
    assert out.shape == ((2 if family == "looped" else 1), 4, 10, 5)
    # causal: the logits at a position do not depend on later tokens
    changed = xs.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 5
    assert torch.allclose(tokens(changed, None, n_loops=3)[-1][:, :6],
                          tokens(xs, None, n_loops=3)[-1][:, :6], atol=1e-6)
    # pair prompts with class labels (tabular data): logits at the x tokens
    pairs = build_model(ModelConfig(**cfg, n_classes=2))
    logits = pairs(torch.randn(4, 7, 3), torch.randint(0, 2, (4, 7)), n_loops=3)
    assert logits.shape[1:] == (4, 7, 2)
    if family == "looped":  # early exit compares logits
        exit_logits = tokens.predict(xs, None, n_loops=6, tol=1e9)  # every prompt exits at 2
        assert torch.allclose(exit_logits, tokens(xs, None, n_loops=2)[-1], atol=1e-6)


def test_the_regression_model_is_unchanged_by_the_new_fields():
    torch.manual_seed(0)
    m = build_model(ModelConfig(family="looped", n_dims=4, n_positions=8, n_embd=16, n_head=2))
    assert m.wpe.num_embeddings == 17 and m.read_out.out_features == 1
    assert m(torch.randn(2, 8, 4), torch.randn(2, 8), n_loops=2).shape == (2, 2, 8)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("overrides,message", [
    (["task.hops=12"], "task.hops=12 hops cannot be held by task.length=32"),
    (["task.vocab=1"], "task.vocab=1 must be >= 2"),
    (["model.n_classes=0"], "model.n_classes=0 does not fit task.name=p_hop"),
    (["model.vocab=0"], "model.vocab=0 does not fit task.name=p_hop"),
    (["eval.baselines=[least_squares]"], "eval.baselines=['least_squares'] fits baselines to "
                                         "vector prompts; task.name=p_hop is tokens"),
    (["eval.ood=default"], "eval.ood=default"),
    (["curriculum.points={start:16,end:24,inc:8,interval:100}"],
     "curriculum.points.end=24 differs from task.length=32"),
    (["curriculum.hops.end=6"], "curriculum.hops.end=6 differs from task.hops=8"),
    # with the length held at 16 tokens until step 2000, 5 hops (step 1200) do not fit
    (["curriculum.points={start:16,end:32,inc:8,interval:2000}"],
     "curriculum.hops (at step 1200)=5 hops cannot be held by curriculum.points (at step "
     "1200)=16"),
])
def test_a_p_hop_config_that_cannot_work_is_refused(overrides, message):
    # the preset's loops rule set back to the schedule, whose own checks would come first
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_config(compose_cfg("experiment=p_hop_cpu", *overrides,
                                         "curriculum.loops_rule={kind:fixed,of:hops,a:1,c:0}"))


@pytest.mark.parametrize("overrides,message", [
    (["task=linear_regression", "model.n_classes=2"],
     "model.n_classes=2 does not fit task.name=linear_regression, whose read-out is one "
     "number per token"),
    (["task=linear_regression", "+curriculum.hops={start:1,end:2,inc:1,interval:5}"],
     "curriculum.hops schedules a hop count, which task.name=linear_regression has not"),
    (["task=parity", "model.n_classes=3"], "model.n_classes=3 does not fit task.name=parity"),
])
def test_a_read_out_or_dial_that_does_not_fit_the_task_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_config(compose_cfg(*overrides))


def test_the_command_line_refuses_a_hop_count_in_one_line(tmp_path):
    proc = run_cmd(train_cmd("task=p_hop", "task.length=9", "task.hops=5",
                             f"run_dir={tmp_path / 'run'}"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task.hops=5"), lines
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- training

# TINY's 5 -> 9 tokens (+2 every 3 steps); 2 hops from step 6, when the prompts hold them
TINY_P_HOP = ["task=p_hop", "task.length=9", "task.hops=2", "curriculum.hops.interval=6"]


def test_resume_equals_uninterrupted_for_a_token_task(tiny, tmp_path):
    tiny = [*tiny, *TINY_P_HOP]
    logged = resume_is_bitwise(tmp_path, *tiny, "checkpoint.every_n_steps=4",
                               "test.every_n_steps=4")
    assert {"train/accuracy", "test/accuracy", "test/loss", "curriculum/n_hops"} <= logged
    assert "test/accuracy_pos/008" in logged and "test/accuracy_pos/000" not in logged


def test_evaluate_reports_accuracy_for_a_token_task(tiny, tmp_path, capsys):
    cfg = compose_cfg(*tiny, *TINY_P_HOP, "trainer.max_steps=2", "eval.at_end=true",
                      "eval.n_prompts=40", "eval.n_resamples=20", "eval.extra_loops=[5]",
                      run_dir=tmp_path / "run")
    res = run(cfg).eval_results
    assert res["metric"] == "accuracy" and res["chance"] == 0.25
    assert set(res["curves"]) == {"model", "model@5"}
    mean = res["curves"]["model"]["mean"]
    assert len(mean) == 9 and math.isnan(mean[0]) and 0 <= mean[-1] <= 1
    assert len(res["loop_curve"]["mean"]) == 5
    assert (tmp_path / "run" / "eval" / "accuracy_vs_position.png").is_file()
    # the analysis's regression parts do not apply: asked for, refused in one line
    assert analyze_main([f"run={tmp_path / 'run'}", "parts=[match]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classification task" in err[0], err
    assert not (tmp_path / "run" / "analysis").exists()


@pytest.mark.slow
def test_a_small_looped_model_learns_one_hop(tmp_path):
    # 800 steps (about half a minute on two cores): a 64-wide block looped twice answers the
    # 1-hop question at 16-token positions far above chance (1/4) and above the ~0.74 plateau
    # that the short-range shortcut (the previous occurrence two tokens back) gives
    cfg = compose_cfg(
        "task=p_hop", "task.hops=1", "task.length=16", "curriculum=fixed",
        "curriculum.loops.end=2", "curriculum.window=2", "model.n_positions=16",
        "model.n_embd=64", "model.n_head=4", "optimizer.lr=3e-3", "trainer=cpu", "logger=csv",
        "callbacks=none", "trainer.max_steps=800", "trainer.log_every_n_steps=50",
        "trainer.enable_progress_bar=false", "test.every_n_steps=800", "test.size=512",
        "test.batch_size=512", "checkpoint.every_n_steps=800", "checkpoint.keep_every_n_steps=0",
        "eval.at_end=false", run_dir=tmp_path / "run")
    result = run(cfg)
    assert result.test_metrics["test/accuracy"] > 0.9, result.test_metrics


def test_the_token_presets_compose_at_their_stated_shapes():
    s = Settings.from_config(compose_cfg("experiment=p_hop_cpu"))
    assert (s.function.vocab, s.function.hops, s.function.length) == (4, 8, 32)
    assert s.curriculum.final.n_hops == 8 and s.curriculum.final.n_points == 32
    p = Settings.from_config(compose_cfg("experiment=parity_cpu"))
    assert p.function.n_classes == 2 and p.curriculum.final.n_points == 16
