"""The out-of-distribution suite against facts: each shift's distribution, its normaliser,
least squares under it, and the batched per-position scoring against the literal loop."""

import pytest
import torch

from loopformer.baselines import LeastSquares
from loopformer.errors import ConfigError
from loopformer.models import ModelConfig, build_model
from loopformer.ood import Shift, per_position_prompts, resolve
from loopformer.tasks import build_task

D, N = 6, 13
SUITE = ["standard", "random_quadrants", "orthogonal_train_test", "overlapping_train_test",
         "half_subspace", "skewed", "scale_x_0.333", "scale_x_3", "scale_y_0.5", "scale_y_2",
         "noisy_linear_regression"]


def draw(name, n_prompts=256, n=N, task="linear_regression", seed=0):
    g = torch.Generator().manual_seed(seed)
    return Shift.parse(name).sample(build_task(task, D), n_prompts, n, D, g)


def test_skewed_covariance_has_the_stated_spectrum():
    p = draw("skewed", n_prompts=4000, n=10)
    x = p.xs.reshape(-1, D).double()
    eig = torch.linalg.eigvalsh(x.T @ x / len(x)).flip(0)
    inv_sq = 1 / torch.arange(1, D + 1, dtype=torch.float64) ** 2
    torch.testing.assert_close(eig, D * inv_sq / inv_sq.sum(), rtol=0.05, atol=0.01)


def test_half_subspace_has_rank_d_over_2():
    x = draw("half_subspace").xs.reshape(-1, D).double()
    s = torch.linalg.svdvals(x)
    assert (s > 1e-6 * s[0]).sum() == D // 2
    assert (x.square().sum(1).mean() - D).abs() < 0.3  # trace d


def test_orthogonal_query_is_orthogonal_to_the_examples_before_it():
    p = draw("orthogonal_train_test")
    assert p.queries.shape[1] == D  # no orthogonal direction once k >= d
    for i in range(1, D):
        dots = (p.xs[:, :i] * p.queries[:, i:i + 1]).sum(-1)  # (P, i)
        assert dots.abs().max() < 1e-4
    torch.testing.assert_close(p.queries.norm(dim=-1), p.xs[:, :D].norm(dim=-1))


def test_overlapping_query_repeats_an_earlier_example():
    p = draw("overlapping_train_test")
    for i in range(1, N):
        gap = (p.xs[:, :i] - p.queries[:, i:i + 1]).abs().amax(-1).amin(-1)  # (P,)
        assert gap.max() == 0


def test_random_quadrants_puts_the_examples_in_one_orthant():
    p = draw("random_quadrants")
    signs = p.xs.sign()
    assert (signs == signs[:, :1]).all()
    assert (p.queries.sign() != signs).any(1).float().mean() > 0.9  # the query is not folded


@pytest.mark.parametrize("name", SUITE)
def test_zero_predictor_scores_about_one(name):
    shift = Shift.parse(name)
    p = draw(name, n_prompts=4000)
    ys = p.ys if p.queries is None else p.query_ys
    assert abs(ys.square().mean().item() / shift.normalizer(D) - 1) < 0.1


# orthogonal queries exist only below d examples: nothing to check there
@pytest.mark.parametrize("name", [s for s in SUITE if s not in (
    "noisy_linear_regression", "orthogonal_train_test")])
def test_least_squares_is_exact_from_d_examples(name):
    p = draw(name, n_prompts=64)
    if p.queries is None:
        preds, ys = LeastSquares()(p.xs, p.ys), p.ys
    else:  # prompt i scored at its point i, the query
        xs, ys = per_position_prompts(p)
        P, m = p.query_ys.shape
        preds = LeastSquares()(xs, ys).view(P, m, -1).diagonal(dim1=1, dim2=2)
        ys = p.query_ys
    start = D // 2 if name == "half_subspace" else D
    err = (preds - ys)[..., start:].abs().max()
    assert err < 1e-3 * Shift.parse(name).normalizer(D) ** 0.5


@pytest.mark.parametrize("family,extra", [("looped", {}), ("transformer", {}), ("tied", {}),
                                          ("looped", {"keep_tokens": 10,
                                                      "skip_connection": True}),
                                          ("looped", {"inject_every_layer": True,
                                                      "n_layer": 2})])
@pytest.mark.parametrize("name", ["random_quadrants", "orthogonal_train_test"])
def test_side_queries_equal_one_prompt_per_position(family, extra, name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, n_dims=D, n_positions=N, n_embd=32,
                                    n_head=2, n_layer=extra.pop("n_layer", 2), **extra)).eval()
    p = draw(name, n_prompts=8)
    with torch.no_grad():
        batched = model(p.xs, p.ys, n_loops=3, queries=p.queries)  # (K, P, m)
        for i in range(p.queries.shape[1]):  # Garg et al.'s loop: one prompt per position
            xs, ys = p.xs.clone(), p.ys.clone()
            xs[:, i], ys[:, i] = p.queries[:, i], p.query_ys[:, i]
            torch.testing.assert_close(batched[..., i], model(xs, ys, n_loops=3)[..., i],
                                       rtol=1e-4, atol=1e-5)


def test_options_are_checked():
    suite = SUITE
    assert resolve("none", suite) == ()
    assert resolve("default", suite) == tuple(suite)
    assert resolve(["scale_x_7"], suite) == ("scale_x_7",)
    for bad, key in [(["bogus"], "unknown shift 'bogus'"), (["scale_x_0"], "must be > 0"),
                     (["scale_y_-2"], "must be > 0"), ("sometimes", "not none, default")]:
        with pytest.raises(ConfigError, match=key):
            resolve(bad, suite)
    with pytest.raises(ConfigError, match="does not apply"):
        resolve(["skewed"], ["standard"])
    with pytest.raises(ConfigError, match="no out-of-distribution suite"):
        resolve("default", [])
