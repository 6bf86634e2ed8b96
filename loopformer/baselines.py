"""In-context baselines (Garg et al. 2022), all with one predictor signature.

A predictor maps ``xs (B, n, d)`` and ``ys (B, n)`` to ``preds (B, n)`` where ``preds[:, k]``
is the prediction for ``ys[:, k]`` from the examples ``0..k-1`` only (0 when ``k == 0``).
Every predictor has a ``name`` that includes its hyperparameters (used as a curve label).

Closed-form and neighbour baselines are batched tensor code over prompts *and* prefixes, on
the inputs' device. The scikit-learn / xgboost baselines need one fit per (prompt, prefix);
they run on the CPU, in parallel over prompts with joblib.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from loopformer.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_KEY = "eval.baselines"
_MAX_CHUNK_ELEMS = 1 << 22  # elements of the largest per-chunk intermediate (~32 MB in f64)


# --------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------


def _check_inputs(xs: torch.Tensor, ys: torch.Tensor) -> None:
    if xs.dim() != 3 or ys.dim() != 2 or xs.shape[:2] != ys.shape:
        raise ValueError(f"expected xs (B, n, d) and ys (B, n); got {tuple(xs.shape)} and "
                         f"{tuple(ys.shape)}")


def _batch_chunks(batch: int, per_prompt_elems: int) -> list[slice]:
    """Slices of the batch so that one chunk's largest intermediate stays under the budget."""
    size = max(1, _MAX_CHUNK_ELEMS // max(1, per_prompt_elems))
    return [slice(i, min(batch, i + size)) for i in range(0, batch, size)]


def _exclusive_cumsum(t: torch.Tensor) -> torch.Tensor:
    """Sums over the positions strictly before each one, along dim 1."""
    out = torch.zeros_like(t)
    out[:, 1:] = t.cumsum(1)[:, :-1]
    return out


def _prefix_cross(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``c[:, k] = sum_{i<k} y_i x_i`` in float64, shape (B, n, d)."""
    return _exclusive_cumsum(xs.double() * ys.double().unsqueeze(-1))


def _predict_with(xs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``preds[:, k] = x_k . w_k`` for per-prefix weights ``w`` (B, n, d)."""
    return (xs.double() * w).sum(-1)  # (B, n)


class Baseline:
    """Base class: subclasses set ``name`` and implement ``predict``."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    def predict(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        _check_inputs(xs, ys)
        preds = self.predict(xs, ys)
        return preds.to(device=ys.device, dtype=ys.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# --------------------------------------------------------------------------------------
# batched closed-form / neighbour baselines
# --------------------------------------------------------------------------------------


def _matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (m @ v.unsqueeze(-1)).squeeze(-1)  # (B, d, d), (B, d) -> (B, d)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)  # (B, d), (B, d) -> (B, 1)


def _rls_step(w: torch.Tensor, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Sherman-Morrison update of the solution ``w`` (B, d) and ``p = (X^T X + .)^-1`` or
    its pseudo-inverse (B, d, d), in place, for one more example ``x`` (B, d), ``y`` (B,)."""
    b = _matvec(p, x)
    gamma = 1 + _dot(x, b)  # (B, 1)
    resid = y.unsqueeze(-1) - _dot(x, w)  # (B, 1)
    p.addcmul_((b / gamma).unsqueeze(-1), b.unsqueeze(-2), value=-1)
    return w + b * (resid / gamma), p


def _greville_step(w, p, q, x, y, r, rr):
    """Pseudo-inverse update, in place, when ``x`` has a component ``r = Q x`` (B, d),
    ``rr = |r|^2`` (B, 1), outside the row space: the new point is interpolated, and
    ``P = (X^T X)^+`` and the null-space projector ``Q`` change by rank-one terms
    (Greville 1960)."""
    u = r / rr
    b = _matvec(p, x)
    resid = y.unsqueeze(-1) - _dot(x, w)
    coef = 1 + _dot(x, b)
    p.addcmul_(u.unsqueeze(-1), (coef * u - b).unsqueeze(-2))
    p.addcmul_(b.unsqueeze(-1), u.unsqueeze(-2), value=-1)
    q.addcmul_(r.unsqueeze(-1), u.unsqueeze(-2), value=-1)
    return w + u * resid, p, q


class LeastSquares(Baseline):
    """Minimum-norm least squares for every prefix, in one recursive pass over positions.

    Batched over prompts, sequential over the ``n`` positions (float64). The state is the
    min-norm solution ``w_k``, ``P_k = (X_k^T X_k)^+`` and the projector ``Q_k`` onto the
    null space of ``X_k``. A new ``x`` with a component ``r = Q_k x`` outside the row space
    (``|r|^2 > rcond^2 |x|^2``) takes Greville's pseudo-inverse update (the new point is
    interpolated); otherwise recursive least squares updates ``w`` and ``P``. So prefixes
    with ``k < rank`` (and zeroed inactive coordinates) get the min-norm solution, like
    ``lstsq``'s ``gelsd`` with ``rcond = eps(input dtype) * max(n, d)``.
    """

    _F64_FLOOR = 1e-16  # |r|^2/|x|^2 that float64 projector round-off can reach

    @property
    def name(self) -> str:
        return "least_squares"

    def predict(self, xs, ys):
        B, n, d = xs.shape
        rcond = torch.finfo(xs.dtype).eps * max(n, d)
        rtol = max(rcond**2, self._F64_FLOOR)
        x_all, y_all = xs.double(), ys.double()
        w = x_all.new_zeros(B, d)
        p = x_all.new_zeros(B, d, d)
        q = torch.eye(d, dtype=x_all.dtype, device=xs.device).repeat(B, 1, 1)
        preds = []
        min_rank = 0  # lower bound on every prompt's rank so far
        for k in range(n):
            x, y = x_all[:, k], y_all[:, k]  # (B, d), (B,)
            preds.append((x * w).sum(-1))
            if min_rank == d:  # every Q is zero: plain recursive least squares from here
                w, p = _rls_step(w, p, x, y)
                continue
            r = _matvec(q, x)  # part of x outside the row space so far
            rr = _dot(r, r)  # (B, 1)
            new_dir = rr > rtol * _dot(x, x)  # (B, 1)
            n_new = int(new_dir.sum())
            if n_new == B:  # every prompt adds a direction (k < rank): one branch only
                w, p, q = _greville_step(w, p, q, x, y, r, rr)
                min_rank += 1
            elif n_new == 0:
                w, p = _rls_step(w, p, x, y)
            else:
                w_g, p_g, q_g = _greville_step(w, p.clone(), q.clone(), x, y, r,
                                               rr.where(new_dir, 1.0))
                w_r, p_r = _rls_step(w, p, x, y)
                w = w_g.where(new_dir, w_r)
                p = p_g.where(new_dir.unsqueeze(-1), p_r)
                q = q_g.where(new_dir.unsqueeze(-1), q)
        return torch.stack(preds, 1)  # (B, n)


class Ridge(Baseline):
    """Ridge regression ``w_k = (X_k^T X_k + alpha I)^{-1} X_k^T y_k`` for every prefix (no
    intercept), by recursive least squares from ``P_0 = I / alpha`` (float64).

    For noisy linear regression with ``w ~ N(0, I)`` and noise std ``s``, ``alpha = s^2`` is
    the posterior mean, i.e. the Bayes-optimal predictor.
    """

    def __init__(self, alpha: float):
        if not alpha > 0:
            raise ConfigError(f"{CONFIG_KEY}: ridge alpha={alpha} must be > 0")
        self.alpha = float(alpha)

    @property
    def name(self) -> str:
        return f"ridge_{self.alpha:g}"

    def predict(self, xs, ys):
        B, n, d = xs.shape
        x_all, y_all = xs.double(), ys.double()
        w = x_all.new_zeros(B, d)
        p = torch.eye(d, dtype=x_all.dtype, device=xs.device).repeat(B, 1, 1) / self.alpha
        preds = []
        for k in range(n):
            preds.append((x_all[:, k] * w).sum(-1))
            w, p = _rls_step(w, p, x_all[:, k], y_all[:, k])
        return torch.stack(preds, 1)  # (B, n)


class Averaging(Baseline):
    """``w_k = mean_{i<k} y_i x_i``; predict ``x_k . w_k``."""

    @property
    def name(self) -> str:
        return "averaging"

    def predict(self, xs, ys):
        n = xs.shape[1]
        count = torch.arange(n, device=xs.device, dtype=torch.float64).clamp_min(1)
        return _predict_with(xs, _prefix_cross(xs, ys) / count.view(1, n, 1))


class NearestNeighbors(Baseline):
    """Mean ``y`` of the ``k`` nearest previous ``x`` (Euclidean; fewer if fewer exist)."""

    def __init__(self, n_neighbors: int = 3):
        if int(n_neighbors) < 1:
            raise ConfigError(f"{CONFIG_KEY}: nearest_neighbors k={n_neighbors} must be >= 1")
        self.n_neighbors = int(n_neighbors)

    @property
    def name(self) -> str:
        return f"nearest_neighbors_{self.n_neighbors}"

    def predict(self, xs, ys):
        B, n, _ = xs.shape
        k = min(self.n_neighbors, n - 1)
        if k == 0:
            return torch.zeros_like(ys)
        out = []
        future = torch.ones(n, n, dtype=torch.bool, device=xs.device).triu()  # i >= query
        for sl in _batch_chunks(B, n * n):
            # direct differences (not the matmul expansion) so near-ties rank exactly
            dist = torch.cdist(xs[sl], xs[sl], compute_mode="donot_use_mm_for_euclid_dist")
            dist = dist.masked_fill(future, math.inf)  # (b, n, n): [query, candidate]
            vals, idx = dist.topk(k, dim=-1, largest=False)  # (b, n, k)
            valid = torch.isfinite(vals)
            y_nb = ys[sl].gather(1, idx.flatten(1)).view_as(vals)  # (b, n, k)
            total = (y_nb * valid).sum(-1)
            out.append(total / valid.sum(-1).clamp_min(1))
        return torch.cat(out)


class GD2LayerNN(Baseline):
    """A 2-layer ReLU net ``relu(x W1 + b1) . w2 + b2`` trained by full-batch Adam on the
    squared loss of each prefix (Garg et al.: hidden 100, Adam, lr 5e-3, 100 steps; their
    mini-batch of 100 is the full prefix for prompts of up to 101 points).

    One independent net per (prompt, prefix), all trained together as tensor code: the nets
    for prefix ``k`` run on a shared block of points but their loss is masked to points
    ``i < k``. Adam is elementwise, so the joint optimiser is exactly one optimiser per net.
    Prefixes are trained in ``_GROUPS`` groups, each on the points up to its longest prefix
    only, which skips ~40% of the masked-out work.
    """

    _CHUNK_ELEMS = 1 << 23  # hidden activations per chunk, (b, points, nets, hidden)
    _GROUPS = 4

    def __init__(self, hidden_size: int = 100, steps: int = 100, lr: float = 5e-3,
                 seed: int = 0):
        if int(hidden_size) < 1 or int(steps) < 1 or not lr > 0:
            raise ConfigError(f"{CONFIG_KEY}: gd_2layer_nn needs hidden_size >= 1, steps >= 1 "
                              f"and lr > 0; got {hidden_size}, {steps}, {lr}")
        self.hidden_size, self.steps, self.lr = int(hidden_size), int(steps), float(lr)
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return f"gd_2layer_nn_h{self.hidden_size}_steps{self.steps}_lr{self.lr:g}"

    def predict(self, xs, ys):
        B, n, _ = xs.shape
        if n == 1:
            return torch.zeros_like(ys)
        size = max(1, self._CHUNK_ELEMS // (n * (n - 1) * self.hidden_size))
        gen = torch.Generator(device=xs.device).manual_seed(self.seed)
        out = []
        bounds = np.linspace(1, n, min(self._GROUPS, n - 1) + 1).round().astype(int)
        # evaluation may run under inference_mode / no_grad; this baseline trains
        with torch.inference_mode(False), torch.enable_grad():
            for i in range(0, B, size):
                chunk_x = xs[i:i + size].detach().float().clone()
                chunk_y = ys[i:i + size].detach().float().clone()
                preds = torch.zeros_like(chunk_y)
                for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
                    # prefixes first..stop-1 need points 0..stop-1 only
                    preds[:, first:stop] = self._fit_predict(
                        chunk_x[:, :stop], chunk_y[:, :stop], int(first), gen)
                out.append(preds)
        return torch.cat(out)

    def _fit_predict(self, xs: torch.Tensor, ys: torch.Tensor, first: int,
                     gen: torch.Generator) -> torch.Tensor:
        """Predictions at points ``first..n-1`` of nets fitted to prefixes of those lengths;
        ``xs`` (b, n, d), ``ys`` (b, n) -> (b, n - first)."""
        b, n, d = xs.shape
        nets, h = n - first, self.hidden_size  # net j fits prefix k = first + j

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            u = torch.rand(*shape, generator=gen, device=xs.device, dtype=xs.dtype)
            return ((2 * u - 1) / math.sqrt(fan_in)).requires_grad_()

        w1 = uniform(b, d, nets * h, fan_in=d)  # columns [j*h, (j+1)*h) belong to net j
        b1 = uniform(b, 1, nets, h, fan_in=d)
        w2 = uniform(b, 1, nets, h, fan_in=h)
        b2 = uniform(b, 1, nets, fan_in=h)
        pos = torch.arange(n, device=xs.device)
        ks = pos[first:]  # (nets,) prefix length of each net
        used = pos.view(n, 1) < ks.view(1, nets)  # (n, nets): point i in net j's prefix
        weight = used / ks.to(xs.dtype)  # per-net mean over its prefix

        def forward() -> torch.Tensor:
            hidden = torch.relu((xs @ w1).view(b, n, nets, h) + b1)  # (b, n, nets, h)
            return (hidden * w2).sum(-1) + b2  # (b, n, nets): every net at every point

        opt = torch.optim.Adam([w1, b1, w2, b2], lr=self.lr)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            loss = ((forward() - ys.unsqueeze(-1)).square() * weight).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = forward()
        return out[:, ks, pos[:nets]]  # (b, nets): net j evaluated at point first + j


# --------------------------------------------------------------------------------------
# per-(prompt, prefix) fits on the CPU, parallel over prompts
# --------------------------------------------------------------------------------------

PromptFn = Callable[..., np.ndarray]  # fn(x (n, d) f64, y (n,) f64, seed, **kw) -> (n,)


def _run_prompts(fn: PromptFn, xs: np.ndarray, ys: np.ndarray, first_seed: int,
                 kwargs: dict[str, Any]) -> np.ndarray:
    return np.stack([fn(xs[i], ys[i], first_seed + i, **kwargs) for i in range(len(xs))])


def _map_prompts(fn: PromptFn, xs: torch.Tensor, ys: torch.Tensor, n_jobs: int | None,
                 seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """Apply a per-prompt function to every prompt, in chunks spread over joblib workers.

    Prompt ``b`` gets seed ``seed + b`` whatever the chunking, so results do not depend on
    ``n_jobs``.
    """
    from joblib import Parallel, delayed, effective_n_jobs

    x = xs.detach().cpu().double().numpy()
    y = ys.detach().cpu().double().numpy()
    B = x.shape[0]
    workers = min(effective_n_jobs(n_jobs), B)
    if workers <= 1:
        out = _run_prompts(fn, x, y, seed, kwargs)
    else:
        # a few chunks per worker balances uneven prompts without per-prompt dispatch cost
        bounds = np.linspace(0, B, min(B, 4 * workers) + 1).astype(int)
        parts = Parallel(n_jobs=workers)(
            delayed(_run_prompts)(fn, x[a:b], y[a:b], seed + a, kwargs)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        )
        out = np.concatenate(parts)
    return torch.from_numpy(out)  # (B, n)


def _lasso_prompt(x: np.ndarray, y: np.ndarray, seed: int, alpha: float, max_iter: int,
                  tol: float) -> np.ndarray:
    del seed  # coordinate descent in cyclic order is deterministic
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso as SkLasso

    preds = np.zeros(len(y))
    # a fresh fit per prefix (no warm start): for small alpha and k < d coordinate descent
    # stops far from the optimum, and where it stops depends on the starting point
    est = SkLasso(alpha=alpha, fit_intercept=False, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(), sklearn.config_context(skip_parameter_validation=True):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(1, len(y)):
            est.fit(np.asfortranarray(x[:k]), y[:k], check_input=False)
            preds[k] = x[k] @ est.coef_
    return preds


def _tree_prompt(x: np.ndarray, y: np.ndarray, seed: int, max_depth: int | None) -> np.ndarray:
    import sklearn
    from sklearn.tree import DecisionTreeRegressor

    x32 = np.ascontiguousarray(x, dtype=np.float32)  # the tree's internal dtype
    # one RandomState per prompt (ties between equally good splits): deterministic, and
    # far cheaper than seeding a new one per fit
    rng = np.random.RandomState(seed)
    preds = np.zeros(len(y))
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for k in range(1, len(y)):
            est = DecisionTreeRegressor(max_depth=max_depth, random_state=rng)
            est.fit(x32[:k], y[:k], check_input=False)
            # the fitted tree's own predict: est.predict re-checks fitting on every call
            preds[k] = est.tree_.predict(x32[k:k + 1]).item()
    return preds


def _xgb_prompt_masked(x: np.ndarray, y: np.ndarray, seed: int, n_estimators: int,
                       max_depth: int, learning_rate: float) -> np.ndarray:
    """All prefixes of one prompt in ONE xgboost booster with one target per prefix.

    Target ``j`` fits prefix ``k = j + 1``: its gradient is masked to rows ``i < k`` and the
    other rows get a negative hessian, which xgboost's exact greedy updater treats as
    deleted rows (they take no part in gains *or* split thresholds). Each target grows its
    own trees (``one_output_per_tree``) from the intercept ``mean(y[:k])`` that
    ``XGBRegressor`` would estimate, so every target reproduces a separate per-prefix fit
    (checked against plain ``XGBRegressor`` in the tests) without per-fit set-up cost.
    """
    import xgboost as xgb

    n = len(y)
    preds = np.zeros(n)
    if n < 2:
        return preds
    ks = np.arange(1, n)
    used = np.arange(n)[:, None] < ks[None, :]  # (n, T): row i belongs to prefix k
    labels = np.broadcast_to(y[:, None], used.shape).astype(np.float32)
    intercept = (np.cumsum(y)[:-1] / ks).astype(np.float32)  # (T,)
    hess = np.where(used, 1.0, -1.0).astype(np.float32)

    def squared_error(margin: np.ndarray, _: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.where(used, margin - labels, 0.0).astype(np.float32), hess

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    train = xgb.DMatrix(x32, label=labels, nthread=1,
                        base_margin=np.ascontiguousarray(np.broadcast_to(intercept, used.shape)))
    params = {"tree_method": "exact", "max_depth": max_depth, "eta": learning_rate,
              "nthread": 1, "base_score": 0.0, "num_target": n - 1, "seed": seed,
              "multi_strategy": "one_output_per_tree", "verbosity": 0}
    # Booster.update rather than xgb.train: train() ends with reset(), ~20% of the cost here
    booster = xgb.Booster(params, [train])
    for it in range(n_estimators):
        booster.update(train, it, fobj=squared_error)
    margin = booster.predict(xgb.DMatrix(x32, nthread=1), output_margin=True)  # (n, T)
    preds[1:] = margin[ks, ks - 1] + intercept
    return preds


def _xgb_prompt_per_prefix(x: np.ndarray, y: np.ndarray, seed: int, n_estimators: int,
                           max_depth: int, learning_rate: float) -> np.ndarray:
    """Reference path: a fresh ``XGBRegressor`` per prefix (slow: ~ms of set-up per fit)."""
    import xgboost as xgb

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    preds = np.zeros(len(y))
    for k in range(1, len(y)):
        est = xgb.XGBRegressor(n_estimators=n_estimators, max_depth=max_depth,
                               learning_rate=learning_rate, tree_method="exact", n_jobs=1,
                               random_state=seed)
        est.fit(x32[:k], y[:k])
        preds[k] = est.predict(x32[k:k + 1])[0]
    return preds


class CpuFitBaseline(Baseline):
    """Per-(prompt, prefix) fits of a CPU library, parallel over prompts with joblib."""

    def __init__(self, n_jobs: int | None = -1, seed: int = 0):
        self.n_jobs, self.seed = n_jobs, int(seed)

    def _prompt_fn(self) -> tuple[PromptFn, dict[str, Any]]:
        raise NotImplementedError

    def predict(self, xs, ys):
        fn, kwargs = self._prompt_fn()
        return _map_prompts(fn, xs, ys, self.n_jobs, self.seed, **kwargs)


class Lasso(CpuFitBaseline):
    """scikit-learn ``Lasso(alpha, fit_intercept=False)`` per prompt and prefix."""

    def __init__(self, alpha: float, max_iter: int = 100_000, tol: float = 1e-4,
                 n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if not alpha > 0:
            raise ConfigError(f"{CONFIG_KEY}: lasso alpha={alpha} must be > 0")
        self.alpha, self.max_iter, self.tol = float(alpha), int(max_iter), float(tol)

    @property
    def name(self) -> str:
        return f"lasso_{self.alpha:g}"

    def _prompt_fn(self):
        return _lasso_prompt, {"alpha": self.alpha, "max_iter": self.max_iter, "tol": self.tol}


class DecisionTree(CpuFitBaseline):
    """scikit-learn greedy ``DecisionTreeRegressor(max_depth)`` per prompt and prefix."""

    def __init__(self, max_depth: int | None = None, n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if max_depth is not None and int(max_depth) < 1:
            raise ConfigError(f"{CONFIG_KEY}: decision_tree max_depth={max_depth} must be >= 1")
        self.max_depth = None if max_depth is None else int(max_depth)

    @property
    def name(self) -> str:
        return "decision_tree" if self.max_depth is None else f"decision_tree_{self.max_depth}"

    def _prompt_fn(self):
        return _tree_prompt, {"max_depth": self.max_depth}


class XGBoost(CpuFitBaseline):
    """Gradient-boosted trees (xgboost, exact greedy splits, squared error) per prompt and
    prefix.

    Defaults are far smaller than ``XGBRegressor()``'s 100 trees of depth 6 (whose per-tree
    cost made 1280 prompts x 100 prefixes take most of an hour): 5 trees of depth 4 with
    learning rate 0.5. On the depth-4 decision-tree task (d = 20, 101 points, 96 prompts,
    paired) they reach a *lower* error than the default, by 0.049 +- 0.010 averaged over
    k >= 10; 10 trees at lr 0.3 are 0.012 +- 0.006 better still at twice the cost.
    ``strategy="masked"`` fits all prefixes of a prompt in one booster (the same trees as
    separate fits); ``"per_prefix"`` is the plain, slow reference.
    """

    STRATEGIES = ("masked", "per_prefix")

    def __init__(self, n_estimators: int = 5, max_depth: int = 4, learning_rate: float = 0.5,
                 strategy: str = "masked", n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        try:
            import xgboost  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                f"{CONFIG_KEY} asks for the xgboost baseline but xgboost is not installed; "
                "`pip install xgboost` (or loopformer[xgboost]) or drop it from eval.baselines"
            ) from e
        if strategy not in self.STRATEGIES:
            raise ConfigError(f"{CONFIG_KEY}: xgboost strategy={strategy!r}; "
                              f"choose one of {list(self.STRATEGIES)}")
        if int(n_estimators) < 1 or int(max_depth) < 1 or not learning_rate > 0:
            raise ConfigError(f"{CONFIG_KEY}: xgboost needs n_estimators >= 1, max_depth >= 1 "
                              f"and learning_rate > 0")
        self.n_estimators, self.max_depth = int(n_estimators), int(max_depth)
        self.learning_rate, self.strategy = float(learning_rate), strategy

    @property
    def name(self) -> str:
        return f"xgboost_n{self.n_estimators}_depth{self.max_depth}_lr{self.learning_rate:g}"

    def _prompt_fn(self):
        fn = _xgb_prompt_masked if self.strategy == "masked" else _xgb_prompt_per_prefix
        return fn, {"n_estimators": self.n_estimators, "max_depth": self.max_depth,
                    "learning_rate": self.learning_rate}


# --------------------------------------------------------------------------------------
# suites and config
# --------------------------------------------------------------------------------------

LASSO_ALPHAS = (1.0, 0.1, 0.01, 0.001)


def _xgboost_available() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def default_baselines(task_name: str, task_params: Mapping[str, Any] | None = None,
                      n_jobs: int | None = -1) -> list[Baseline]:
    """Garg et al.'s baseline suite for a task (xgboost skipped, with a warning, if absent)."""
    from loopformer.tasks import TASKS, NoisyLinearRegression

    params = dict(task_params or {})
    suite: list[Baseline] = [LeastSquares(), NearestNeighbors(3), Averaging()]
    if task_name == "linear_regression":
        pass
    elif task_name == "noisy_linear_regression":
        noise_std = float(params.get("noise_std", NoisyLinearRegression(1).noise_std))
        if noise_std > 0:
            suite.append(Ridge(noise_std**2))  # Bayes-optimal for w ~ N(0, I)
    elif task_name == "sparse_linear_regression":
        suite += [Lasso(a, n_jobs=n_jobs) for a in LASSO_ALPHAS]
    elif task_name == "relu_2nn_regression":
        suite.append(GD2LayerNN())
    elif task_name == "decision_tree":
        suite.append(DecisionTree(max_depth=4, n_jobs=n_jobs))
        if _xgboost_available():
            suite.append(XGBoost(n_jobs=n_jobs))
        else:
            log.warning("xgboost is not installed; the decision_tree suite skips it")
    else:
        raise ConfigError(f"task.name={task_name!r} has no baseline suite; "
                          f"choose one of {sorted(TASKS)}")
    return suite


# name -> (class, parameter set by the ``_<value>`` suffix, its type, is the suffix required)
_KINDS: dict[str, tuple[type[Baseline], str | None, Callable[[str], Any], bool]] = {
    "least_squares": (LeastSquares, None, str, False),
    "averaging": (Averaging, None, str, False),
    "nearest_neighbors": (NearestNeighbors, "n_neighbors", int, False),
    "ridge": (Ridge, "alpha", float, True),
    "lasso": (Lasso, "alpha", float, True),
    "decision_tree": (DecisionTree, "max_depth", int, False),
    "gd_2layer_nn": (GD2LayerNN, None, str, False),
    "xgboost": (XGBoost, None, str, False),
}
ALLOWED_NAMES = ["default", "least_squares", "averaging", "nearest_neighbors[_<k>]",
                 "ridge_<alpha>", "lasso_<alpha>", "decision_tree[_<max_depth>]",
                 "gd_2layer_nn", "xgboost"]
_NAME_RE = re.compile(r"^(?P<kind>{})(?:_(?P<value>[^_]+))?$".format(
    "|".join(sorted(map(re.escape, _KINDS), key=len, reverse=True))))


def _unknown(spec: Any) -> ConfigError:
    return ConfigError(f"{CONFIG_KEY} has unknown baseline {spec!r}; allowed names: "
                       f"{ALLOWED_NAMES} (or a mapping with 'name' and its hyperparameters)")


def _build_one(spec: str | Mapping[str, Any], n_jobs: int | None) -> Baseline:
    import inspect

    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        kwargs = {str(k): v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise _unknown(spec)
    match = _NAME_RE.match(name)
    if match is None:
        raise _unknown(spec)
    cls, suffix_param, convert, required = _KINDS[match["kind"]]
    if match["value"] is not None:
        if suffix_param is None:
            raise _unknown(spec)
        try:
            kwargs.setdefault(suffix_param, convert(match["value"]))
        except ValueError as e:
            raise _unknown(spec) from e
    if required and suffix_param not in kwargs:
        raise ConfigError(f"{CONFIG_KEY}: {match['kind']!r} needs its {suffix_param}, e.g. "
                          f"'{match['kind']}_0.1' or {{name: {match['kind']}, "
                          f"{suffix_param}: 0.1}}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ConfigError(f"{CONFIG_KEY}: baseline {match['kind']!r} got unknown parameters "
                          f"{extra}; allowed: {allowed}")
    if "n_jobs" in allowed:
        kwargs.setdefault("n_jobs", n_jobs)
    return cls(**kwargs)


def build_baselines(specs: str | Sequence[str | Mapping[str, Any]] | None,
                    task_name: str | None = None,
                    task_params: Mapping[str, Any] | None = None,
                    n_jobs: int | None = -1) -> list[Baseline]:
    """Baselines from config: a list of names (``"lasso_0.1"``, ``"nearest_neighbors_3"``,
    ``"default"`` for the task's suite) and/or mappings (``{name: xgboost, n_estimators: 20}``).
    ``None`` or ``"default"`` alone gives :func:`default_baselines`. Unknown names raise
    :class:`ConfigError` naming ``eval.baselines`` and the allowed names.
    """
    if specs is None or isinstance(specs, str):
        specs = ["default"] if specs is None else [specs]
    out: list[Baseline] = []
    for spec in specs:
        if spec == "default":
            if task_name is None:
                raise ConfigError(f"{CONFIG_KEY}: 'default' needs the task name (task.name)")
            out += default_baselines(task_name, task_params, n_jobs=n_jobs)
        else:
            out.append(_build_one(spec, n_jobs))
    names = [b.name for b in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{CONFIG_KEY} lists baselines {dupes} more than once")
    return out
