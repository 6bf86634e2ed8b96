"""Tasks (DESIGN.md section 4): normalisers, active dims, sparsity, noise, the vectorised
decision tree against a per-point reference, reproducibility, devices and config errors."""

import pytest
import torch

from loopformer import Batch, ConfigError, build_task

NAMES = ["linear_regression", "noisy_linear_regression", "sparse_linear_regression",
         "relu_2nn_regression", "decision_tree"]


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def sample_many(task, n_prompts, n_points, active_dims, seed, chunk=5000, **kw):
    """Draw in chunks (the ReLU net's weights are large) and concatenate."""
    g = gen(seed)
    parts = [task.sample(min(chunk, n_prompts - i), n_points, active_dims, generator=g, **kw)
             for i in range(0, n_prompts, chunk)]
    return Batch(torch.cat([p.xs for p in parts]), torch.cat([p.ys for p in parts]))


# ----------------------------------------------------------------------------- moments


@pytest.mark.parametrize("active", [None, 7])
@pytest.mark.parametrize("name", NAMES)
def test_normalizer_is_mean_square_target(name, active):
    """mean(y^2) / normalizer is 1 within 5% over 20k prompts (noise variance removed)."""
    task = build_task(name, 20)
    xs, ys = sample_many(task, 20_000, 5, active, seed=123)
    assert xs.shape == (20_000, 5, 20) and ys.shape == (20_000, 5)
    d_act = 20 if active is None else active
    expected = {"linear_regression": d_act, "noisy_linear_regression": d_act,
                "sparse_linear_regression": 3, "relu_2nn_regression": d_act,
                "decision_tree": 1}[name]
    assert task.normalizer(active) == pytest.approx(expected)
    noise_var = task.noise_std**2 if name == "noisy_linear_regression" else 0.0
    ratio = (ys.double().pow(2).mean().item() - noise_var) / task.normalizer(active)
    assert abs(ratio - 1) < 0.05, ratio


def test_noisy_linear_regression_default_noise_is_seed_value():
    assert build_task("noisy_linear_regression", 5).noise_std == pytest.approx(0.1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("active", [1, 4, 10])
def test_inactive_coordinates_are_zero(name, active):
    task = build_task(name, 10, **({"sparsity": 1} if name.startswith("sparse") else {}))
    xs, ys = task.sample(64, 9, active, generator=gen(3))
    assert torch.all(xs[..., active:] == 0)
    assert torch.all(xs[..., :active] != 0)
    assert torch.isfinite(ys).all()


@pytest.mark.parametrize("active", [None, 6])
def test_sparse_weights_have_k_nonzeros_inside_active_dims(active):
    """Recover w on a noise-free prompt with more points than dims by least squares."""
    task = build_task("sparse_linear_regression", 10, sparsity=3)
    d_act = 10 if active is None else active
    xs, ys = task.sample(300, 16, active, generator=gen(5), dtype=torch.float64)
    w = torch.linalg.lstsq(xs[..., :d_act], ys.unsqueeze(-1)).solution.squeeze(-1)  # (B, d')
    torch.testing.assert_close(xs[..., :d_act] @ w.unsqueeze(-1), ys.unsqueeze(-1),
                               rtol=0, atol=1e-9)  # linear in the active coordinates only
    nonzero = w.abs() > 1e-8
    assert torch.all(nonzero.sum(-1) == 3)
    # every active coordinate is chosen sometimes: the support is spread over all of them
    assert torch.all(nonzero.any(0))


@pytest.mark.parametrize("name", ["linear_regression", "noisy_linear_regression"])
@pytest.mark.parametrize("active", [None, 3])
def test_linear_targets_depend_on_active_coordinates_only(name, active):
    task = build_task(name, 6, **({"noise_std": 0.0} if name.startswith("noisy") else {}))
    d_act = 6 if active is None else active
    xs, ys = task.sample(200, 12, active, generator=gen(6), dtype=torch.float64)
    w = torch.linalg.lstsq(xs[..., :d_act], ys.unsqueeze(-1)).solution
    torch.testing.assert_close(xs[..., :d_act] @ w, ys.unsqueeze(-1), rtol=0, atol=1e-9)
    assert (w.abs() > 1e-3).float().mean() > 0.9  # dense weights


@pytest.mark.parametrize("active", [None, 3])
def test_noisy_residual_variance_is_sigma_squared(active):
    """Per-prompt least squares on the active coordinates: the unbiased residual variance
    RSS / (n - d') averages to sigma^2."""
    sigma = 0.3
    task = build_task("noisy_linear_regression", 5, noise_std=sigma)
    d_act = 5 if active is None else active
    n = 40
    xs, ys = task.sample(2000, n, active, generator=gen(7), dtype=torch.float64)
    X, y = xs[..., :d_act], ys.unsqueeze(-1)
    w = torch.linalg.lstsq(X, y).solution
    rss = (X @ w - y).pow(2).sum(dim=(1, 2))
    est = (rss / (n - d_act)).mean().item()
    assert est == pytest.approx(sigma**2, rel=0.05)


def test_relu_net_scale_does_not_depend_on_hidden_size():
    """The sqrt(2/h) factor keeps E[y^2] = d' for any hidden size h."""
    task = build_task("relu_2nn_regression", 8, hidden_layer_size=10)
    _, ys = sample_many(task, 20_000, 5, 6, seed=9)
    assert ys.double().pow(2).mean().item() / task.normalizer(6) == pytest.approx(1, abs=0.05)


# ----------------------------------------------------------------------------- trees


def tree_by_hand(xs, coords, values, depth):
    """Per prompt, per point: from node 0, go to 2i+2 if x[coord_i] > 0 else 2i+1, depth
    times, and read the leaf's value."""
    B, n, _ = xs.shape
    out = torch.empty(B, n, dtype=values.dtype)
    for b in range(B):
        for p in range(n):
            node = 0
            for _ in range(depth):
                c = int(coords[b, node])
                node = 2 * node + 2 if xs[b, p, c] > 0 else 2 * node + 1
            out[b, p] = values[b, node]
    return out


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("active", [None, 3])
def test_decision_tree_matches_reference(depth, active):
    task = build_task("decision_tree", 6, depth=depth)
    d_act = 6 if active is None else active
    g = gen(11)
    xs, _ = task.sample(12, 10, active, generator=g)
    coords, values = task.draw_trees(12, d_act, g, xs)
    n_internal = 2**depth - 1
    assert coords.shape[0] == values.shape[0] == 12
    assert values.shape[1] >= 2 ** (depth + 1) - 1  # internal nodes and leaves
    assert torch.all((coords[:, :n_internal] >= 0) & (coords[:, :n_internal] < d_act))
    got = task.evaluate(xs, coords, values)
    torch.testing.assert_close(got, tree_by_hand(xs, coords, values, depth), rtol=0, atol=0)


def test_decision_tree_splits_use_all_active_dims():
    task = build_task("decision_tree", 8)
    coords, _ = task.draw_trees(500, 5, gen(12), torch.zeros(1))
    used = torch.unique(coords[:, :15])
    assert used.tolist() == [0, 1, 2, 3, 4]


def test_decision_tree_targets_are_piecewise_constant_on_sign_patterns():
    """At most 2^depth distinct targets per prompt, equal for points in the same orthant of
    the active coordinates."""
    task = build_task("decision_tree", 10, depth=4)
    xs, ys = task.sample(20, 200, 3, generator=gen(13))
    pattern = ((xs[..., :3] > 0).long() * torch.tensor([1, 2, 4])).sum(-1)  # (B, n)
    for b in range(20):
        assert len(torch.unique(ys[b])) <= 16
        for q in torch.unique(pattern[b]):
            vals = ys[b][pattern[b] == q]
            assert torch.all(vals == vals[0])


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch(name):
    task = build_task(name, 8)
    a = task.sample(16, 7, 5, generator=gen(42))
    b = task.sample(16, 7, 5, generator=gen(42))
    c = task.sample(16, 7, 5, generator=gen(43))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs, c.xs) and not torch.equal(a.ys, c.ys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype_follow_generator_and_request(name, dtype):
    task = build_task(name, 8)
    xs, ys = task.sample(4, 7, generator=gen(0, "cpu"), dtype=dtype)
    assert xs.device.type == ys.device.type == "cpu"
    assert xs.dtype == ys.dtype == dtype
    assert xs.shape == (4, 7, 8) and ys.shape == (4, 7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_generator_gives_cuda_tensors(name):
    task = build_task(name, 8)
    xs, ys = task.sample(4, 7, 5, generator=gen(0, "cuda"))
    assert xs.is_cuda and ys.is_cuda
    assert torch.all(xs[..., 5:] == 0)
    a = task.sample(4, 7, 5, generator=gen(1, "cuda"))
    b = task.sample(4, 7, 5, generator=gen(1, "cuda"))
    assert torch.equal(a.ys, b.ys)


# ----------------------------------------------------------------------------- config errors


def test_unknown_task_lists_allowed_names():
    with pytest.raises(ConfigError) as err:
        build_task("quadratic_regression", 5)
    msg = str(err.value)
    assert "task.name" in msg and "quadratic_regression" in msg
    for name in NAMES:
        assert name in msg


def test_sparsity_above_dims_is_config_error():
    with pytest.raises(ConfigError, match="task.sparsity"):
        build_task("sparse_linear_regression", 5, sparsity=6)


def test_sparsity_above_active_dims_is_config_error():
    task = build_task("sparse_linear_regression", 10, sparsity=4)
    task.sample(2, 3, 4, generator=gen(0))  # exactly k active dims is fine
    with pytest.raises(ConfigError, match="task.sparsity"):
        task.sample(2, 3, 3, generator=gen(0))


@pytest.mark.parametrize("active", [0, 11])
def test_active_dims_outside_range(active):
    with pytest.raises(ConfigError):
        build_task("linear_regression", 10).sample(2, 3, active, generator=gen(0))


def test_unknown_task_parameter_is_config_error():
    with pytest.raises(ConfigError, match="sparsity"):
        build_task("linear_regression", 5, sparsity=2)


@pytest.mark.parametrize("name,params", [
    ("noisy_linear_regression", {"noise_std": -0.1}),
    ("relu_2nn_regression", {"hidden_layer_size": 0}),
    ("decision_tree", {"depth": 0}),
    ("sparse_linear_regression", {"sparsity": 0}),
])
def test_invalid_task_parameters(name, params):
    with pytest.raises(ConfigError, match=f"task.{next(iter(params))}"):
        build_task(name, 5, **params)
