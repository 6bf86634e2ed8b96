"""Linear (ridge) probes of a hidden state for a target vector, batched over many probes."""

from __future__ import annotations

import torch

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean feature variance


def ridge_probes(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, val_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """Fit one ridge probe (with intercept) per leading index: features ``(G, N, F)`` ->
    targets ``(G, N, D)``, ``G`` probes at once. The penalty is chosen per probe from
    :data:`LAMBDAS` on the last ``val_fraction`` of the training rows, then refitted on all of
    them. Returns per probe ``(G,)`` the test mean squared error per target coordinate
    (``mse``), the same for the constant predictor at the training mean (``chance_mse``) and
    ``relative``: ``mse`` over the test targets' own variance (1: no better than knowing the
    test mean)."""
    x, y, tx, ty = (t.double() for t in (train_x, train_y, test_x, test_y))
    n_val = max(1, int(round(val_fraction * x.shape[1])))
    fit_x, fit_y, val_x, val_y = x[:, :-n_val], y[:, :-n_val], x[:, -n_val:], y[:, -n_val:]
    best = _fit(fit_x, fit_y, LAMBDAS)  # list of (G, F, D) weights and (G, D) biases
    val_err = torch.stack([_mse(val_x, val_y, w, b) for w, b in best])  # (Lam, G)
    pick = val_err.argmin(dim=0)  # (G,)
    lam = torch.tensor(LAMBDAS, dtype=x.dtype)[pick]  # (G,)
    w, b = _fit_each(x, y, lam)
    mse = _mse(tx, ty, w, b)
    chance = (ty - y.mean(1, keepdim=True)).square().mean(dim=(1, 2))
    spread = (ty - ty.mean(1, keepdim=True)).square().mean(dim=(1, 2)).clamp_min(1e-300)
    return {"mse": mse, "chance_mse": chance, "relative": mse / spread, "lambda": lam}


def _center(x, y):
    mx, my = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    return x - mx, y - my, mx, my


def _fit(x, y, lambdas):
    xc, yc, mx, my = _center(x, y)
    gram = xc.transpose(1, 2) @ xc  # (G, F, F)
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)  # (G,)
    lam, vec = torch.linalg.eigh(gram)  # (G, F), (G, F, F)
    proj = vec.transpose(1, 2) @ (xc.transpose(1, 2) @ yc)  # (G, F, D)
    out = []
    for r in lambdas:
        w = vec @ (proj / (lam + r * scale.unsqueeze(1)).unsqueeze(-1))  # (G, F, D)
        out.append((w, my.squeeze(1) - (mx @ w).squeeze(1)))
    return out


def _fit_each(x, y, lam):
    xc, yc, mx, my = _center(x, y)
    gram = xc.transpose(1, 2) @ xc
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    w = torch.linalg.solve(gram + (lam * scale)[:, None, None] * eye, xc.transpose(1, 2) @ yc)
    return w, my.squeeze(1) - (mx @ w).squeeze(1)


def _mse(x, y, w, b):
    return (x @ w + b.unsqueeze(1) - y).square().mean(dim=(1, 2))  # (G,)
