"""A model's trajectory over its units of depth (loops, applications), and the largest
singular value of the loop map's Jacobian along it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from loopformer.models import STOP_RULES, InContextModel


@dataclass
class PowerIteration:
    """Power iteration on ``J^T J`` with autograd: ``J v`` by the double-vjp trick (the
    gradient, with respect to ``u``, of ``<J^T u, v>``) and ``J^T (J v)`` by a vjp. The
    attention runs on PyTorch's math kernel, whose derivatives are differentiable."""

    max_iter: int = 50
    tol: float = 1e-3  # stop when every prompt's estimate moved by less than this, relatively
    seed: int = 0

    def to_dict(self) -> dict:
        return {"method": "power iteration on J^T J (autograd: double vjp for J v, vjp for "
                          "J^T u), per prompt", "max_iter": self.max_iter, "tol": self.tol}


def _per_prompt_norm(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(t.flatten(1).square().sum(1) for t in ts))  # (B,)


def top_singular_value(fn, primals: tuple[torch.Tensor, ...],
                       power: PowerIteration | None = None) -> tuple[torch.Tensor, int]:
    """Largest singular value ``(B,)`` of the Jacobian of ``fn`` at ``primals``, per prompt.

    ``fn`` maps tensors of shape ``(B, ...)`` to a tuple of such tensors (None entries are
    ignored) and acts on each prompt (index along dim 0) separately, so the Jacobian is block
    diagonal and one batched power iteration, normalised per prompt, finds every block's top
    singular value. Returns the estimates and the iterations run."""
    power = power or PowerIteration()
    g = torch.Generator(device=primals[0].device).manual_seed(power.seed)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        xs = [p.detach().clone().requires_grad_(True) for p in primals]
        out = [o for o in fn(*xs) if o is not None]
        us = [torch.zeros_like(o, requires_grad=True) for o in out]
        jt_u = torch.autograd.grad(out, xs, us, create_graph=True, materialize_grads=True)
        v = [torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) for x in xs]
        sigma, n_iter = None, 0
        while n_iter < power.max_iter:
            n_iter += 1
            scale = _per_prompt_norm(v).clamp_min(1e-30)
            v = [t / scale.view(-1, *[1] * (t.dim() - 1)) for t in v]
            jv = torch.autograd.grad(jt_u, us, v, retain_graph=True, materialize_grads=True)
            new = _per_prompt_norm(jv)  # ||J v|| for a unit v
            v = list(torch.autograd.grad(out, xs, jv, retain_graph=True, materialize_grads=True))
            done = sigma is not None and bool(
                ((new - sigma).abs() <= power.tol * new.clamp_min(1e-30)).all())
            sigma = new.detach()
            if done:
                break
    return sigma, n_iter


MAX_PERIOD = 8  # the longest cycle told apart from a moving state
CLASS_WINDOW = 3  # loops, ending at the analysed one, over which a class must hold
MOVING = 0  # the period of a prompt neither at a fixed point (period 1) nor in a cycle


@dataclass
class Trajectory:
    """Per unit of depth ``t = 1..L`` (row ``t-1``) for ``P`` prompts: the predictions, each
    stopping rule's change from ``t-1`` to ``t`` (row 0 is NaN), and the relative distance
    ``||z_t - z_{t-p}|| / ||z_t||`` to the state ``p = 1..MAX_PERIOD`` units back (NaN before
    unit ``p + 1``; ``p = 1`` is the state rule's change). Hidden states are not kept: each
    is dropped once ``MAX_PERIOD`` later ones are computed."""

    preds: torch.Tensor  # (L, P, n): predictions, or a classification's answers (class ids)
    changes: dict[str, torch.Tensor]  # rule name -> (L, P)
    returns: torch.Tensor  # (L, P, MAX_PERIOD)
    sigma: dict[int, torch.Tensor] = field(default_factory=dict)  # loop -> (P_jac,)
    sigma_iters: dict[int, int] = field(default_factory=dict)


def return_distances(history: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``(B, MAX_PERIOD)``: ``||z - history[-p]|| / ||z||`` for ``p = 1..MAX_PERIOD`` (NaN
    where ``history`` is shorter)."""
    scale = z.flatten(1).norm(dim=1).clamp_min(torch.finfo(z.dtype).tiny)  # (B,)
    out = torch.full((z.shape[0], MAX_PERIOD), float("nan"), device=z.device)
    for p, past in enumerate(reversed(history[-MAX_PERIOD:]), start=1):
        out[:, p - 1] = (z - past).flatten(1).norm(dim=1) / scale
    return out


def periods(returns: torch.Tensor, t: int, tol: float,
            window: int = CLASS_WINDOW) -> torch.Tensor:
    """Per prompt ``(P,)`` at unit ``t`` (1-based) of ``returns`` (L, P, MAX_PERIOD): 1 at a
    fixed point (relative change below ``tol`` at each of the ``window`` units ending at
    ``t``), ``p`` in a cycle (the smallest ``p <= MAX_PERIOD`` whose distance to the state
    ``p`` units back stays below ``tol`` over the window while the one-step change does
    not), :data:`MOVING` (0) otherwise."""
    rows = returns[max(0, t - window):t]  # (w, P, MAX_PERIOD)
    holds = (rows < tol).all(dim=0) & (len(rows) == window)  # (P, MAX_PERIOD); NaN: False
    first = holds.to(torch.int8).argmax(dim=1) + 1  # (P,)
    return torch.where(holds.any(dim=1), first, MOVING)


def class_shares(period: torch.Tensor) -> dict:
    """The share of prompts at a fixed point, in a cycle (and per period) and moving."""
    P = period.numel()
    cycles = {str(p): float((period == p).sum()) / P for p in range(2, MAX_PERIOD + 1)
              if (period == p).any()}
    return {"fixed": float((period == 1).sum()) / P, "cycle": float((period > 1).sum()) / P,
            "moving": float((period == MOVING).sum()) / P, "cycle_periods": cycles}


@torch.no_grad()
def trajectory(model: InContextModel, xs, ys, n_loops: int, batch_size: int,
               jacobian_loops: tuple[int, ...] = (), jacobian_prompts: int = 32,
               power: PowerIteration | None = None,
               settle_tol: float | None = None) -> Trajectory:
    """Run ``model.iterate`` for ``n_loops`` units on all prompts, in batches. At each loop
    in ``jacobian_loops``, the top singular value of the Jacobian of the next unit's map at
    the state reached (the first ``jacobian_prompts`` prompts). With ``settle_tol``, settled
    prompts are carried forward (:func:`~loopformer.models.settled_loop`): their changes
    read 0 from then on."""
    P, n = ys.shape
    power = power or PowerIteration()
    preds = torch.empty(n_loops, P, n)
    changes = {name: torch.full((n_loops, P), float("nan")) for name in STOP_RULES}
    out = Trajectory(preds, changes, torch.empty(n_loops, P, MAX_PERIOD))
    for i in range(0, P, batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        prev_z = prev_pred = None
        history: list[torch.Tensor] = []  # the last MAX_PERIOD states
        for t, z, s in model.iterate(x, y, n_loops, settle_tol=settle_tol):
            pred = model.read(z)  # (b, n) numbers, or (b, n, C) logits
            # a classification read-out keeps its answers (arg-max class ids)
            preds[t - 1, i:i + len(x)] = (pred.argmax(-1) if pred.dim() == 3
                                          else pred).float().cpu()
            out.returns[t - 1, i:i + len(x)] = return_distances(history, z).float().cpu()
            history = [*history[-MAX_PERIOD + 1:], z]
            if prev_z is not None:
                for name, rule in STOP_RULES.items():
                    changes[name][t - 1, i:i + len(x)] = rule.change(
                        prev_z, z, prev_pred, pred).float().cpu()
            if i == 0 and t in jacobian_loops:
                m = min(jacobian_prompts, len(x))
                with torch.enable_grad():
                    step = model.unit_map(x[:m], y[:m])
                state = (z[:m], s[:m]) if s is not None else (z[:m],)
                fn = step if s is not None else (lambda z_, f=step: f(z_, None))
                out.sigma[t], out.sigma_iters[t] = top_singular_value(fn, state, power)
            prev_z, prev_pred = z, pred
    return out


def first_below(curve: list[float], level: float) -> dict:
    """The first loop (1-based) where ``curve`` falls below ``level``, and whether it stays
    below to the end; ``"never"`` when it does not."""
    for t, value in enumerate(curve, start=1):
        if value < level:
            stays = all(v < level for v in curve[t - 1:])
            return {"loop": t, "stays_below": stays}
    return {"loop": "never", "stays_below": False}
