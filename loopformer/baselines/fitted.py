"""Baselines fitted per (prompt, prefix) by an iterative solver: a 2-layer ReLU net trained by
Adam (batched tensor code, one net per prompt and prefix), and scikit-learn / xgboost fits on
the CPU, in parallel over prompts with joblib (Lasso, greedy trees, gradient boosting)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from loopformer.baselines.base import Baseline
from loopformer.errors import ConfigError

log = logging.getLogger(__name__)


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
    shorthand = "gd_2layer_nn"

    def __init__(self, hidden_size: int = 100, steps: int = 100, lr: float = 5e-3,
                 seed: int = 0):
        if int(hidden_size) < 1 or int(steps) < 1 or not lr > 0:
            raise ConfigError(f"gd_2layer_nn needs hidden_size >= 1, steps >= 1 "
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
    """Predictions at positions ``0..n-1`` and, as a last entry, how many of the prompt's
    fits stopped at ``max_iter`` before their duality gap reached ``tol`` (the fits for
    which scikit-learn warns)."""
    del seed  # coordinate descent in cyclic order is deterministic
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso as SkLasso

    preds = np.zeros(len(y) + 1)
    # a fresh fit per prefix (no warm start): for small alpha and k < d the optimum is flat,
    # and where coordinate descent stops within tol depends on the starting point
    est = SkLasso(alpha=alpha, fit_intercept=False, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught, \
            sklearn.config_context(skip_parameter_validation=True):
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(1, len(y)):
            est.fit(np.asfortranarray(x[:k]), y[:k], check_input=False)
            preds[k] = x[k] @ est.coef_
    preds[-1] = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
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
    """scikit-learn ``Lasso(alpha, fit_intercept=False)`` per prompt and prefix.

    Fits that stop at ``max_iter`` before reaching ``tol`` are counted, not hidden: after
    each call ``diagnostics`` holds ``fits`` and ``unconverged_fits`` (evaluation writes them
    into the baseline's curve in ``results.json``) and a warning names the count. With the
    default ``max_iter`` every fit of the sparse-regression evaluation converges (20,480
    fits measured: at most 15,664 iterations)."""

    shorthand, suffix = "lasso", "alpha"

    def __init__(self, alpha: float, max_iter: int = 100_000, tol: float = 1e-4,
                 n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if not alpha > 0:
            raise ConfigError(f"lasso alpha={alpha} must be > 0")
        self.alpha, self.max_iter, self.tol = float(alpha), int(max_iter), float(tol)

    @property
    def name(self) -> str:
        return f"lasso_{self.alpha:g}"

    def _prompt_fn(self):
        return _lasso_prompt, {"alpha": self.alpha, "max_iter": self.max_iter, "tol": self.tol}

    def predict(self, xs, ys):
        out = super().predict(xs, ys)  # (B, n + 1): predictions, then the prompt's count
        fits, unconverged = xs.shape[0] * (xs.shape[1] - 1), int(out[:, -1].sum())
        self.diagnostics = {"fits": fits, "unconverged_fits": unconverged}
        if unconverged:
            log.warning("%s: %d of %d fits stopped at max_iter=%d before reaching tol=%g; "
                        "raise max_iter", self.name, unconverged, fits, self.max_iter, self.tol)
        return out[:, :-1]


class DecisionTree(CpuFitBaseline):
    """scikit-learn greedy ``DecisionTreeRegressor(max_depth)`` per prompt and prefix."""

    shorthand, suffix = "decision_tree", "max_depth"

    def __init__(self, max_depth: int | None = None, n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if max_depth is not None and int(max_depth) < 1:
            raise ConfigError(f"decision_tree max_depth={max_depth} must be >= 1")
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

    shorthand, requires = "xgboost", ("xgboost",)
    STRATEGIES = ("masked", "per_prefix")

    def __init__(self, n_estimators: int = 5, max_depth: int = 4, learning_rate: float = 0.5,
                 strategy: str = "masked", n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if self.missing_modules():
            raise ConfigError("the xgboost baseline needs xgboost, which is not installed: "
                              "`pip install xgboost` (or loopformer[xgboost]), or drop it")
        if strategy not in self.STRATEGIES:
            raise ConfigError(f"xgboost strategy={strategy!r}; "
                              f"choose one of {list(self.STRATEGIES)}")
        if int(n_estimators) < 1 or int(max_depth) < 1 or not learning_rate > 0:
            raise ConfigError("xgboost needs n_estimators >= 1, max_depth >= 1 "
                              "and learning_rate > 0")
        self.n_estimators, self.max_depth = int(n_estimators), int(max_depth)
        self.learning_rate, self.strategy = float(learning_rate), strategy

    @property
    def name(self) -> str:
        return f"xgboost_n{self.n_estimators}_depth{self.max_depth}_lr{self.learning_rate:g}"

    def _prompt_fn(self):
        fn = _xgb_prompt_masked if self.strategy == "masked" else _xgb_prompt_per_prefix
        return fn, {"n_estimators": self.n_estimators, "max_depth": self.max_depth,
                    "learning_rate": self.learning_rate}
