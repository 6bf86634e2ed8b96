"""``python -m loopformer.analyze``: what a trained run's loop computes (the parts
``dynamics``, ``match``, ``probe``, ``exit``), written to ``RUN_DIR/analysis/``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loopformer.analyze import algorithms as alg
from loopformer.analyze.dynamics import (
    CLASS_WINDOW,
    MAX_PERIOD,
    PowerIteration,
    class_shares,
    first_below,
    periods,
    trajectory,
)
from loopformer.analyze.exits import evaluate_rule, oracle_headroom
from loopformer.analyze.hops import hops_part
from loopformer.analyze.probes import LAMBDAS, YangProbe, ridge_probes, yang_probes
from loopformer.cli import option
from loopformer.config import Settings, check_device
from loopformer.data import generator
from loopformer.errors import ConfigError, typed
from loopformer.evaluate import load_settings
from loopformer.models import STOP_RULES, InContextModel
from loopformer.readout import IGNORE
from loopformer.results.plots import plot_analysis
from loopformer.scoring import checkpoint_path, load_model
from loopformer.stats import bootstrap_band

log = logging.getLogger(__name__)

PARTS = ("dynamics", "match", "probe", "exit", "hops")
PROBES = ("linear", "yang")
LINEAR_TASKS = ("linear_regression", "noisy_linear_regression", "sparse_linear_regression")
GD_STEPS = (0.1, 0.5, 1.0)  # gradient-descent step sizes, in units of 1/L
GD_LAST = 5000  # the largest gradient-descent iteration count matched
NEWTON_ITERS = 40
RIDGE = (0.1, 1.0)  # ridge penalties (on ||X w - y||^2 + lam ||w||^2)
THRESHOLDS = {"state": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3],
              "prediction": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0]}
CONVERGED = 1e-3  # the relative state change below which the loop counts as converged
PROBE_TRAIN = 0.75  # share of the probe prompts its ridge fits see; the rest test it
JACOBIAN_PROMPTS = 16  # prompts whose Jacobian top singular value is estimated


@dataclass
class Options:
    """``python -m loopformer.analyze``'s options."""

    run: Path | None = option(None, "the run directory")
    study: Path | None = option(None, "or: a study directory (every finished run of it, then "
                                      "the figures per variant)")
    parts: Any = option(None, f"a list of {', '.join(PARTS)} (null: every part defined for "
                              f"the run)")
    n_prompts: int = option(1280, "fresh prompts at the run's final curriculum shape")
    max_loops: int | None = option(None, "units of depth followed (null: 20 x the trained "
                                         "depth)")
    seed: int = option(0, "the prompts' seed")
    device: str | None = option(None, "cpu | cuda (null: the GPU if there is one)")
    ckpt: str = option("last", "the checkpoint: last | step=N | a path")
    class_tol: float = option(1e-4, "a prompt is at a fixed point where its relative state "
                                    f"change stays below this for {CLASS_WINDOW} loops; in a "
                                    f"cycle of period p <= {MAX_PERIOD} where its distance to "
                                    f"the state p loops back does")
    probe: str = option("linear", "linear (ridge on the x token of position k) | yang "
                                  "(Yang et al.: weighting over positions + MLP)")
    probe_epochs: int = option(YangProbe.epochs, "probe=yang: full-batch Adam steps per probe "
                                                 "(Yang et al.: 10,000)")
    settle_tol: float | None = option(None, "the trajectory stops computing a prompt whose "
                                            "relative state change stayed below this "
                                            "(null: every prompt, every loop)")
    max_hops: int | None = option(None, "part hops: the j-hop answers matched, j = 1..max_hops "
                                        "(null: 4 x the trained hops)")

    def __post_init__(self):
        if (self.run is None) == (self.study is None):
            raise ConfigError("give either run=RUN_DIR or study=STUDY_DIR" + (
                ", not both" if self.run is not None else ""))
        if self.parts is not None:
            parts = [self.parts] if isinstance(self.parts, str) else self.parts
            if not isinstance(parts, list) or not parts or any(p not in PARTS for p in parts):
                raise ConfigError(f"parts={self.parts} must be a non-empty list of "
                                  f"{', '.join(PARTS)}")
            self.parts = tuple(p for p in PARTS if p in parts)
        if self.n_prompts < 16:
            raise ConfigError(f"n_prompts={self.n_prompts} must be >= 16 (calibration, "
                              f"held-out and probe splits)")
        for key in ("class_tol", "settle_tol"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"{key}={value} must be in (0, 1): a relative state change")
        if self.probe not in PROBES:
            raise ConfigError(f"probe={self.probe} must be one of {', '.join(PROBES)}")
        if self.probe_epochs < 1:
            raise ConfigError(f"probe_epochs={self.probe_epochs} must be >= 1")
        if self.max_loops is not None and self.max_loops < 1:
            raise ConfigError(f"max_loops={self.max_loops} must be >= 1")
        if self.max_hops is not None and self.max_hops < 1:
            raise ConfigError(f"max_hops={self.max_hops} must be >= 1")
        if self.device is not None:
            self.device = check_device("device", self.device)
        if self.run is not None and not self.run.is_dir():
            raise ConfigError(f"run={self.run} is not a directory")


def parse_options(args: dict) -> Options:
    """``{option: value}`` -> :class:`Options`; a bad one is a one-line ConfigError."""
    return typed(Options, args)


def trained_depth(spec: Settings) -> int:
    """Units of depth the model was trained with: b loops, or n_layer applications/layers."""
    return spec.curriculum.final.n_loops if spec.looped else spec.model.n_layer


def defined_parts(spec: Settings) -> dict[str, str | None]:
    """Per part, None where it is defined for the run, else why it is not."""
    why = dict.fromkeys(PARTS)
    if spec.model.family == "transformer":
        reason = ("its layers are distinct maps with no trained read-out before the last, so "
                  "there is no loop map to follow or to stop early")
        why["dynamics"] = why["exit"] = reason
    if not spec.function.has_hops:
        why["hops"] = (f"the j-hop answers are defined for a task with a hop count (p_hop), not "
                       f"task {spec.function.name}")
    if spec.function.n_classes:
        reason = (f"it reads regression predictions (least squares, gradient descent, Newton, "
                  f"the regression probes, stopping rules scored by squared error); task "
                  f"{spec.function.name} is a classification task")
        why["match"] = why["probe"] = why["exit"] = reason
        return why
    if spec.function.name not in LINEAR_TASKS:
        reason = (f"defined for the linear-regression tasks ({', '.join(LINEAR_TASKS)}), "
                  f"not task {spec.function.name}")
        why["match"] = why["probe"] = reason
    return why


def check_parts(opts: Options, spec: Settings) -> tuple[str, ...]:
    why = defined_parts(spec)
    if opts.parts is None:
        if all(why.values()):
            raise ConfigError(f"run={opts.run}: no part of the analysis is defined for it: "
                              f"{why[PARTS[0]]}")
        return tuple(p for p in PARTS if why[p] is None)
    for p in opts.parts:
        if why[p] is not None:
            raise ConfigError(f"parts={p} is not defined for this run: {why[p]}")
    return opts.parts


def _band(errors: torch.Tensor, spec: Settings, seed: int) -> dict:
    return bootstrap_band(errors, n_resamples=spec.eval.n_resamples, seed=seed).to_dict()


def _positions(n: int, d: int) -> dict[str, dict]:
    """The positions the dynamics report: the last one, and k = d and k = 2d examples,
    clipped to the prompt."""
    out = {"last": {"k": n - 1, "clipped": False}}
    for name, k in (("k=d", d), ("k=2d", 2 * d)):
        out[name] = {"k": min(k, n - 1), "clipped": k > n - 1}
    return out


def analysed_loops(b: int, last: int) -> list[int]:
    """The loops the per-prompt classes are read at: b, 5b, 20b and the last."""
    return sorted({t for t in (b, 5 * b, 20 * b) if t <= last} | {last})


def _mean_of(values: torch.Tensor) -> dict:
    return {"n": values.numel(), "mean": float(values.mean()) if values.numel() else None}


def _sigma(traj, tol: float) -> dict:
    """Per Jacobian loop: sigma over the prompts, and apart at fixed points and elsewhere."""
    out = {}
    for t, s in sorted(traj.sigma.items()):
        fixed = periods(traj.returns[:, :len(s)], t, tol) == 1  # (P_jac,)
        out[str(t)] = {"mean": float(s.mean()), "median": float(s.median()),
                       "max": float(s.max()), "iterations": traj.sigma_iters[t],
                       "at_fixed_points": _mean_of(s[fixed]), "elsewhere": _mean_of(s[~fixed])}
    return out


def state_change_spread(change: torch.Tensor) -> dict:
    """Per loop, over prompts, of ``change`` (L, P): mean, median, 90th percentile, max."""
    q = change.nanquantile(torch.tensor([0.5, 0.9], dtype=change.dtype), dim=1)  # (2, L)
    return {"mean": change.nanmean(dim=1).tolist(), "median": q[0].tolist(),
            "p90": q[1].tolist(), "max": change.nan_to_num(0).amax(dim=1).tolist()}


def dynamics_part(traj, err, spec, opts, jac) -> dict:
    n, d = spec.curriculum.final.n_points, spec.curriculum.final.n_dims
    curves = {}
    for name, pos in _positions(n, d).items():
        curves[name] = {**pos, **_band(err[:, :, pos["k"]].T, spec, opts.seed)}
    return {"error": curves, **loop_dynamics(traj, spec, opts, jac)}


def token_dynamics_part(traj, ys, spec, opts, jac) -> dict:
    """A classification task's dynamics: accuracy per loop at the last position (band over
    prompts) and over every asked position, the loop at which each prompt's answers stop
    changing, and the state's dynamics as for regression (:func:`loop_dynamics`)."""
    ys = ys.cpu()
    right = traj.preds == ys  # (L, P, n): answers are class ids
    ask = ys != IGNORE
    n = ys.shape[1]
    per_loop = ((right & ask).sum((1, 2)) / ask.sum().clamp_min(1)).tolist()
    changed = (traj.preds[1:] != traj.preds[:-1]).any(dim=2)  # (L-1, P)
    L = traj.preds.shape[0]
    steps = torch.arange(2, L + 1).unsqueeze(1).expand_as(changed)
    last_change = torch.where(changed, steps, 1).amax(dim=0).double()  # (P,) 1: never
    settled = last_change < L  # unchanged over at least the last loop
    q = last_change[settled].quantile(torch.tensor([0.5, 0.9], dtype=torch.float64)) \
        if settled.any() else None
    return {"accuracy": {"last": {"k": n - 1, **_band(right[:, :, -1].T.double(), spec,
                                                       opts.seed)},
                         "all_asked": per_loop},
            "answers_settle": {
                "rule": "per prompt, the last loop at which any of its answers (arg-max "
                        "classes, every position) changed; 1: never changed",
                "share_still_changing_at_last_loop": float((~settled).double().mean()),
                "median": None if q is None else float(q[0]),
                "p90": None if q is None else float(q[1])},
            **loop_dynamics(traj, spec, opts, jac)}


def loop_dynamics(traj, spec, opts, jac) -> dict:
    """The state's dynamics, which any read-out shares: relative state change per loop
    (spread over prompts), the loop it falls below ``CONVERGED``, the per-prompt classes
    (fixed point, cycle, moving) and the Jacobian's top singular value."""
    spread = state_change_spread(traj.changes["state"][1:])  # loops 2..L
    below = first_below(spread["mean"], CONVERGED)
    if below["loop"] != "never":
        below["loop"] += 1  # the curve starts at loop 2
    L = traj.returns.shape[0]
    classes = {str(t): class_shares(periods(traj.returns, t, opts.class_tol))
               for t in analysed_loops(trained_depth(spec), L)}
    return {"state_change": {"loops": list(range(2, L + 1)), **spread,
                             "space": "after the final LayerNorm (what the read-out sees)"},
            "converged_below": {"level": CONVERGED, **below},
            "classes": {"tol": opts.class_tol, "window": CLASS_WINDOW,
                        "max_period": MAX_PERIOD, "settle_tol": opts.settle_tol,
                        "rule": f"per prompt at loop t: fixed point where ||z_s - z_(s-1)|| / "
                                f"||z_s|| < tol for the {CLASS_WINDOW} loops s ending at t; "
                                f"else a cycle of the smallest period p <= {MAX_PERIOD} where "
                                f"||z_s - z_(s-p)|| / ||z_s|| < tol over them; else moving",
                        "at": classes},
            "jacobian": {"at": "the state after loop t (the map to loop t+1)",
                         "prompts": jac["prompts"], **jac["power"],
                         "sigma": _sigma(traj, opts.class_tol)}}


def match_part(model_preds: torch.Tensor, xs, ys) -> dict:
    """``model_preds`` (L, P, n): cosine match of residuals over positions 1..n-1."""
    pre = alg.prefixes(xs.cpu(), ys.cpu())
    y = pre.ys[:, 1:]
    model_res = model_preds[:, :, 1:].double() - y  # (L, P, n-1)
    iters = alg.log_grid(GD_LAST)
    out = {"positions": "1..n-1 (position 0 has no examples: every algorithm predicts 0)",
           "algorithms": {}, "closed_forms": {}}
    runs = {f"gd_step={c:g}/L": (alg.gradient_descent(pre, c, iters), iters) for c in GD_STEPS}
    newton_iters = list(range(1, NEWTON_ITERS + 1))
    runs["newton"] = (alg.newton(pre, NEWTON_ITERS), newton_iters)
    for name, (preds, its) in runs.items():
        sim = alg.cosine_match(model_res, preds[:, :, 1:] - y)  # (L, K)
        k_best, s_best = alg.best_match(sim, its)
        out["algorithms"][name] = {"iterations": its, "k_star": k_best, "similarity": s_best,
                                   "heatmap": [[round(v, 4) for v in row]
                                               for row in sim.tolist()]}
    closed = {"least_squares": alg.least_squares(pre),
              **{f"ridge_{r:g}": alg.ridge(pre, r) for r in RIDGE}}
    for name, preds in closed.items():
        sim = alg.cosine_match(model_res, (preds[:, 1:] - y).unsqueeze(0))[:, 0]
        out["closed_forms"][name] = [round(v, 4) for v in sim.tolist()]
    return out


def exit_part(err_last: torch.Tensor, traj, b: int, seed: int) -> dict:
    """``err_last`` (L, P): per-prompt error at the last position per loop."""
    P = err_last.shape[1]
    g = torch.Generator().manual_seed(seed)
    calibration = torch.zeros(P, dtype=torch.bool)
    calibration[torch.randperm(P, generator=g)[: P // 2]] = True
    held = ~calibration
    rules = {name: evaluate_rule(err_last, traj.changes[name], THRESHOLDS[name], calibration,
                                 min(b, err_last.shape[0]))
             for name in STOP_RULES}
    return {"error": "normalised squared error at the last position",
            "split": {"calibration": int(calibration.sum()), "held_out": int(held.sum())},
            "fixed_depth_held_out": err_last[:, held].mean(dim=1).tolist(),
            "oracle_held_out": oracle_headroom(err_last, calibration),
            "default_tol": {name: r.default_tol for name, r in STOP_RULES.items()},
            "rules": rules}


def _probe_targets(x, y, d: int) -> dict[str, torch.Tensor]:
    """Per position k ``(P, n, d)``: the min-norm least-squares weights of the k examples
    before it, and their ``X_k^T y_k``."""
    pre = alg.prefixes(x.cpu(), y.cpu())
    keep = alg._rank_mask(pre.eigvals)
    inv = torch.where(keep, 1 / pre.eigvals.clamp_min(1e-300), 0.0)
    coef = torch.einsum("pnij,pni->pnj", pre.eigvecs, pre.xty)
    w_ls = torch.einsum("pnij,pnj->pni", pre.eigvecs, inv * coef)  # (P, n, d)
    return {"least_squares_w": w_ls[..., :d], "xty": pre.xty[..., :d]}


def _control_ys(xs, d: int) -> torch.Tensor:
    """``(P, n)``: the fixed function w = 1 on the active dims, at the prompts' x."""
    ones = torch.zeros(xs.shape[-1], device=xs.device)
    ones[:d] = 1
    return xs @ ones


PROBE_CONTROL = ("probes fitted on prompts of the fixed function w = 1, tested on the held-out "
                 "prompts")


@torch.no_grad()
def probe_part(model: InContextModel, spec: Settings, xs, ys, depth: int, batch: int) -> dict:
    """Ridge probes per unit of depth ``1..depth`` on the state at the x token of position k
    (which has seen k examples), for the min-norm least-squares weights (k <= d) and
    ``X_k^T y_k / k``; the control fits the probes on prompts of the fixed function w = 1
    and tests them on the same held-out prompts."""
    P, n = ys.shape
    d = spec.curriculum.final.n_dims
    n_train = int(PROBE_TRAIN * P)
    ks = {"least_squares_w": list(range(1, min(d, n - 1) + 1)),
          "xty_over_k": list(range(1, n))}
    ys_control = _control_ys(xs, d)

    def targets(x, y):
        t = _probe_targets(x, y, d)
        counts = torch.arange(n).clamp_min(1).view(1, -1, 1)
        return {"least_squares_w": t["least_squares_w"], "xty_over_k": t["xty"] / counts}

    def states(y):
        """Features per unit: (depth, P, n, C) at the x tokens, one unit at a time."""
        per_unit = [[] for _ in range(depth)]
        for i in range(0, P, batch):
            for t, z, _ in model.iterate(xs[i:i + batch], y[i:i + batch], depth):
                per_unit[t - 1].append(z[:, ::2].float().cpu())  # x tokens, (b, n, C)
        return [torch.cat(u) for u in per_unit]

    tgt, tgt_ctl = targets(xs, ys), targets(xs, ys_control)
    real, control = states(ys), states(ys_control)
    out = {"kind": "linear", "split": {"train": n_train, "test": P - n_train},
           "budget": f"closed-form ridge, one probe per {spec.model.family} unit and k; "
                     f"penalty from {list(LAMBDAS)} x the mean feature variance, chosen on "
                     f"the last 20% of the training prompts",
           "feature": "state after the final LayerNorm at the x token of position k",
           "control": PROBE_CONTROL, "targets": {}}
    for name, k_list in ks.items():
        k_idx = torch.tensor(k_list)
        rows = {"mse": [], "relative": [], "control_mse": [], "control_relative": [],
                "chance_mse": []}
        for t in range(depth):
            feats = real[t][:, k_idx].transpose(0, 1)  # (G, P, C), one probe per k
            y_t = tgt[name][:, k_idx].transpose(0, 1)  # (G, P, d)
            fit = ridge_probes(feats[:, :n_train], y_t[:, :n_train], feats[:, n_train:],
                               y_t[:, n_train:])
            ctl_feats = control[t][:, k_idx].transpose(0, 1)
            ctl_y = tgt_ctl[name][:, k_idx].transpose(0, 1)
            ctl = ridge_probes(ctl_feats[:, :n_train], ctl_y[:, :n_train],
                               feats[:, n_train:], y_t[:, n_train:])
            _append(rows, fit, ctl)
        out["targets"][name] = {"k": k_list, **rows}
    return out


def _append(rows: dict[str, list], fit: dict, ctl: dict) -> None:
    """One unit's probe figures, each the mean over its probes (targets k)."""
    rows["mse"].append(float(fit["mse"].mean()))
    rows["relative"].append(float(fit["relative"].mean()))
    rows["chance_mse"].append(float(fit["chance_mse"].mean()))
    rows["control_mse"].append(float(ctl["mse"].mean()))
    rows["control_relative"].append(float(ctl["relative"].mean()))


@torch.no_grad()
def yang_probe_part(model: InContextModel, spec: Settings, xs, ys, depth: int, batch: int,
                    cfg: YangProbe) -> dict:
    """Yang et al.'s probes (:class:`YangProbe`) per unit ``0..depth`` (0: the read-in
    embedding, the loop's input at z = 0) on the state at every token, for their targets: the
    least-squares weights of the first k = 1..d examples (``w_OLS``, min-norm below d) and
    ``X_k^T y_k / n`` for k = 1..n-1 (their ``grad``, divided by the prompt length n). The
    figure per unit is the mean over its targets of the held-out squared error per
    coordinate, as their curve; the control trains on prompts of w = 1."""
    P, n = ys.shape
    d = spec.curriculum.final.n_dims
    n_train = int(PROBE_TRAIN * P)
    ks = {"least_squares_w": list(range(1, min(d, n - 1) + 1)), "xty_over_n": list(range(1, n))}

    def targets(y):
        t = _probe_targets(xs, y, d)
        return {"least_squares_w": t["least_squares_w"], "xty_over_n": t["xty"] / n}

    def states(y):
        """(depth + 1, P, 2n, C): every token's state per unit."""
        out = torch.empty(depth + 1, P, 2 * n, model.cfg.n_embd)
        for i in range(0, P, batch):
            x_b, y_b = xs[i:i + batch], y[i:i + batch]
            out[0, i:i + len(x_b)] = model.embed(x_b, y_b).float().cpu()
            for t, z, _ in model.iterate(x_b, y_b, depth):
                out[t, i:i + len(x_b)] = z.float().cpu()
        return out

    y_ctl = _control_ys(xs, d)
    tgt, tgt_ctl = targets(ys), targets(y_ctl)
    real, control = states(ys), states(y_ctl)
    out = {"kind": "yang", "split": {"train": n_train, "test": P - n_train},
           "units": list(range(depth + 1)), "budget": cfg.to_dict(),
           "feature": "state after the final LayerNorm at every token (unit 0: the read-in "
                      "embedding), pooled by a learned softmax weighting over positions",
           "control": PROBE_CONTROL, "targets": {}}
    for name, k_list in ks.items():
        k_idx = torch.tensor(k_list)
        y_t = tgt[name][:, k_idx].transpose(0, 1)  # (K, P, d)
        ctl_y = tgt_ctl[name][:, k_idx].transpose(0, 1)
        rows = {"mse": [], "relative": [], "control_mse": [], "control_relative": [],
                "chance_mse": []}
        for u in range(depth + 1):  # one unit at a time bounds the pooled states' memory
            test = (real[u:u + 1, n_train:], y_t[:, n_train:])
            fit = yang_probes(real[u:u + 1, :n_train], y_t[:, :n_train], *test, cfg)
            ctl = yang_probes(control[u:u + 1, :n_train], ctl_y[:, :n_train], *test, cfg)
            _append(rows, fit, ctl)
        out["targets"][name] = {"k": k_list, **rows}
    return out


def analyze_tokens(model: InContextModel, spec: Settings, opts: Options,
                   parts: tuple[str, ...], device) -> dict:
    """A classification task's analysis: the parts ``dynamics`` and ``hops``; the others
    read regression predictions and say so under ``not_defined``."""
    shape = spec.curriculum.final
    b = trained_depth(spec)
    looping = spec.model.family != "transformer"
    max_loops = (opts.max_loops or 20 * b) if looping else b
    # the fixed test set's prompts: for held-out tables (task=openml) their rows, the tables
    # the model is scored on, not the training ones with their classes renamed
    xs, ys = spec.function.sample_test(opts.n_prompts, shape,
                                       generator(torch.device(device), opts.seed, 0))
    unit = {"looped": "loop", "tied": "application", "transformer": "layer"}[spec.model.family]
    result = {"run_dir": str(opts.run), "checkpoint": opts.ckpt, "family": spec.model.family,
              "task": spec.function.name, "metric": "accuracy", "unit": unit,
              "trained_depth": b, "n_points": shape.n_points, "n_hops": shape.n_hops,
              "n_prompts": opts.n_prompts, "prompts": spec.function.test_prompts(),
              "seed": opts.seed, "parts": list(parts),
              "not_defined": {p: w for p, w in defined_parts(spec).items() if w},
              "max_loops": max_loops, "seconds": {}}
    start = time.perf_counter()
    jac_loops = tuple(sorted({t for t in (1, b, 5 * b, max_loops) if t <= max_loops}))
    power = PowerIteration(seed=opts.seed)
    dyn = "dynamics" in parts
    traj = trajectory(model, xs, ys, max_loops, spec.eval.batch_size, jac_loops if dyn else (),
                      JACOBIAN_PROMPTS, power, opts.settle_tol)  # preds: class ids
    result["kept"] = (f"per {unit} and prompt: the answers (arg-max classes) and each stopping "
                      f"rule's change; hidden states are dropped once the next one is computed")
    result["seconds"]["trajectory"] = time.perf_counter() - start
    if dyn:
        jac = {"prompts": JACOBIAN_PROMPTS, "power": power.to_dict()}
        result["dynamics"] = token_dynamics_part(traj, ys, spec, opts, jac)
    if "hops" in parts:
        start = time.perf_counter()
        hops = spec.function.hops
        result["hops"] = hops_part(traj.preds.long(), xs, opts.max_hops or 4 * hops,
                                   spec.function.vocab, hops)
        result["seconds"]["hops"] = time.perf_counter() - start
    return result


def analyze(model: InContextModel, spec: Settings, opts: Options, parts: tuple[str, ...],
            device) -> dict:
    model = model.to(device).eval()
    if spec.function.n_classes:
        return analyze_tokens(model, spec, opts, parts, device)
    shape = spec.curriculum.final
    b = trained_depth(spec)
    max_loops = opts.max_loops or 20 * b
    xs, ys = spec.function.sample(opts.n_prompts, shape.n_points, shape.n_dims,
                              generator(torch.device(device), opts.seed, 0))
    norm = spec.function.normalizer(shape.n_dims)
    batch = spec.eval.batch_size
    unit = {"looped": "loop", "tied": "application", "transformer": "layer"}[spec.model.family]
    result = {"run_dir": str(opts.run), "checkpoint": opts.ckpt, "family": spec.model.family,
              "task": spec.function.name, "unit": unit, "trained_depth": b,
              "n_dims": shape.n_dims, "n_points": shape.n_points, "n_prompts": opts.n_prompts,
              "seed": opts.seed, "normalizer": norm, "parts": list(parts),
              "not_defined": {p: w for p, w in defined_parts(spec).items() if w},
              "seconds": {}}
    looping = spec.model.family != "transformer"
    traj = err = None
    if looping and {"dynamics", "match", "exit"} & set(parts):
        start = time.perf_counter()
        jac_loops = tuple(sorted({t for t in (1, b, 5 * b, max_loops) if t <= max_loops}))
        power = PowerIteration(seed=opts.seed)
        traj = trajectory(model, xs, ys, max_loops, batch,
                          jac_loops if "dynamics" in parts else (), JACOBIAN_PROMPTS, power,
                          opts.settle_tol)
        err = (traj.preds - ys.cpu()).square() / norm  # (L, P, n)
        result["max_loops"] = max_loops
        result["kept"] = (f"per {unit} and prompt: the predictions and each stopping rule's "
                          f"change; hidden states are dropped once the next one is computed")
        result["seconds"]["trajectory"] = time.perf_counter() - start
        if "dynamics" in parts:
            jac = {"prompts": JACOBIAN_PROMPTS, "power": power.to_dict()}
            result["dynamics"] = dynamics_part(traj, err, spec, opts, jac)
    if "match" in parts:
        start = time.perf_counter()
        preds = traj.preds if traj is not None else model.predict(xs, ys).cpu().unsqueeze(0)
        result["match"] = match_part(preds, xs, ys)
        result["seconds"]["match"] = time.perf_counter() - start
    if "exit" in parts:
        start = time.perf_counter()
        result["exit"] = exit_part(err[:, :, -1], traj, b, opts.seed)
        result["seconds"]["exit"] = time.perf_counter() - start
    if "probe" in parts:
        start = time.perf_counter()
        result["probe"] = (
            yang_probe_part(model, spec, xs, ys, b, batch,
                            YangProbe(epochs=opts.probe_epochs, seed=opts.seed))
            if opts.probe == "yang" else probe_part(model, spec, xs, ys, b, batch))
        result["seconds"]["probe"] = time.perf_counter() - start
    return result


def summary(r: dict) -> str:
    lines = [f"{r['run_dir']}: {r['family']} on {r['task']}, {r['n_prompts']} prompts"
             + (f" ({r['prompts']})" if r.get("prompts") else "")
             + f", trained depth {r['trained_depth']} {r['unit']}s"]
    if "dynamics" in r and "accuracy" in r["dynamics"]:
        dyn = r["dynamics"]
        acc, b = dyn["accuracy"]["last"]["mean"], r["trained_depth"]
        settle = dyn["answers_settle"]
        lines.append(f"dynamics: accuracy at the last position {acc[min(b, len(acc)) - 1]:.3f} "
                     f"at {min(b, len(acc))}, {acc[-1]:.3f} at {len(acc)}; answers still "
                     f"changing at the last {r['unit']}: "
                     f"{settle['share_still_changing_at_last_loop']:.1%}")
        lines += _class_lines(dyn)
    elif "dynamics" in r:
        dyn = r["dynamics"]
        last = dyn["error"]["last"]["mean"]
        b = min(r["trained_depth"], len(last))
        sig = ", ".join(f"t={t}: {s['mean']:.3f}" for t, s in dyn["jacobian"]["sigma"].items())
        loop = dyn["converged_below"]["loop"]
        below = "never" if loop == "never" else f"from loop {loop}"
        lines.append(f"dynamics: error at the last position {last[b - 1]:.4f} at {b}, "
                     f"{last[-1]:.4f} at {len(last)}; mean state change < {CONVERGED:g}: "
                     f"{below}; Jacobian sigma {sig}")
        lines += _class_lines(dyn)
    if "match" in r:
        for name, a in r["match"]["algorithms"].items():
            ks = a["k_star"]
            lines.append(f"match {name}: k*(t) = {ks[:8]}{' ...' if len(ks) > 8 else ''}, "
                         f"similarity {a['similarity'][min(len(ks), r['trained_depth']) - 1]:.3f}"
                         f" at the trained depth")
    if "exit" in r:
        ex = r["exit"]
        o = ex["oracle_held_out"]
        lines.append(f"exit: best fixed depth (chosen on calibration) {o['best_fixed_loop']} "
                     f"({o['best_fixed_error']:.4f} held out),"
                     f" oracle {o['oracle_error']:.4f}, headroom {o['headroom']:.4f}")
        for name, rule in ex["rules"].items():
            c = rule["chosen"]
            lines.append(f"exit {name}: " + ("no threshold matched the trained depth on the "
                                             "calibration split" if c is None else
                                             f"tol={rule['chosen_tol']:g}: error {c['error']:.4f}"
                                             f" in {c['mean_loops']:.1f} loops (held out): "
                                             f"{rule['verdict']}"))
    if "hops" in r:
        h = r["hops"]
        js = h["j_star"]
        forms = "; ".join(f"{k}: offset {f['offset']}, {f['share']:.0%} of {f['loops']} "
                          f"{r['unit']}s" for k, f in h["forms"].items())
        lines.append(f"hops: best-matching j per {r['unit']} j*(t) = {js[:12]}"
                     f"{' ...' if len(js) > 12 else ''}; reading: {h['reading']} ({forms})")
    for part, why in r.get("not_defined", {}).items():
        if r.get("metric") == "accuracy":
            lines.append(f"{part}: not defined: {why}")
    if "probe" in r:
        for name, t in r["probe"]["targets"].items():
            rel = t["relative"]
            lines.append(f"probe {name}: relative error {rel[0]:.3f} -> {rel[-1]:.3f} "
                         f"(control {t['control_relative'][-1]:.3f})")
    return "\n".join(lines)


def _class_lines(dyn: dict) -> list[str]:
    """The printed per-prompt classes and state-change spread at the analysed loops."""
    c, sc = dyn["classes"], dyn["state_change"]
    lines = [f"dynamics per prompt (tol {c['tol']:g} over {c['window']} loops, periods <= "
             f"{c['max_period']}):"]
    for t, sh in c["at"].items():
        i = int(t) - 2  # the state-change curves start at loop 2
        spread = ("" if i < 0 else f"; state change median {sc['median'][i]:.2e}, 90% "
                  f"{sc['p90'][i]:.2e}, max {sc['max'][i]:.2e}")
        periods_ = ", ".join(f"p={p}: {v:.1%}" for p, v in sh["cycle_periods"].items())
        lines.append(f"  loop {t}: fixed point {sh['fixed']:.1%}, cycle {sh['cycle']:.1%}"
                     + (f" ({periods_})" if periods_ else "") + f", moving {sh['moving']:.1%}"
                     + spread)
    fix = {t: s["at_fixed_points"] for t, s in dyn["jacobian"]["sigma"].items()}
    lines.append("  Jacobian sigma at fixed points / elsewhere: " + "; ".join(
        f"t={t}: {_fmt(f['mean'])} (n={f['n']}) / "
        f"{_fmt(dyn['jacobian']['sigma'][t]['elsewhere']['mean'])}" for t, f in fix.items()))
    return lines


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def analyze_run(opts: Options) -> dict:
    """Validate, load, analyse, write ``RUN_DIR/analysis/analysis.json`` and plots."""
    spec = load_settings(opts.run)
    parts = check_parts(opts, spec)
    ckpt = checkpoint_path(opts.run, opts.ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={opts.ckpt}: no checkpoint at {ckpt}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(opts.run, spec, opts.ckpt)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = analyze(model, spec, opts, parts, device)
    result["seconds"]["total"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu_start  # all threads of this process
    result["torch"] = torch.__version__
    out = opts.run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    plot_analysis(result, out)
    log.info("%s\nwrote %s", summary(result), out)
    return result
