"""Baselines, error statistics and plots, checked against slow references and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_cfg

from loopformer import baselines as B
from loopformer.config import Settings
from loopformer.errors import ConfigError
from loopformer.stats import Curve, bootstrap_band
from loopformer.tasks import build_task


def sample(task: str, n_prompts: int, n_points: int, n_dims: int, seed: int = 0,
           active_dims: int | None = None, **params):
    t = build_task(task, n_dims, **params)
    g = torch.Generator().manual_seed(seed)
    xs, ys = t.sample(n_prompts, n_points, active_dims=active_dims, generator=g)
    return t, xs, ys


def squared_error(preds: torch.Tensor, ys: torch.Tensor, normalizer: float) -> torch.Tensor:
    """``(preds - ys)^2 / normalizer`` per prompt and position: the zero predictor scores ~1."""
    assert preds.shape == ys.shape
    return (preds - ys).square() / normalizer


def prompt_means(err: torch.Tensor) -> tuple[float, float]:
    """Mean over prompts and its standard error (prompts are the independent units)."""
    return float(err.mean()), float(err.std() / math.sqrt(err.shape[0]))


def lstsq_reference(xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
    x, y = xs.double().numpy(), ys.double().numpy()
    out = np.zeros(y.shape)
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            w = np.linalg.lstsq(x[b, :k], y[b, :k], rcond=None)[0]  # min-norm when k < d
            out[b, k] = x[b, k] @ w
    return out


@pytest.fixture
def one_thread():
    """Many tiny ops: with other jobs on the cores, intra-op threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- least squares / ridge


def test_least_squares_exact_from_d_examples_and_projection_error_below():
    d, n = 8, 14
    task, xs, ys = sample("linear_regression", 3000, n, d)
    err = squared_error(B.LeastSquares()(xs, ys), ys, task.normalizer())  # (P, n)
    assert err[:, d:].mean() < 1e-6
    # min-norm solution = projection of w on span(x_1..x_k): error (d - k) / d
    for k in range(d):
        mean, se = prompt_means(err[:, k])
        assert abs(mean - (d - k) / d) < 5 * se + 1e-9, (k, mean, se)


@pytest.mark.parametrize("active_dims", [None, 3])
def test_least_squares_matches_numpy_min_norm_lstsq(active_dims):
    _, xs, ys = sample("noisy_linear_regression", 12, 15, 6, seed=1, active_dims=active_dims,
                       noise_std=0.5)
    ref = lstsq_reference(xs, ys)
    got = B.LeastSquares()(xs, ys).double().numpy()
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_ridge_matches_closed_form_and_tiny_alpha_is_least_squares():
    d, n, alpha = 5, 12, 0.7
    _, xs, ys = sample("noisy_linear_regression", 6, n, d, seed=2, noise_std=0.3)
    x, y = xs.double().numpy(), ys.double().numpy()
    ref = np.zeros(y.shape)
    for b in range(x.shape[0]):
        for k in range(1, n):
            w = np.linalg.solve(x[b, :k].T @ x[b, :k] + alpha * np.eye(d), x[b, :k].T @ y[b, :k])
            ref[b, k] = x[b, k] @ w
    np.testing.assert_allclose(B.Ridge(alpha)(xs, ys).double().numpy(), ref, atol=1e-4)
    tiny = B.Ridge(1e-8)(xs, ys)
    ls = B.LeastSquares()(xs, ys)
    torch.testing.assert_close(tiny[:, d + 1:], ls[:, d + 1:], atol=1e-4, rtol=1e-4)


def test_ridge_at_noise_variance_beats_least_squares_on_noisy_lr():
    d, n, noise = 8, 16, 0.5
    task, xs, ys = sample("noisy_linear_regression", 2000, n, d, noise_std=noise)
    ridge = squared_error(B.Ridge(noise**2)(xs, ys), ys, task.normalizer())
    ls = squared_error(B.LeastSquares()(xs, ys), ys, task.normalizer())
    # Bayes-optimal: never worse on average, and far better around k = d (LS blows up)
    assert (ridge.mean(0) <= ls.mean(0) + 1e-3).all()
    assert ridge[:, d].mean() < 0.5 * ls[:, d].mean()


# ---------------------------------------------------------------- averaging / neighbours


def test_averaging_one_example_closed_form():
    # pred = x2.(y1 x1) = x2^T x1 x1^T w; error E|(x1 x1^T - I) w|^2 = (d + 2 - 2 + 1) E|w|^2
    # = (d + 1) d, normalised by d: d + 1
    d = 5
    task, xs, ys = sample("linear_regression", 40_000, 2, d, seed=3)
    err = squared_error(B.Averaging()(xs, ys), ys, task.normalizer())[:, 1]
    mean, se = prompt_means(err)
    assert abs(mean - (d + 1)) < 5 * se, (mean, se)


def test_averaging_matches_loop_reference():
    _, xs, ys = sample("linear_regression", 4, 9, 3, seed=4)
    ref = torch.zeros(ys.shape, dtype=torch.float64)
    for b in range(4):
        for k in range(1, 9):
            w = sum(ys[b, i].double() * xs[b, i].double() for i in range(k)) / k
            ref[b, k] = xs[b, k].double() @ w
    torch.testing.assert_close(B.Averaging()(xs, ys).double(), ref, atol=1e-5, rtol=1e-5)


def test_nearest_neighbors_matches_loop_reference():
    _, xs, ys = sample("relu_2nn_regression", 6, 12, 3, seed=5)
    ref = np.zeros(ys.shape)
    x, y = xs.double().numpy(), ys.double().numpy()
    for b in range(6):
        for k in range(1, 12):
            dist = np.linalg.norm(x[b, :k] - x[b, k], axis=1)
            ref[b, k] = y[b, np.argsort(dist)[: min(3, k)]].mean()
    got = B.NearestNeighbors(3)(xs, ys).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ---------------------------------------------------------------- generic properties


FAST = [B.LeastSquares(), B.Ridge(0.1), B.Averaging(), B.NearestNeighbors(3),
        B.GD2LayerNN(hidden_size=8, steps=5)]


@pytest.mark.parametrize("baseline", FAST, ids=lambda b: b.name)
def test_prediction_k_uses_only_earlier_examples(baseline, one_thread):
    _, xs, ys = sample("linear_regression", 3, 10, 4, seed=6)
    base = baseline(xs, ys)
    assert base.shape == ys.shape and base.dtype == ys.dtype
    assert (base[:, 0] == 0).all()
    k = 5
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, k + 1:] += 3.0  # later inputs, and the target at k and after
    ys2[:, k:] -= 7.0
    torch.testing.assert_close(baseline(xs2, ys2)[:, : k + 1], base[:, : k + 1])


@pytest.mark.parametrize("task,params", [
    ("linear_regression", {}),
    ("noisy_linear_regression", {"noise_std": 0.1}),
    ("sparse_linear_regression", {"sparsity": 2}),
    ("relu_2nn_regression", {"hidden_layer_size": 50}),
    ("decision_tree", {"depth": 3}),
])
def test_zero_predictor_scores_one_for_every_task(task, params):
    t, xs, ys = sample(task, 3000, 6, 5, seed=7, **params)
    err = squared_error(torch.zeros_like(ys), ys, t.normalizer()).mean(1)  # per prompt
    mean, se = prompt_means(err)
    expected = 1 + params.get("noise_std", 0) ** 2 / 5  # noise is not in the normalizer
    assert abs(mean - expected) < 5 * se, (mean, se)


# ---------------------------------------------------------------- CPU-fitted baselines


def test_lasso_matches_sklearn_and_recovers_sparse_w():
    from sklearn.linear_model import Lasso

    task, xs, ys = sample("sparse_linear_regression", 6, 24, 10, seed=8, sparsity=2)
    got = B.Lasso(0.01, n_jobs=1)(xs, ys)
    assert got.shape == ys.shape
    x, y = xs.double().numpy(), ys.double().numpy()
    for b in range(2):
        for k in (1, 5, 23):
            est = Lasso(alpha=0.01, fit_intercept=False, max_iter=100_000).fit(x[b, :k], y[b, :k])
            assert abs(got[b, k].item() - x[b, k] @ est.coef_) < 1e-4
    err = squared_error(got, ys, task.normalizer())
    assert err[:, -4:].mean() < 0.05  # zero predictor: 1


def test_lasso_counts_the_fits_that_stopped_at_max_iter(caplog):
    """Fits cut off at max_iter are counted (from the worker processes too), as many as
    scikit-learn warns about for the same fits; with the default max_iter all converge."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    _, xs, ys = sample("sparse_linear_regression", 4, 16, 10, seed=16, sparsity=2)
    x, y = xs.double().numpy(), ys.double().numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for b in range(4):
            for k in range(1, 16):
                Lasso(alpha=0.001, fit_intercept=False, max_iter=3).fit(x[b, :k], y[b, :k])
    expected = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert expected > 0
    cut = B.Lasso(0.001, max_iter=3, n_jobs=2)
    cut(xs, ys)
    assert cut.diagnostics == {"fits": 60, "unconverged_fits": expected}
    assert f"lasso_0.001: {expected} of 60 fits stopped at max_iter=3" in caplog.text
    full = B.Lasso(0.001, n_jobs=1)
    full(xs, ys)
    assert full.diagnostics == {"fits": 60, "unconverged_fits": 0}


def test_decision_tree_matches_sklearn_and_beats_zero():
    from sklearn.tree import DecisionTreeRegressor

    task, xs, ys = sample("decision_tree", 8, 50, 4, seed=9, depth=2)
    got = B.DecisionTree(max_depth=4, n_jobs=1, seed=0)(xs, ys)
    assert got.shape == ys.shape
    x, y = xs.numpy(), ys.double().numpy()
    for b in range(2):
        rng = np.random.RandomState(b)  # prompt b's seed, drawn in the same order
        for k in range(1, 50):
            est = DecisionTreeRegressor(max_depth=4, random_state=rng).fit(x[b, :k], y[b, :k])
            assert abs(got[b, k].item() - est.predict(x[b, k: k + 1])[0]) < 1e-5
    err = squared_error(got, ys, task.normalizer())
    assert err[:, -15:].mean() < 0.5


def test_xgboost_one_booster_per_prompt_equals_separate_fits_and_beats_zero():
    pytest.importorskip("xgboost")
    task, xs, ys = sample("decision_tree", 3, 40, 4, seed=10, depth=2)
    fast = B.XGBoost(n_estimators=6, max_depth=3, n_jobs=1)(xs, ys)
    assert fast.shape == ys.shape
    slow = B.XGBoost(n_estimators=6, max_depth=3, strategy="per_prefix", n_jobs=1)(xs[:2], ys[:2])
    torch.testing.assert_close(fast[:2], slow, atol=1e-5, rtol=1e-5)
    assert squared_error(fast, ys, task.normalizer())[:, -10:].mean() < 0.5


def test_gd_2layer_nn_fits_relu_task_and_runs_under_inference_mode(one_thread):
    # small enough (< 32k hidden activations) that no op is split over threads
    task, xs, ys = sample("relu_2nn_regression", 4, 16, 3, seed=11, hidden_layer_size=20)
    net = B.GD2LayerNN(hidden_size=16, steps=100, lr=2e-2)
    with torch.inference_mode():
        preds = net(xs, ys)
    assert preds.shape == ys.shape and (preds[:, 0] == 0).all()
    assert squared_error(preds, ys, task.normalizer())[:, -6:].mean() < 0.5
    torch.testing.assert_close(net(xs, ys), preds)  # seeded init: deterministic


def test_gd_2layer_nn_equals_one_adam_trained_net_per_prompt_and_prefix(monkeypatch, one_thread):
    """Each (prompt, prefix k) is its own net relu(x W1 + b1) . w2 + b2, trained from the
    baseline's initial weights by torch.optim.Adam on the mean squared error over points
    0..k-1 and read out at point k: a plain per-net loop here. The initial weights are
    recorded from the optimisers the baseline creates (net j's hidden units are the j-th
    block of h columns)."""
    adam, inits = torch.optim.Adam, []

    class RecordingAdam(adam):
        def __init__(self, params, **kw):
            params = list(params)
            inits.append([p.detach().clone() for p in params])
            super().__init__(params, **kw)

    h, steps, lr = 5, 25, 2e-2
    _, xs, ys = sample("relu_2nn_regression", 2, 9, 3, seed=15, hidden_layer_size=4)
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    got = B.GD2LayerNN(hidden_size=h, steps=steps, lr=lr, seed=3)(xs, ys)
    monkeypatch.setattr(torch.optim, "Adam", adam)
    assert (got[:, 0] == 0).all()

    first = 1  # prefixes are fitted in consecutive groups, one optimiser per group
    expected = torch.zeros_like(got)
    for w1, b1, w2, b2 in inits:
        nets = b1.shape[2]
        for b in range(xs.shape[0]):
            for j in range(nets):
                k = first + j
                params = [t.clone().requires_grad_() for t in (
                    w1[b, :, j * h:(j + 1) * h], b1[b, 0, j], w2[b, 0, j], b2[b, 0, j])]
                net = lambda x, p=params: torch.relu(x @ p[0] + p[1]) @ p[2] + p[3]  # noqa: E731
                opt = adam(params, lr=lr)
                for _ in range(steps):
                    opt.zero_grad()
                    ((net(xs[b, :k]) - ys[b, :k]) ** 2).mean().backward()
                    opt.step()
                with torch.no_grad():
                    expected[b, k] = net(xs[b, k])
        first += nets
    assert first == xs.shape[1]  # every prefix 1..n-1 had its net
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_parallel_over_prompts_equals_serial():
    _, xs, ys = sample("decision_tree", 6, 12, 3, seed=12, depth=2)
    serial = B.DecisionTree(max_depth=3, n_jobs=1)(xs, ys)
    torch.testing.assert_close(B.DecisionTree(max_depth=3, n_jobs=2)(xs, ys), serial)


# ---------------------------------------------------------------- config


def test_build_baselines_from_names_and_mappings():
    built = B.build_baselines(["least_squares", "nearest_neighbors_3", "lasso_0.1", "ridge_0.25",
                               "decision_tree_4", "decision_tree", "averaging",
                               {"name": "gd_2layer_nn", "hidden_size": 16, "steps": 3}])
    assert [b.name for b in built] == ["least_squares", "nearest_neighbors_3", "lasso_0.1",
                                       "ridge_0.25", "decision_tree_4", "decision_tree",
                                       "averaging", "gd_2layer_nn_h16_steps3_lr0.005"]
    assert built[4].max_depth == 4 and built[5].max_depth is None


@pytest.mark.parametrize("spec", ["ordinary_least_squares", "lasso", "averaging_3",
                                  {"name": "lasso_0.1", "gamma": 1}, {"alpha": 1}])
def test_build_baselines_rejects_unknown(spec):
    with pytest.raises(ConfigError, match="eval.baselines"):
        B.build_baselines([spec])


@pytest.mark.parametrize("task,suite", [
    ("linear_regression", []),
    ("noisy_linear_regression", ["ridge_0.01"]),  # Bayes-optimal: alpha = noise_std^2
    ("sparse_linear_regression", ["lasso_1", "lasso_0.1", "lasso_0.01", "lasso_0.001"]),
    ("relu_2nn_regression", ["gd_2layer_nn_h100_steps100_lr0.005"]),
    ("decision_tree", ["decision_tree_4"] + (["xgboost_n5_depth4_lr0.5"]
                                             if not B.XGBoost.missing_modules() else [])),
])
def test_default_suites_follow_garg(task, suite):
    """Each task's YAML lists Garg et al.'s suite (eval.suite), built by eval.baselines=default."""
    spec = Settings.from_config(compose_cfg(f"task={task}"))
    common = ["least_squares", "nearest_neighbors_3", "averaging"]
    assert [b.name for b in spec.eval.predictors] == common + suite


def test_default_without_a_suite_and_bad_suite_entries_name_the_key():
    with pytest.raises(ConfigError, match="eval.baselines=default .* sets no eval.suite"):
        B.build_baselines("default", None)
    with pytest.raises(ConfigError, match=r"eval.suite: _target_='loopformer.baselines.Nope'"):
        B.build_baselines("default", [{"_target_": "loopformer.baselines.Nope"}])
    with pytest.raises(ConfigError, match=r"eval.suite: Lasso.alpha='x' must be a number"):
        B.build_baselines("default", [{"_target_": "loopformer.baselines.Lasso", "alpha": "x"}])


# ---------------------------------------------------------------- stats and plots


def test_bootstrap_band_contains_mean_narrows_and_is_seeded():
    g = torch.Generator().manual_seed(13)
    errors = torch.rand(4000, 7, generator=g) * torch.arange(1, 8)  # (P, n)
    wide = bootstrap_band(errors[:100])
    narrow = bootstrap_band(errors)
    for c in (wide, narrow):
        assert all(lo <= m <= hi for m, lo, hi in zip(c.mean, c.low, c.high, strict=True))
    width = lambda c: np.subtract(c.high, c.low)  # noqa: E731
    assert (width(narrow) < 0.5 * width(wide)).all()  # ~ 1/sqrt(40)
    assert bootstrap_band(errors[:100], seed=3) == bootstrap_band(errors[:100], seed=3)
    assert bootstrap_band(errors[:100], seed=3) != bootstrap_band(errors[:100], seed=4)
    torch.testing.assert_close(torch.tensor(narrow.mean, dtype=torch.float64),
                               errors.double().mean(0))
    d = narrow.to_dict()
    assert set(d) == {"mean", "low", "high"} and Curve.from_dict(d) == narrow


def test_a_90_percent_band_of_the_mean_covers_the_true_mean_90_percent_of_the_time():
    """2000 independent datasets of 100 normal errors (one per column, true mean 2): the
    default band should miss the true mean below in about 5% of them and above in about 5%.
    Binomial standard deviation of a 5% rate over 2000 datasets: 0.5 percentage points."""
    g = torch.Generator().manual_seed(14)
    true_mean, n_datasets = 2.0, 2000
    errors = true_mean + torch.randn(100, n_datasets, generator=g, dtype=torch.float64)
    band = bootstrap_band(errors, seed=1)
    low, high = torch.tensor(band.low), torch.tensor(band.high)
    below = (high < true_mean).double().mean().item()  # band entirely below the truth
    above = (low > true_mean).double().mean().item()
    # percentile bootstrap of a mean of n = 100 normals: ~0.4% under the nominal rate overall
    assert abs(below - 0.05) < 0.02 and abs(above - 0.05) < 0.02, (below, above)
    assert abs((1 - below - above) - 0.90) < 0.025, (below, above)


def _assert_png(path):
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_plots_write_readable_pngs(tmp_path):
    from loopformer.results import plots, study_plots

    n = 12
    k = np.arange(n)
    curve = lambda scale: {"mean": list(scale / (1 + k)), "low": list(0.8 * scale / (1 + k)),  # noqa: E731
                           "high": list(1.2 * scale / (1 + k))}
    curves = {"looped_b12": curve(1.0),
              "least_squares": {"kind": "baseline", "mean": [1.0] * 5 + [0.0] * 7},
              "averaging": {"kind": "baseline", **curve(2.0)}}
    p1 = plots.plot_error_vs_examples(curves, tmp_path / "a.png", title="LR", n_dims=5)
    loops = {"loops": [1, 2, 4, 8, 12, 16, 24], "mean": [1, .5, .2, .05, .01, .011, .02]}
    loops |= {"low": [0.9 * m for m in loops["mean"]], "high": [1.1 * m for m in loops["mean"]]}
    p2 = plots.plot_error_vs_loops(loops, trained_loops=12, path=tmp_path / "sub" / "b.png")
    p3 = study_plots.plot_study({"b=4": curve(1.0), "b=8": bootstrap_band(torch.rand(50, n))},
                          tmp_path / "c.png", title="loops")
    p4 = plots.plot_error_vs_loops({1: 0.5, 2: 0.1, 4: 0.05}, 2, tmp_path / "d.png")
    p5 = plots.plot_error_vs_loops({"1": {"mean": 0.5, "low": 0.4, "high": 0.6},
                                    "3": {"mean": 0.2, "low": 0.1, "high": 0.3}}, 3,
                                   tmp_path / "e.png")
    for p in (p1, p2, p3, p4, p5):
        _assert_png(p)
