"""Out of distribution: Garg et al.'s shifted-prompt suite for in-context linear regression.

Each :class:`Shift` changes how the prompts of a linear task (dense, noisy or sparse) are drawn;
the function class stays the task's. With ``N`` the task's normaliser (``d`` for dense
regression, the sparsity for sparse) and ``d`` the active dims, the shifts and the normaliser
each is scored with (the zero predictor scores about 1 under every one):

==========================  ==================================================  ==========
shift                       prompts                                             normaliser
==========================  ==================================================  ==========
standard                    ``x ~ N(0, I_d)``                                   ``N``
random_quadrants            in-context ``x`` folded into one random orthant     ``N``
                            per prompt (``|x| * sign``); the query unfolded
orthogonal_train_test       query ``i < d`` orthogonal to ``x_0..x_{i-1}``,      ``N``
                            with ``x_i``'s norm; positions ``i >= d`` unscored
overlapping_train_test      query ``i`` repeats ``x_j``, ``j`` uniform in        ``N``
                            ``0..i-1`` (query 0 is ``x_0``)
half_subspace               ``x = z T``, ``T = c U diag(1,..,1,0,..,0) U^T``    ``N``
                            (``d/2`` ones); covariance rank ``d/2``, trace ``d``
skewed                      ``T = c U diag(1, 1/2, .., 1/d) U^T``: covariance    ``N``
                            eigenvalues ``prop. to 1/i^2``, trace ``d``
scale_x_<s>                 ``x = s z``                                         ``s^2 N``
scale_y_<s>                 ``y = s f(x)``                                      ``s^2 N``
noisy_linear_regression     noise std 1, then ``y *= sqrt(N / (N + 1))``        ``N``
==========================  ==================================================  ==========

``U`` is one random rotation per evaluation and ``c = sqrt(d / sum(eigenvalues^2))`` (Garg et
al.'s ``sample_transformation``, normalised): ``T``'s eigenvalues ``1/i`` make the covariance's
``1/i^2``. The noisy shift rescales ``y`` by the expected factor where Garg et al. rescale
each batch to ``std(y) = sqrt(d)``. The suite's scales are Garg et al.'s (0.333, 0.5, 2, 3).
Least squares stays exact from ``d`` examples on under every noiseless shift (a linear map of
``x`` keeps ``y`` linear in it; half subspace from ``d/2``).

Three shifts change the query alone (the *prompting* shifts). Garg et al. run one prompt per
query position; here all positions go in one pass: the queries become side tokens
(:meth:`loopformer.models.InContextModel.layout`) for attention models, or, for other mixers,
one batch of per-position prompts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch

from loopformer.baselines import Ridge
from loopformer.errors import ConfigError
from loopformer.scoring import model_errors
from loopformer.stats import bootstrap_band
from loopformer.tasks import Task

CONFIG_KEY = "eval.ood"
SUITE_KEY = "eval.ood_suite"
PROMPTING = ("random_quadrants", "orthogonal_train_test", "overlapping_train_test")
COVARIANCES = ("half_subspace", "skewed")
SCALES = ("scale_x", "scale_y")
KINDS = ("standard", *PROMPTING, *COVARIANCES, *SCALES, "noisy_linear_regression")
NOISE_STD = 1.0  # the noisy shift's noise (Garg et al.'s noisyLR)


class Prompts(NamedTuple):
    """Shifted prompts. Without ``queries`` the prediction at ``i`` is scored against
    ``ys[:, i]``; with them, the prediction from ``xs[:, :i], ys[:, :i]`` at ``queries[:, i]``
    is scored against ``query_ys[:, i]`` (``m <= n`` positions)."""

    xs: torch.Tensor  # (P, n, D) in-context inputs (D = the model's dims)
    ys: torch.Tensor  # (P, n)
    queries: torch.Tensor | None = None  # (P, m, D)
    query_ys: torch.Tensor | None = None  # (P, m)


@dataclass(frozen=True)
class Shift:
    """One shift of the suite, by name: a kind and, for the scalings, a scale > 0."""

    kind: str
    scale: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.scale:g}" if self.kind in SCALES else self.kind

    @classmethod
    def parse(cls, name: str) -> Shift:
        m = re.fullmatch(r"(scale_[xy])_(.+)", str(name))
        if m is None:
            if name not in KINDS or name in SCALES:
                raise ConfigError(f"{CONFIG_KEY} has unknown shift {name!r}; allowed: "
                                  f"{allowed_names()}")
            return cls(name)
        try:
            scale = float(m[2])
        except ValueError:
            raise ConfigError(f"{CONFIG_KEY} has unknown shift {name!r}; allowed: "
                              f"{allowed_names()}") from None
        if not scale > 0 or not math.isfinite(scale):
            raise ConfigError(f"{CONFIG_KEY}: {name} has scale {m[2]}; a scale must be > 0")
        return cls(m[1], scale)

    def normalizer(self, base: float) -> float:
        """E[y^2] under the shift, from the task's ``base`` = E[y^2] of the noiseless target."""
        return base * self.scale**2 if self.kind in SCALES else base

    def scored_positions(self, n: int, d: int) -> int:
        """Orthogonal queries exist only while the examples do not span the ``d`` dims."""
        return min(n, d) if self.kind == "orthogonal_train_test" else n

    def sample(self, task: Task, n_prompts: int, n_points: int, d: int,
               g: torch.Generator) -> Prompts:
        """``n_prompts`` shifted prompts of ``n_points`` points over ``d`` active dims."""
        z = torch.randn(n_prompts, n_points, d, generator=g, device=g.device)  # (P, n, d)
        if self.kind in COVARIANCES:
            z = z @ transformation(self.eigenvalues(d), g)
        elif self.kind == "scale_x":
            z = z * self.scale
        xs, queries = z, None
        if self.kind == "random_quadrants":
            signs = torch.randn(n_prompts, 1, d, generator=g, device=g.device).sign()
            xs, queries = z.abs() * signs, z
        elif self.kind == "orthogonal_train_test":
            queries = orthogonal_queries(z[:, : self.scored_positions(n_points, d)])
        elif self.kind == "overlapping_train_test":
            queries = overlapping_queries(z, g)
        full = _pad(torch.cat((xs, queries), 1) if queries is not None else xs, task.n_dims)
        ys = task._targets(full, d, g)  # (P, n [+ m]): one function per prompt for both
        if self.kind == "scale_y":
            ys = ys * self.scale
        elif self.kind == "noisy_linear_regression":
            base = task.normalizer(d)
            own = getattr(task, "noise_std", 0.0)  # a noisy task's noise, raised to NOISE_STD
            extra = math.sqrt(max(0.0, NOISE_STD**2 - own**2))
            ys = (ys + extra * torch.randn(ys.shape, generator=g, device=g.device)) * \
                math.sqrt(base / (base + NOISE_STD**2))
        if queries is None:
            return Prompts(full, ys)
        return Prompts(full[:, :n_points], ys[:, :n_points], full[:, n_points:],
                       ys[:, n_points:])

    def eigenvalues(self, d: int) -> torch.Tensor:
        """The transformation's eigenvalues (the covariance's are their squares, rescaled)."""
        if self.kind == "half_subspace":
            return (torch.arange(d) < d // 2).double()
        return 1.0 / torch.arange(1, d + 1, dtype=torch.float64)


def allowed_names() -> list[str]:
    return [k if k not in SCALES else f"{k}_<scale>" for k in KINDS]


def _pad(xs: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Zero coordinates beyond the active ones: (P, n, d) -> (P, n, n_dims)."""
    return torch.nn.functional.pad(xs, (0, n_dims - xs.shape[-1]))


def transformation(eigenvalues: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``c U diag(eigenvalues) U^T`` for a random rotation ``U``, ``c`` making the covariance
    of ``z T`` (``z ~ N(0, I)``) have trace ``d``: ``(d, d)``."""
    d = eigenvalues.numel()
    a = torch.randn(d, d, generator=g, device=g.device, dtype=torch.float64)
    u, _ = torch.linalg.qr(a)  # a uniformly random rotation (up to column signs)
    lam = eigenvalues.to(a.device)
    t = u @ torch.diag(lam) @ u.T * math.sqrt(d / lam.square().sum())
    return t.float()


def orthogonal_queries(xs: torch.Tensor) -> torch.Tensor:
    """Query ``i``: the part of ``x_i`` orthogonal to ``x_0..x_{i-1}``, rescaled to
    ``|x_i|`` (Gram-Schmidt, one batched QR): (P, m, d) -> (P, m, d), ``m <= d``."""
    q, r = torch.linalg.qr(xs.double().transpose(1, 2))  # q (P, d, m), r (P, m, m)
    sign = torch.diagonal(r, dim1=1, dim2=2).sign()  # (P, m): x_i's side of its new direction
    direction = q.transpose(1, 2) * sign.unsqueeze(-1)  # (P, m, d) unit vectors
    return (direction * xs.double().norm(dim=-1, keepdim=True)).to(xs.dtype)


def overlapping_queries(xs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Query ``i >= 1``: ``x_j`` for ``j`` uniform in ``0..i-1``; query 0: ``x_0``."""
    P, n, _ = xs.shape
    i = torch.arange(n, device=xs.device)
    u = torch.rand(P, n, generator=g, device=g.device)
    j = (u * i).floor().long().clamp(max=(i - 1).clamp(min=0))  # (P, n), j < i (0 at i=0)
    return xs.gather(1, j.unsqueeze(-1).expand_as(xs))


def per_position_prompts(p: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """For each prompt and query position ``i < m``, the plain prompt whose point ``i`` is the
    query: ``(P * m, n, D)``, ``(P * m, n)``, prompt ``p * m + i`` scored at ``i``."""
    P, n, D = p.xs.shape
    m = p.queries.shape[1]
    xs = p.xs.unsqueeze(1).repeat(1, m, 1, 1)  # (P, m, n, D)
    ys = p.ys.unsqueeze(1).repeat(1, m, 1)  # (P, m, n)
    i = torch.arange(m, device=xs.device)
    xs[:, i, i] = p.queries  # (P, m, D) into point i of prompt i
    ys[:, i, i] = p.query_ys
    return xs.reshape(P * m, n, D), ys.reshape(P * m, n)


def resolve(ood, suite) -> tuple[str, ...]:
    """``eval.ood`` (``none``, ``default``: the task's ``eval.ood_suite``, or a list of shift
    names) -> the shift names to score, each checked against the task's suite."""
    suite = [Shift.parse(s).name for s in (suite or ())]
    if ood in (None, "none"):
        return ()
    if not suite:
        raise ConfigError(f"{CONFIG_KEY}={ood}: this task has no out-of-distribution suite "
                          f"(Garg et al. score it in distribution only); use {CONFIG_KEY}=none")
    if ood == "default":
        return tuple(suite)
    if isinstance(ood, str) or not isinstance(ood, (list, tuple)):
        raise ConfigError(f"{CONFIG_KEY}={ood!r} is not none, default or a list of shifts; "
                          f"allowed shifts: {allowed_names()}")
    kinds = {Shift.parse(s).kind for s in suite}
    names = []
    for entry in ood:
        shift = Shift.parse(entry)
        if shift.kind not in kinds:
            raise ConfigError(f"{CONFIG_KEY}: shift {shift.name} does not apply to this task; "
                              f"its suite ({SUITE_KEY}): {suite}")
        if shift.name not in names:
            names.append(shift.name)
    return tuple(names)


# ----------------------------------------------------------------------------- scoring

SEED_STREAM = 24  # the suite's prompts: generator(device, eval.seed, SEED_STREAM, shift)


def summary_position(n_scored: int, d: int) -> int:
    """The position the summary reads: ``k = 2d`` examples, or the last scored one."""
    return min(2 * d, n_scored - 1)


@torch.no_grad()
def model_errors_on(model, p: Prompts, norm: float, spec, loops: list[int],
                    batch_size: int, settle_tol: float | None = None) -> dict[str, torch.Tensor]:
    """The model's normalised errors ``(P, m)`` per loop count on shifted prompts ``p``
    (``settle_tol``: :func:`~loopformer.scoring.model_errors`)."""
    if p.queries is None:
        errors = model_errors(model, p.xs, p.ys, norm, spec, loops, batch_size,
                              settle_tol=settle_tol)
    elif model.cfg.mixer == "attention":  # all query positions as side tokens, one pass
        errors = model_errors(model, p.xs, p.ys, norm, spec, loops, batch_size,
                              queries=p.queries, query_ys=p.query_ys, settle_tol=settle_tol)
    else:  # no mask for a recurrent mixer: one plain prompt per query position, one batch
        P, m = p.query_ys.shape
        xs, ys = per_position_prompts(p)
        errors = model_errors(model, xs, ys, norm, spec, loops, batch_size,
                              settle_tol=settle_tol)
        errors = {k: e.view(P, m, -1).diagonal(dim1=1, dim2=2) for k, e in errors.items()
                  if k != "loop_curve"}
    errors.pop("loop_curve", None)
    return errors


def baseline_errors(baseline, p: Prompts, norm: float) -> torch.Tensor:
    """A baseline's normalised errors ``(P, m)``; with queries, query ``i`` after the
    examples ``0..i-1`` (a baseline's prediction at ``i`` reads nothing later)."""
    if p.queries is None:
        return (baseline(p.xs, p.ys) - p.ys).square() / norm
    preds = [baseline(torch.cat((p.xs[:, :i], p.queries[:, i:i + 1]), 1),
                      torch.cat((p.ys[:, :i], p.query_ys[:, i:i + 1]), 1))[:, -1]
             for i in range(p.queries.shape[1])]
    return (torch.stack(preds, 1) - p.query_ys).square() / norm


def shift_baselines(shift: Shift, baselines) -> list:
    """The run's baselines, plus ridge at the noisy shift's noise (Bayes-optimal there)."""
    out = list(baselines)
    if shift.kind == "noisy_linear_regression":
        ridge = Ridge(noise_std=NOISE_STD)
        if ridge.name not in {b.name for b in out}:
            out.append(ridge)
    return out


def evaluate_ood(model, spec, ev, device, loops: list[int]) -> dict:
    """``results["ood"]``: per shift ``ev.ood`` selects (``ev.shifts``), its normaliser and
    the curves of the model (at every loop count in ``loops``: the trained one and
    ``eval.extra_loops``) and of the baselines, scored as the standard evaluation scores
    them."""
    from loopformer.data import generator  # imports lightning: after the config's checks

    shape = spec.curriculum.final
    d, n = shape.n_dims, shape.n_points
    out = {}
    for name in ev.shifts:
        shift = Shift.parse(name)
        g = generator(device, ev.seed, SEED_STREAM, KINDS.index(shift.kind),
                      round(shift.scale * 1000))
        p = shift.sample(spec.function, ev.n_prompts, n, d, g)
        norm = shift.normalizer(spec.function.normalizer(d))
        errors = model_errors_on(model, p, norm, spec, loops, ev.batch_size, ev.settle_tol)
        kinds = dict.fromkeys(errors, "model")
        cpu = Prompts(*(t.cpu() if t is not None else None for t in p))
        for b in shift_baselines(shift, ev.predictors):
            errors[b.name] = baseline_errors(b, cpu, norm)
            kinds[b.name] = "baseline"
        m = shift.scored_positions(n, d)
        out[name] = {
            "normalizer": norm, "n_scored": m, "summary_k": summary_position(m, d),
            "curves": {k: {"kind": kinds[k], **bootstrap_band(
                e.cpu(), n_resamples=ev.n_resamples, seed=ev.seed).to_dict()}
                for k, e in errors.items()},
        }
    return out


def format_ood_table(results: dict) -> str:
    """Mean normalised error at the summary position, per shift (rows) and curve."""
    ood = results["ood"]
    names = list(dict.fromkeys(c for block in ood.values() for c in block["curves"]))
    width = max(len(s) for s in ood) + 2
    lines = [f"out of distribution: normalised error at k = 2d = {2 * results['active_dims']}"
             f" examples (* the last scored position)",
             f"{'':<{width}}" + "".join(f"{c:>{max(14, len(c) + 2)}}" for c in names)]
    for shift, block in ood.items():
        k = block["summary_k"]
        mark = "*" if k != 2 * results["active_dims"] else " "
        lines.append(f"{shift + mark:<{width}}" + "".join(
            f"{block['curves'][c]['mean'][k]:>{max(14, len(c) + 2)}.4f}" if c in block["curves"]
            else " " * max(14, len(c) + 2) for c in names))
    return "\n".join(lines)

