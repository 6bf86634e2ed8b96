"""Probes of a hidden state for a target vector, batched over many probes: linear (ridge,
closed form) and Yang et al.'s (a learned weighting over positions and an MLP)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class YangProbe:
    """Yang et al.'s probe (their ``scripts/model_probe.py``, read for its semantics): per
    unit of depth and per target, a learned softmax weighting over all token positions
    pools the state to one vector, and a two-layer ReLU MLP (``hidden`` wide) maps it to the
    target; each probe is trained by Adam (``lr``, no weight decay) on the mean squared error
    per target coordinate. They train 10,000 steps on fresh batches of 1280 prompts; we take
    ``epochs`` full-batch steps on a fixed training split and score a held-out one."""

    hidden: int = 64
    lr: float = 1e-3
    epochs: int = 1000  # a tenth of Yang et al.'s 10,000 steps
    seed: int = 0

    def to_dict(self) -> dict:
        return {"method": "Yang et al.: softmax weighting over positions + MLP (ReLU) per "
                          "unit and target, Adam, full batch on the training split",
                "hidden": self.hidden, "lr": self.lr, "epochs": self.epochs,
                "their_steps": 10000}


def _uniform(g: torch.Generator, fan_in: int, *shape: int) -> torch.Tensor:
    """``nn.Linear``'s initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in ** -0.5
    return (torch.rand(*shape, generator=g) * 2 - 1) * bound


class _YangProbes(torch.nn.Module):
    """``U x K`` probes: unit ``u``'s states (P, T, C) -> target ``k``'s (P, D)."""

    def __init__(self, U: int, K: int, T: int, C: int, D: int, cfg: YangProbe):
        super().__init__()
        g, H = torch.Generator().manual_seed(cfg.seed), cfg.hidden
        p = torch.nn.Parameter
        self.alpha = p(torch.randn(U, K, T, generator=g))  # position logits
        self.w1, self.b1 = p(_uniform(g, C, U, K, C, H)), p(_uniform(g, C, U, K, 1, H))
        self.w2, self.b2 = p(_uniform(g, H, U, K, H, D)), p(_uniform(g, H, U, K, 1, D))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(U, P, T, C) -> (U, K, P, D)."""
        pooled = torch.einsum("ukt,uptc->ukpc", self.alpha.softmax(-1), states)
        hidden = torch.relu(pooled @ self.w1 + self.b1)  # (U, K, P, H)
        return hidden @ self.w2 + self.b2


def yang_probes(train_states: torch.Tensor, train_targets: torch.Tensor,
                test_states: torch.Tensor, test_targets: torch.Tensor,
                cfg: YangProbe | None = None) -> dict[str, torch.Tensor]:
    """Train ``U x K`` Yang probes on states ``(U, N, T, C)`` (one per unit) for targets
    ``(K, N, D)``; return per probe ``(U, K)`` the test mean squared error per target
    coordinate (``mse``), that of the training mean (``chance_mse``) and ``relative`` (the
    ``mse`` over the test targets' own variance)."""
    cfg = cfg or YangProbe()
    U, _, T, C = train_states.shape
    K, _, D = train_targets.shape
    probes = _YangProbes(U, K, T, C, D, cfg)
    opt = torch.optim.Adam(probes.parameters(), lr=cfg.lr, weight_decay=0)
    x, y = train_states.float(), train_targets.float()
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            # the sum over probes gives each one the gradient of its own mean error
            loss = (probes(x) - y).square().mean(dim=(2, 3)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        ty = test_targets.float()
        mse = (probes(test_states.float()) - ty).square().mean(dim=(2, 3))  # (U, K)
    chance = (ty - y.mean(1, keepdim=True)).square().mean(dim=(1, 2))  # (K,)
    spread = (ty - ty.mean(1, keepdim=True)).square().mean(dim=(1, 2)).clamp_min(1e-30)
    return {"mse": mse, "chance_mse": chance.expand(U, K), "relative": mse / spread}
