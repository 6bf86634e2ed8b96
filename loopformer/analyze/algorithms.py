"""Iterative algorithms and closed forms for in-context least squares, on every prefix of every
prompt at once, and the cosine match of a model's residuals to theirs.

For prompt ``p`` and position ``k`` the context is the ``k`` examples before it,
``X_k`` (k, d) and ``y_k`` (k,); an algorithm's prediction there is ``x_k . w`` for its weights
``w`` fitted on that context (no examples: ``w = 0``). All tensors are batched over prompts and
positions, ``(P, n, ...)``; the arithmetic is float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Prefixes(NamedTuple):
    """Every prefix of every prompt in the eigenbasis of its Gram matrix ``S_k = X_k^T X_k``."""

    eigvals: torch.Tensor  # (P, n, d) eigenvalues of S_k (ascending), clipped at 0
    eigvecs: torch.Tensor  # (P, n, d, d) columns: eigenvectors of S_k
    gram: torch.Tensor  # (P, n, d, d) S_k
    xty: torch.Tensor  # (P, n, d) X_k^T y_k
    query: torch.Tensor  # (P, n, d) x_k
    ys: torch.Tensor  # (P, n) y_k, the targets
    counts: torch.Tensor  # (n,) k, examples in each prefix


def prefixes(xs: torch.Tensor, ys: torch.Tensor) -> Prefixes:
    """Gram matrices and ``X^T y`` of the ``k`` examples before each position ``k``."""
    x, y = xs.double(), ys.double()  # (P, n, d), (P, n)
    outer = torch.einsum("pni,pnj->pnij", x, x)  # (P, n, d, d)
    gram = torch.cumsum(outer, dim=1) - outer  # examples strictly before k
    xty = torch.cumsum(x * y.unsqueeze(-1), dim=1) - x * y.unsqueeze(-1)  # (P, n, d)
    lam, vec = torch.linalg.eigh(gram)  # (P, n, d), (P, n, d, d)
    counts = torch.arange(xs.shape[1], device=xs.device)
    return Prefixes(lam.clamp_min(0), vec, gram, xty, x, y, counts)


def _rank_mask(lam: torch.Tensor) -> torch.Tensor:
    """Eigenvalues above the numerical noise of their matrix (the null space of ``X_k`` has
    no component of ``X_k^T y``, so its directions are dropped, as by the pseudo-inverse)."""
    top = lam.amax(dim=-1, keepdim=True)
    return lam > top * lam.shape[-1] * torch.finfo(lam.dtype).eps * 10


def _predict_spectral(pre: Prefixes, factor: torch.Tensor) -> torch.Tensor:
    """Predictions ``x_k . V diag(factor) V^T X_k^T y_k`` ``(P, n)`` for a spectral filter
    ``factor`` (P, n, d) applied to the eigenvalues."""
    coef = torch.einsum("pnij,pni->pnj", pre.eigvecs, pre.xty)  # V^T X^T y, (P, n, d)
    proj = torch.einsum("pnij,pni->pnj", pre.eigvecs, pre.query)  # V^T x_k, (P, n, d)
    return (proj * factor * coef).sum(-1)  # (P, n)


def least_squares(pre: Prefixes) -> torch.Tensor:
    """Minimum-norm least squares predictions ``(P, n)`` (the pseudo-inverse of ``S_k``)."""
    keep = _rank_mask(pre.eigvals)
    return _predict_spectral(pre, torch.where(keep, 1 / pre.eigvals.clamp_min(1e-300), 0.0))


def ridge(pre: Prefixes, lam: float) -> torch.Tensor:
    """Ridge predictions ``(P, n)``: ``w = (S_k + lam I)^-1 X_k^T y_k``."""
    return _predict_spectral(pre, 1 / (pre.eigvals + lam))


def smoothness(pre: Prefixes) -> torch.Tensor:
    """``L`` ``(P, n)``: the largest eigenvalue of the Hessian ``S_k / k`` of the in-context
    loss ``||X_k w - y_k||^2 / (2k)`` (0 for the empty prefix)."""
    return pre.eigvals[..., -1] / pre.counts.clamp_min(1)


def _gd_filter(pre: Prefixes, step_times_l: float, k: int) -> torch.Tensor:
    """The spectral filter ``(P, n, d)`` of the ``k``-th gradient-descent iterate: in the
    eigenbasis of ``S_k / k`` it is ``(1 - (1 - eta lam)^k) / lam`` times ``X_k^T y_k / k``."""
    n_ex = pre.counts.clamp_min(1).view(1, -1, 1)
    lam = pre.eigvals / n_ex  # (P, n, d)
    eta = step_times_l / smoothness(pre).clamp_min(1e-300).unsqueeze(-1)  # (P, n, 1)
    contraction = (1 - eta * lam).clamp(-1, 1)  # a step <= 2/L keeps it in [-1, 1]
    factor = (1 - contraction.pow(k)) / lam.clamp_min(1e-300)
    return torch.where(_rank_mask(pre.eigvals), factor, 0.0) / n_ex


def gradient_descent(pre: Prefixes, step_times_l: float, iters: list[int]) -> torch.Tensor:
    """Predictions ``(K, P, n)`` of gradient descent on ``||X_k w - y_k||^2 / (2k)`` from
    ``w = 0`` with step ``step_times_l / L`` (``L``: :func:`smoothness`), after each count in
    ``iters``: the exact iterates, in closed form, so 5000 iterations cost one evaluation."""
    return torch.stack([_predict_spectral(pre, _gd_filter(pre, step_times_l, k))
                        for k in iters])  # (K, P, n)


def gd_weights(pre: Prefixes, step_times_l: float, k: int) -> torch.Tensor:
    """The weights ``(P, n, d)`` of :func:`gradient_descent`'s ``k``-th iterate."""
    coef = torch.einsum("pnij,pni->pnj", pre.eigvecs, pre.xty)  # (P, n, d)
    return torch.einsum("pnij,pnj->pni", pre.eigvecs, _gd_filter(pre, step_times_l, k) * coef)


def newton(pre: Prefixes, n_iter: int) -> torch.Tensor:
    """Predictions ``(n_iter, P, n)`` of Iterative Newton (Newton-Schulz on ``S = X_k^T X_k``):
    ``M_0 = S / ||S||_2^2``, ``M_{j+1} = 2 M_j - M_j S M_j``, ``w_j = M_j X_k^T y_k``, for
    ``j = 1..n_iter``. ``M_j S`` tends to the projector on the row space of ``X_k``, so
    ``w_j`` tends to the minimum-norm least-squares weights (quadratically, once close)."""
    top = pre.eigvals[..., -1].clamp_min(1e-300)  # (P, n)
    m = pre.gram / top.square()[..., None, None]  # (P, n, d, d)
    out = []
    for _ in range(n_iter):
        m = 2 * m - m @ pre.gram @ m
        w = (m @ pre.xty.unsqueeze(-1)).squeeze(-1)  # (P, n, d)
        out.append((w * pre.query).sum(-1))
    return torch.stack(out)  # (n_iter, P, n)


def log_grid(last: int, n: int = 40) -> list[int]:
    """0 and about ``n`` iteration counts spaced evenly in log from 1 to ``last``."""
    steps = {round(math.exp(i * math.log(last) / (n - 1))) for i in range(n)}
    return [0, *sorted(steps)]


def cosine_match(model_res: torch.Tensor, algo_res: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of the cosine similarity between residual vectors: ``model_res``
    (L, P, m) and ``algo_res`` (K, P, m) -> (L, K)."""
    def unit(r):
        r = r.double()
        return r / r.norm(dim=-1, keepdim=True).clamp_min(1e-300)

    return torch.einsum("lpm,kpm->lk", unit(model_res), unit(algo_res)) / model_res.shape[1]


def best_match(sim: torch.Tensor, iters: list[int]) -> tuple[list[int], list[float]]:
    """Per row (loop) of ``sim`` (L, K): the best-matching iteration and its similarity."""
    best, idx = sim.max(dim=1)
    return [iters[i] for i in idx.tolist()], best.tolist()
