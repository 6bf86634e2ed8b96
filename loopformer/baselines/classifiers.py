"""Per-prompt classifiers for in-context classification (real tables, ``task.name=openml``):
the majority class and k-nearest neighbours as batched tensor code, logistic regression and
XGBoost fitted per (prompt, prefix) on the CPU.

The signature is every baseline's (:class:`~loopformer.baselines.base.Baseline`): ``ys`` holds
class ids, and ``preds[:, k]`` is the class predicted for ``ys[:, k]`` from examples
``0..k-1`` only. With no example (``k = 0``) every baseline predicts class 0; with one class
among the examples, the fitted ones predict it (a solver cannot fit a single class). Ties go
to the smallest class id, as scikit-learn breaks them. Accuracy per number of in-context
examples is ``(preds == ys).float().mean(0)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from loopformer.baselines.base import Baseline
from loopformer.baselines.closed_form import _batch_chunks, _exclusive_cumsum
from loopformer.baselines.fitted import CpuFitBaseline
from loopformer.errors import ConfigError


def _check_classes(ys: torch.Tensor) -> int:
    """The number of classes a prompt batch can hold (1 + its largest id)."""
    if ys.dtype.is_floating_point or ys.dtype == torch.bool or (ys.numel() and ys.min() < 0):
        raise ValueError(f"a classification baseline needs class ids (int64 >= 0); got "
                         f"{ys.dtype}")
    return int(ys.max()) + 1 if ys.numel() else 1


class MajorityClass(Baseline):
    """The most frequent class among the examples so far."""

    shorthand, classifies = "majority_class", True

    @property
    def name(self) -> str:
        return "majority_class"

    def predict(self, xs, ys):
        n_classes = _check_classes(ys)
        onehot = torch.nn.functional.one_hot(ys, n_classes)  # (B, n, C)
        return _exclusive_cumsum(onehot).argmax(-1)  # (B, n); first maximum: smallest id


class KNNClassifier(Baseline):
    """Majority vote of the ``n_neighbors`` nearest previous examples (Euclidean; all of them
    while there are fewer), as scikit-learn's ``KNeighborsClassifier`` (uniform weights)."""

    shorthand, suffix, classifies = "knn", "n_neighbors", True

    def __init__(self, n_neighbors: int = 3):
        if int(n_neighbors) < 1:
            raise ConfigError(f"knn n_neighbors={n_neighbors} must be >= 1")
        self.n_neighbors = int(n_neighbors)

    @property
    def name(self) -> str:
        return f"knn_{self.n_neighbors}"

    def predict(self, xs, ys):
        n_classes = _check_classes(ys)
        B, n, _ = xs.shape
        k = min(self.n_neighbors, n - 1)
        if k == 0:
            return torch.zeros_like(ys)
        future = torch.ones(n, n, dtype=torch.bool, device=xs.device).triu()  # i >= query
        out = []
        for sl in _batch_chunks(B, n * n):
            dist = torch.cdist(xs[sl].double(), xs[sl].double(),
                               compute_mode="donot_use_mm_for_euclid_dist")
            dist = dist.masked_fill(future, math.inf)  # (b, n, n): [query, candidate]
            vals, idx = dist.topk(k, dim=-1, largest=False)  # (b, n, k)
            labels = ys[sl].gather(1, idx.flatten(1)).view_as(idx)  # (b, n, k)
            votes = torch.nn.functional.one_hot(labels, n_classes)  # (b, n, k, C)
            votes = (votes * torch.isfinite(vals).unsqueeze(-1)).sum(2)  # (b, n, C)
            out.append(votes.argmax(-1))
        return torch.cat(out)


def _classify_prompt(x: np.ndarray, y: np.ndarray, seed: int, make, encode: bool
                     ) -> np.ndarray:
    """Predictions at positions ``0..n-1`` of one prompt from fits on each prefix;
    ``make(seed)`` builds an unfitted classifier. ``encode``: fit on the prefix's classes
    renumbered 0..m-1 (xgboost wants consecutive ids)."""
    y = y.astype(np.int64)
    preds = np.zeros(len(y))
    for k in range(1, len(y)):
        classes = np.unique(y[:k])
        if len(classes) == 1:
            preds[k] = classes[0]
            continue
        target = np.searchsorted(classes, y[:k]) if encode else y[:k]
        est = make(seed).fit(x[:k], target)
        p = est.predict(x[k:k + 1])[0]
        preds[k] = classes[int(p)] if encode else p
    return preds


def _logistic_prompt(x, y, seed, C: float, max_iter: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return _classify_prompt(x, y, seed,
                            lambda s: LogisticRegression(C=C, max_iter=max_iter), False)


def _xgb_prompt(x, y, seed, n_estimators: int, max_depth: int, learning_rate: float
                ) -> np.ndarray:
    import xgboost as xgb

    def make(s: int):
        return xgb.XGBClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                 learning_rate=learning_rate, n_jobs=1, random_state=s,
                                 verbosity=0)

    return _classify_prompt(x.astype(np.float32), y, seed, make, True)


class LogisticRegression(CpuFitBaseline):
    """scikit-learn ``LogisticRegression(C, max_iter)`` (L2, lbfgs, with intercept) per prompt
    and prefix."""

    shorthand, suffix, classifies = "logistic_regression", "C", True

    def __init__(self, C: float = 1.0, max_iter: int = 1000, n_jobs: int | None = -1,
                 seed: int = 0):
        super().__init__(n_jobs, seed)
        if not C > 0 or int(max_iter) < 1:
            raise ConfigError(f"logistic_regression needs C > 0 and max_iter >= 1; got {C}, "
                              f"{max_iter}")
        self.C, self.max_iter = float(C), int(max_iter)

    @property
    def name(self) -> str:
        return f"logistic_regression_C{self.C:g}"

    def _prompt_fn(self) -> tuple[Any, dict[str, Any]]:
        return _logistic_prompt, {"C": self.C, "max_iter": self.max_iter}

    def predict(self, xs, ys):
        _check_classes(ys)
        return super().predict(xs, ys).long()


class XGBoostClassifier(CpuFitBaseline):
    """xgboost's ``XGBClassifier`` per prompt and prefix (logistic loss; softmax for more
    than two classes). Defaults are xgboost's own: 100 trees of depth 6, learning rate 0.3."""

    shorthand, requires, classifies = "xgboost_classifier", ("xgboost",), True

    def __init__(self, n_estimators: int = 100, max_depth: int = 6, learning_rate: float = 0.3,
                 n_jobs: int | None = -1, seed: int = 0):
        super().__init__(n_jobs, seed)
        if self.missing_modules():
            raise ConfigError("the xgboost_classifier baseline needs xgboost, which is not "
                              "installed: `pip install xgboost`, or drop it")
        if int(n_estimators) < 1 or int(max_depth) < 1 or not learning_rate > 0:
            raise ConfigError("xgboost_classifier needs n_estimators >= 1, max_depth >= 1 and "
                              "learning_rate > 0")
        self.n_estimators, self.max_depth = int(n_estimators), int(max_depth)
        self.learning_rate = float(learning_rate)

    @property
    def name(self) -> str:
        return (f"xgboost_classifier_n{self.n_estimators}_depth{self.max_depth}"
                f"_lr{self.learning_rate:g}")

    def _prompt_fn(self):
        return _xgb_prompt, {"n_estimators": self.n_estimators, "max_depth": self.max_depth,
                             "learning_rate": self.learning_rate}

    def predict(self, xs, ys):
        _check_classes(ys)
        return super().predict(xs, ys).long()
