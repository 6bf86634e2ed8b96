"""Closed-form and neighbour baselines: batched tensor code over prompts *and* prefixes, on
the inputs' device (least squares, ridge, averaging, nearest neighbours)."""

from __future__ import annotations

import math

import torch

from loopformer.baselines.base import Baseline
from loopformer.errors import ConfigError

_MAX_CHUNK_ELEMS = 1 << 22  # elements of the largest per-chunk intermediate (~32 MB in f64)


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

    shorthand = "least_squares"
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


class Averaging(Baseline):
    """``w_k = mean_{i<k} y_i x_i``; predict ``x_k . w_k``."""

    shorthand = "averaging"

    @property
    def name(self) -> str:
        return "averaging"

    def predict(self, xs, ys):
        n = xs.shape[1]
        count = torch.arange(n, device=xs.device, dtype=torch.float64).clamp_min(1)
        return _predict_with(xs, _prefix_cross(xs, ys) / count.view(1, n, 1))


class NearestNeighbors(Baseline):
    """Mean ``y`` of the ``k`` nearest previous ``x`` (Euclidean; fewer if fewer exist)."""

    shorthand, suffix = "nearest_neighbors", "n_neighbors"

    def __init__(self, n_neighbors: int = 3):
        if int(n_neighbors) < 1:
            raise ConfigError(f"nearest_neighbors n_neighbors={n_neighbors} must be >= 1")
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


class Ridge(Baseline):
    """Ridge regression ``w_k = (X_k^T X_k + alpha I)^{-1} X_k^T y_k`` for every prefix (no
    intercept), by recursive least squares from ``P_0 = I / alpha`` (float64).

    For noisy linear regression with ``w ~ N(0, I)`` and noise std ``s``, ``alpha = s^2`` is
    the posterior mean, i.e. the Bayes-optimal predictor: ``Ridge(noise_std=s)``.
    """

    shorthand, suffix = "ridge", "alpha"

    def __init__(self, alpha: float | None = None, noise_std: float | None = None):
        if (alpha is None) == (noise_std is None):
            raise ConfigError("ridge needs its alpha, or the noise_std it is Bayes-optimal for "
                              "(alpha = noise_std^2), not both; e.g. 'ridge_0.01'")
        alpha = noise_std**2 if alpha is None else alpha
        if not alpha > 0:
            raise ConfigError(f"ridge alpha={alpha} must be > 0 (without noise it is least "
                              f"squares)")
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
