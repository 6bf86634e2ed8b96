"""python -m loopformer.analyze: each measurement against a fact that does not depend on it."""

import pytest
import torch

from loopformer.analyze import algorithms as alg
from loopformer.analyze.__main__ import main
from loopformer.analyze.dynamics import PowerIteration, top_singular_value
from loopformer.analyze.exits import (
    BEATS_ALL,
    NO_THRESHOLD,
    evaluate_rule,
    exit_loops,
    oracle_headroom,
)
from loopformer.analyze.probes import YangProbe, ridge_probes, yang_probes
from loopformer.analyze.run import summary
from loopformer.errors import ConfigError
from loopformer.models import STOP_RULES, build_model


def lr_prompts(P=64, n=12, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(P, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(P, d, generator=g, dtype=torch.float64)
    return xs, torch.einsum("pnd,pd->pn", xs, w), w


def condition(xs, k):
    """Condition number (P,) of X_k^T X_k on its row space (nonzero singular values of X_k)."""
    sv = torch.linalg.svdvals(xs[:, :k])  # (P, min(k, d))
    return (sv[:, 0] / sv[:, -1]).square()


def test_newton_converges_to_least_squares():
    xs, ys, _ = lr_prompts()
    pre = alg.prefixes(xs, ys)
    newton = alg.newton(pre, 40)  # (40, P, n)
    for k in range(1, xs.shape[1]):  # the pseudo-inverse solution on k examples
        w = torch.linalg.pinv(xs[:, :k]) @ ys[:, :k].unsqueeze(-1)  # (P, d, 1)
        ref = (xs[:, k] * w.squeeze(-1)).sum(-1)
        # the error factor per eigenvalue is (1 - lam^2/lam_max^2)^(2^j): 40 steps reach any
        # condition number below ~1e5
        ok = condition(xs, k) < 1e4
        assert ok.float().mean() > 0.5
        torch.testing.assert_close(newton[-1, ok, k], ref[ok], rtol=1e-8, atol=1e-8)


def test_gradient_descent_with_step_one_over_l_never_increases_the_loss():
    xs, ys, _ = lr_prompts()
    pre = alg.prefixes(xs, ys)
    losses = []
    for k in [*range(0, 50), 100, 1000, 5000]:
        w = alg.gd_weights(pre, 1.0, k)  # (P, n, d)
        r = torch.einsum("pid,pnd->pni", xs, w) - ys.unsqueeze(1)  # (P, n prefix, i example)
        mask = torch.arange(xs.shape[1]).view(1, 1, -1) < torch.arange(xs.shape[1]).view(1, -1, 1)
        losses.append((r.square() * mask).sum(-1))  # (P, n)
    losses = torch.stack(losses)
    assert (losses[1:] <= losses[:-1] * (1 + 1e-9) + 1e-12).all()
    # and reaches the least-squares loss (0 here) where (1 - 1/condition)^5000 is tiny
    for k in range(6, xs.shape[1]):
        ok = condition(xs, k) < 100
        assert (losses[-1, ok, k] < 1e-8 * losses[0, ok, k]).all()


def gd_by_hand(xs, ys, k_iter):
    """Predictions (P, n) of k_iter gradient-descent steps with step 1/L, by explicit loops."""
    P, n, d = xs.shape
    out = torch.zeros(P, n, dtype=xs.dtype)
    for p in range(P):
        for k in range(1, n):
            X, y = xs[p, :k], ys[p, :k]
            H = X.T @ X / k
            eta = 1 / torch.linalg.eigvalsh(H)[-1]
            w = torch.zeros(d, dtype=xs.dtype)
            for _ in range(k_iter):
                w = w - eta * (H @ w - X.T @ y / k)
            out[p, k] = xs[p, k] @ w
    return out


def test_synthetic_model_at_gd_iterate_3t_is_matched_with_k_star_3t():
    xs, ys, _ = lr_prompts(P=12, n=8, d=4)
    loops = range(1, 6)
    model_preds = torch.stack([gd_by_hand(xs, ys, 3 * t) for t in loops])  # (L, P, n)
    pre = alg.prefixes(xs, ys)
    iters = list(range(0, 20))
    algo = alg.gradient_descent(pre, 1.0, iters)
    sim = alg.cosine_match(model_preds[:, :, 1:] - ys[:, 1:], algo[:, :, 1:] - ys[:, 1:])
    k_star, s = alg.best_match(sim, iters)
    assert k_star == [3 * t for t in loops]
    assert s == pytest.approx([1.0] * 5, abs=1e-9)


def test_probe_reads_back_a_linearly_encoded_w_and_is_at_chance_on_the_control():
    g = torch.Generator().manual_seed(0)
    P, d, C = 800, 5, 32
    A = torch.randn(d, C, generator=g)
    w = torch.randn(P, d, generator=g)
    states = w @ A + 0.01 * torch.randn(P, C, generator=g)
    fit = ridge_probes(states[None, :600], w[None, :600], states[None, 600:], w[None, 600:])
    assert fit["relative"].item() < 0.01
    ones = torch.ones(600, d)  # the control: every prompt has w = 1
    ctl_states = ones @ A + 0.01 * torch.randn(600, C, generator=g)
    ctl = ridge_probes(ctl_states[None], ones[None], states[None, 600:], w[None, 600:])
    assert ctl["mse"].item() == pytest.approx(ctl["chance_mse"].item(), rel=0.05)


def test_jacobian_of_a_halving_map_has_top_singular_value_one_half():
    z = torch.randn(3, 6, 4)
    sigma, _ = top_singular_value(lambda z: (0.5 * z,), (z,))
    torch.testing.assert_close(sigma, torch.full((3,), 0.5), rtol=1e-5, atol=1e-6)


def test_jacobian_of_a_linear_map_matches_its_svd():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(2, 8, 8, generator=g, dtype=torch.float64)  # one map per prompt
    z = torch.randn(2, 8, dtype=torch.float64)
    sigma, _ = top_singular_value(lambda z: (torch.einsum("bij,bj->bi", M, z),), (z,),
                                  PowerIteration(max_iter=2000, tol=1e-12))
    torch.testing.assert_close(sigma, torch.linalg.svdvals(M)[:, 0], rtol=1e-6, atol=1e-8)


def test_oracle_headroom_chooses_the_fixed_depth_on_the_calibration_prompts():
    err = torch.tensor([[0.5, 0.1, 0.9, 0.2],  # rows: depths 1..3, columns: prompts
                        [0.2, 0.4, 0.3, 0.6],
                        [0.6, 0.3, 0.1, 0.1]])
    calibration = torch.tensor([True, True, False, False])
    out = oracle_headroom(err, calibration)
    # calibration means per depth: 0.3, 0.3, 0.45 -> depth 1 (the first lowest), although
    # the held-out prompts (2, 3) are best at depth 3 (0.1): scored there, 0.55
    assert out["best_fixed_loop"] == 1
    assert out["best_fixed_error"] == pytest.approx(0.55)
    assert out["oracle_error"] == pytest.approx((0.1 + 0.1) / 2)  # held out, own best depth
    assert out["headroom"] == pytest.approx(0.55 - 0.1)


def test_exit_bookkeeping_by_hand():
    """Two calibration and two held-out prompts, three loops; the threshold is chosen on the
    calibration prompts and its verdict read on the held-out ones."""
    nan = float("nan")
    err = torch.tensor([[0.9, 0.9, 0.9, 0.9],
                        [0.2, 0.2, 0.1, 0.1],
                        [0.4, 0.4, 0.3, 0.3]])  # (L=3, P=4)
    change = torch.tensor([[nan] * 4, [0.01, 0.5, 0.01, 0.01], [0.5, 0.5, 0.5, 0.5]])
    calibration = torch.tensor([True, True, False, False])
    out = evaluate_rule(err, change, [0.1], calibration, reference_loop=3)
    # tol 0.1: exits 2, 3 (calibration: error (0.2 + 0.4) / 2 = 0.3 <= 0.4 at b = 3, 2.5
    # loops) and 2, 2 held out: error 0.1 in 2 loops, below every held-out fixed depth
    assert out["chosen_tol"] == 0.1
    assert out["chosen"]["error"] == pytest.approx(0.1)
    assert out["chosen"]["mean_loops"] == 2
    assert out["chosen"]["fixed_loops_at_equal_error"] == 2  # fixed depth 2 is 0.1 too
    assert out["verdict"] == "saves 0.0 loops"
    err[1, 2:] = torch.tensor([0.05, 0.15])
    change[1, 2:] = torch.tensor([0.01, 0.5])  # prompt 3 runs to loop 3: (0.05 + 0.3) / 2
    beats = evaluate_rule(err, change, [0.1], calibration, 3)
    assert beats["chosen"]["error"] == pytest.approx(0.175)
    # held-out fixed depths: 0.9, 0.1, 0.3 -> depth 2 reaches 0.175: saves 2 - 2.5 < 0
    assert beats["verdict"] == "costs 0.5 loops"
    err[1, 2:] = torch.tensor([0.05, 0.5])  # fixed depth 2: 0.275 > 0.175; depth 3: 0.3
    assert evaluate_rule(err, change, [0.1], calibration, 3)["verdict"] == BEATS_ALL
    # a reference error no threshold reaches on the calibration prompts
    none = evaluate_rule(err, change, [0.1], calibration, reference_loop=2)
    assert none["chosen"] is None and none["verdict"] == NO_THRESHOLD


def test_exit_loops_follow_the_first_change_below_tol():
    change = torch.tensor([[float("nan")] * 3, [0.5, 0.01, 0.5], [0.02, 0.5, 0.5]])
    assert exit_loops(change, 0.03).tolist() == [3, 2, 3]


def test_predict_early_exit_agrees_with_the_analysis_rule():
    torch.manual_seed(0)
    model = build_model(dict(n_dims=3, n_positions=6, n_embd=16, n_head=2)).double().eval()
    xs, ys = torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    zs = [z for _, z, _ in model.iterate(xs, ys, 30)]
    for name, rule in STOP_RULES.items():
        steps = zip(zs, zs[1:], strict=False)
        change = torch.stack([torch.full((5,), float("nan"))] + [
            rule.change(a, b, model.read(a), model.read(b)) for a, b in steps])
        tol = float(change[1:].median().detach())
        preds, exits = model.predict_until(xs, ys, 30, tol, name)
        assert exits.tolist() == exit_loops(change, tol).tolist()
        ref = torch.stack([model.read(zs[t - 1])[i] for i, t in enumerate(exits.tolist())])
        torch.testing.assert_close(preds, ref, rtol=0, atol=0)


def test_iterate_matches_forward():
    torch.manual_seed(0)
    for kw in ({}, {"skip_connection": True}, {"family": "tied", "n_layer": 3}):
        model = build_model(dict(n_dims=3, n_positions=6, n_embd=16, n_head=2, **kw)).eval()
        xs, ys = torch.randn(2, 6, 3), torch.randn(2, 6)
        n = 4 if model.cfg.family == "looped" else 3
        last = [z for _, z, _ in model.iterate(xs, ys, n)][-1]
        ref = model(xs, ys, n_loops=n)[-1]
        torch.testing.assert_close(model.read(last), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, fragment", [
    ([], "run=RUN_DIR"),
    (["run=/nonexistent_dir"], "run=/nonexistent_dir is not a directory"),
    (["run=.", "parts=[dynamics,foo]"], "parts="),
    (["run=.", "n_prompts=3"], "n_prompts=3 must be >= 16"),
    (["run=.", "n_prompts=abc"], "n_prompts='abc' must be an integer"),
    (["run=.", "max_loops=0"], "max_loops=0 must be >= 1"),
    (["run=.", "seed=1.5"], "seed=1.5 must be an integer"),
    (["run=.", "device=tpu9"], "device="),
    (["run=.", "colour=red"], "unknown option colour"),
])
def test_bad_options_are_refused_in_one_line(args, fragment, capsys):
    assert main(args) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0]



@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny looped and a tiny transformer run, laid out as a study's runs/."""
    from conftest import TINY, compose_cfg

    from loopformer.training import run

    study = tmp_path_factory.mktemp("study")
    looped, tf = study / "looped_run", study / "transformer_run"
    run(compose_cfg(*TINY, "trainer.max_steps=4", "eval.at_end=true", "eval.n_prompts=32",
                    "eval.n_resamples=50", run_dir=looped))
    run(compose_cfg(*TINY, "model=transformer", "model.n_layer=2", "trainer.max_steps=2",
                    "eval.at_end=true", "eval.n_prompts=32", "eval.n_resamples=50",
                    run_dir=tf))
    # a study's layout, runs/<variant>/seed=<s> (a "=" a Hydra override cannot hold)
    for name, path in (("looped", looped), ("transformer", tf)):
        (study / "runs" / name).mkdir(parents=True)
        path.rename(study / "runs" / name / "seed=1")
    looped, tf = study / "runs" / "looped" / "seed=1", study / "runs" / "transformer" / "seed=1"
    return study, looped, tf


@pytest.mark.slow
def test_end_to_end_looped_and_transformer_and_study(tiny_runs):
    import json

    study, looped, tf = tiny_runs
    assert main([f"run={looped}", "n_prompts=64", "max_loops=12"]) == 0
    r = json.loads((looped / "analysis" / "analysis.json").read_text())
    assert r["parts"] == ["dynamics", "match", "probe", "exit"]
    assert len(r["dynamics"]["error"]["last"]["mean"]) == 12
    two_d = r["dynamics"]["error"]["k=2d"]
    assert two_d["clipped"] == (2 * r["n_dims"] > r["n_points"] - 1)
    assert two_d["k"] == min(2 * r["n_dims"], r["n_points"] - 1)
    assert sorted(r["dynamics"]["jacobian"]["sigma"]) == ["1", "12", "3"]
    b = r["trained_depth"]
    classes = r["dynamics"]["classes"]["at"]
    assert list(classes) == [str(t) for t in sorted({b, 5 * b, 20 * b, 12}) if t <= 12]
    printed = summary(r)  # what python -m loopformer.analyze logs
    assert f"loop {b}: fixed point {classes[str(b)]['fixed']:.1%}, cycle" in printed
    for shares in classes.values():  # every prompt in exactly one class
        assert shares["fixed"] + shares["cycle"] + shares["moving"] == pytest.approx(1)
    sc = r["dynamics"]["state_change"]
    assert all(m <= q <= x for m, q, x in zip(sc["median"], sc["p90"], sc["max"], strict=True))
    for s in r["dynamics"]["jacobian"]["sigma"].values():
        assert s["at_fixed_points"]["n"] + s["elsewhere"]["n"] == 16
    assert {"newton", "gd_step=1/L"} <= set(r["match"]["algorithms"])
    for png in ("dynamics", "match_heatmaps", "match_k_star", "exit", "probe"):
        assert (looped / "analysis" / f"{png}.png").stat().st_size > 1000
    assert main([f"run={tf}", "n_prompts=64", "parts=[dynamics]"]) == 2  # not defined
    assert main([f"run={looped}", "n_prompts=64", "parts=[probe]", "probe=yang",
                 "probe_epochs=5"]) == 0
    yang = json.loads((looped / "analysis" / "analysis.json").read_text())["probe"]
    assert yang["kind"] == "yang" and len(yang["targets"]["xty_over_n"]["mse"]) == b + 1
    assert main([f"study={study}", "n_prompts=64", "max_loops=12"]) == 0
    rep = json.loads((study / "analysis.json").read_text())
    assert set(rep["variants"]) == {"looped", "transformer"}
    tr = json.loads((tf / "analysis" / "analysis.json").read_text())
    assert tr["parts"] == ["match", "probe"]
    assert len(tr["probe"]["targets"]["xty_over_k"]["mse"]) == 2  # one per layer
    # the study data's compact records, and the plots drawn from them
    from loopformer.results.analysis_record import depth_grid, record
    from loopformer.results.analysis_tables import table_analysis
    from loopformer.results.study_plots import plot_analysis_by_variant

    rec, rec_tf = record(r), record(tr)
    assert rec["dynamics"]["loops"] == depth_grid(12, b)
    assert rec["dynamics"]["loops"][: 2 * b] == list(range(1, 2 * b + 1))
    assert rec["dynamics"]["loops"][-1] == 12
    assert rec["dynamics"]["error"]["last"]["mean"][-1] == pytest.approx(
        r["dynamics"]["error"]["last"]["mean"][-1], rel=1e-4)
    assert "dynamics" not in rec_tf and rec_tf["not_defined"]["dynamics"]
    data = {"study": "tiny", "variants": ["looped", "transformer"],
            "runs": [{"variant": "looped", "seed": 1, "escape_step": 1, "analysis": rec},
                     {"variant": "transformer", "seed": 1, "escape_step": 1,
                      "analysis": rec_tf}]}
    rows = table_analysis(data, {"part": "dynamics"})
    assert rows[3].startswith("| transformer | 1 | not defined: its layers are distinct maps")
    shares = table_analysis(data, {"part": "classes"})[2]
    assert shares.startswith(f"| looped | 1 | {b}: ") and " / " in shares
    per_seed = table_analysis(data, {"part": "exit_seeds"})
    assert len(per_seed) == 3 and per_seed[2].startswith("| looped | 1 | yes |")
    pngs = plot_analysis_by_variant(data, study / "plots")
    assert [p.name for p in pngs] == [f"analysis_tiny_{part}.png"
                                      for part in ("dynamics", "k_star", "probe")]


def _fake_analysis(seed: int, scale: float) -> dict:
    """An analysis.json of a looped run with b = 2 and 4 loops, every figure chosen by hand."""
    err = [0.5 * scale, 0.1 * scale, 0.05 * scale, 0.04 * scale]
    band = {"mean": err, "low": err, "high": err}
    return {
        "family": "looped", "unit": "loop", "trained_depth": 2, "n_prompts": 64, "seed": 0,
        "max_loops": 4, "not_defined": {}, "seconds": {"total": 1.234}, "cpu_seconds": 2.0,
        "dynamics": {"error": {"last": {"k": 10, **band}, "k=d": {"k": 5, **band}},
                     "state_change": {"mean": [0.1, 0.01 * scale, 0.0005]},
                     "converged_below": {"level": 1e-3, "loop": 4, "stays_below": True},
                     "jacobian": {"prompts": 16, "sigma": {
                         "1": {"mean": 0.9 * scale, "max": 1.0}, "2": {"mean": 0.5, "max": 0.6}}}},
        "match": {"algorithms": {"newton": {"k_star": [1, 3 + seed, 5, 6],
                                            "similarity": [0.9, 0.95, 0.97, 0.98]}},
                  "closed_forms": {"least_squares": [0.5, 0.9, 0.95, 0.99]}},
        "exit": {"fixed_depth_held_out": err, "split": {"calibration": 32, "held_out": 32},
                 "oracle_held_out": {"best_fixed_loop": 4, "best_fixed_error": 0.04 * scale,
                                     "oracle_error": 0.03 * scale, "headroom": 0.01 * scale},
                 "rules": {"state": {"chosen_tol": 0.01, "reference_loop": 2, "chosen": {
                     "error": 0.09 * scale, "mean_loops": 1.5 + seed, "exit_quantiles": {},
                     "fixed_loops_at_equal_error": 3, "loops_saved_at_equal_error": 1.5}}}},
        "probe": {"split": {"train": 48, "test": 16}, "budget": "ridge",
                  "targets": {"xty_over_k": {"relative": [0.6, 0.4 * scale],
                                             "control_relative": [1.0, 1.1]}}},
    }


def test_depth_grid_keeps_every_loop_to_2b_then_a_log_grid():
    from loopformer.results.analysis_record import depth_grid

    g = depth_grid(240, 12)
    assert g[:24] == list(range(1, 25)) and {60, 240} <= set(g)
    assert g == sorted(set(g)) and len(g) < 24 + 15
    assert depth_grid(5, 12) == [1, 2, 3, 4, 5]


def test_analysis_tables_by_hand():
    from loopformer.results.analysis_record import record
    from loopformer.results.analysis_tables import table_analysis

    runs = [{"variant": "v", "seed": s, "escape_step": e,
             "analysis": record(_fake_analysis(s, scale))}
            for s, e, scale in ((1, 100, 1.0), (2, 300, 2.0), (3, None, 10.0))]
    data = {"study": "s", "variants": ["v"], "runs": runs}
    dyn = table_analysis(data, {"part": "dynamics"})[2]
    # over the escaped seeds 1 and 2 only; b = 2, 5b = 10 is past the 4 loops analysed
    assert dyn.startswith("| v | 2 (not escaped: 3) | 2 | 0.1500 [0.1000, 0.2000] | - | "
                          "4: 0.0600 [0.0400, 0.0800] | 1.00e-01 | 5.00e-04 | 4 | "
                          "1: 1.350 [0.900, 1.800]; 2: 0.500 |")
    match = table_analysis(data, {"part": "match"})[2]
    assert match == "| v | 2 (not escaped: 3) | 2 | 1 -> 4.5 [4, 5] (0.950) | 0.900 |"
    probe = table_analysis(data, {"part": "probe"})[2]
    assert probe == ("| v | 2 (not escaped: 3) | 2 | 0.600 -> 0.600 [0.400, 0.800]; lowest at "
                     "1 (0.600); control 1.100 |")
    ex = table_analysis(data, {"part": "exit"})[2]
    assert ex == ("| v | 2 (not escaped: 3) | 2 | 0.1500 [0.1000, 0.2000] | 0.0600 [0.0400, "
                  "0.0800] at 4 | 0.0450 [0.0300, 0.0600] | 0.0150 [0.0100, 0.0200] | "
                  "tol 0.01: 0.1350 [0.0900, 0.1800] in 3.0 [2.5, 3.5]; saves 1.5 |")
    cost = table_analysis(data, {"part": "cost"})[2]
    assert cost == "| v | 3 | 64 | 1 | - | - | - | - | 2 |"  # every analysed run
    with pytest.raises(ConfigError, match=r"part=nope must be one of"):
        table_analysis(data, {"part": "nope"})


def known_states(N, constant=False, seed=0):
    """States (U=2, N, T=6, C=8): unit 0 holds the target (N, 3) linearly at position 3
    (mixed by a fixed matrix), unit 1 only noise."""
    g = torch.Generator().manual_seed(seed)
    target = torch.ones(N, 3) if constant else torch.randn(N, 3, generator=g)
    mix = torch.randn(3, 8, generator=torch.Generator().manual_seed(99))
    states = torch.randn(2, N, 6, 8, generator=g)
    states[0, :, 3] = target @ mix
    return states, target.unsqueeze(0)  # (U, N, T, C), (K=1, N, D)


def test_yang_probe_finds_a_target_held_at_one_position():
    train, test, cfg = known_states(256), known_states(256, seed=1), YangProbe(epochs=200, lr=3e-2)
    out = yang_probes(*train, *test, cfg)
    assert out["relative"][0, 0] < 0.05  # the target is there: read almost exactly
    assert out["relative"][1, 0] > 0.9  # noise: no better than the mean
    # the control: probes trained where the target never varies, tested on the real prompts
    control = yang_probes(*known_states(256, constant=True), *test, cfg)
    assert control["relative"][0, 0] > 0.9
