"""A run's figures, in the style of Garg et al. (2022) and Yang et al. (2024); files only:
matplotlib draws with Agg, set here once for every figure of :mod:`loopformer.results`.

Curves are dicts ``{"mean": [...], "low": [...], "high": [...]}`` (``Curve.to_dict()``),
indexed by the number of in-context examples unless an ``"x"`` list is given; a ``"kind"``
of ``"model"`` or ``"baseline"`` says how to draw them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never open a display, also on headless cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger(__name__)

CurveDict = Mapping[str, Sequence[float]]
_MODEL_COLORS = plt.get_cmap("tab10").colors
_BASELINE_COLORS = plt.get_cmap("Dark2").colors
_BASELINE_STYLES = ("--", "-.", ":", (0, (5, 1, 1, 1)))


def as_dict(curve: Any) -> CurveDict:
    return curve.to_dict() if hasattr(curve, "to_dict") else curve


def xs_of(curve: CurveDict) -> np.ndarray:
    n = len(curve["mean"])
    return np.asarray(curve["x"], dtype=float) if "x" in curve else np.arange(n, dtype=float)


def _positive(values: Sequence[float], floor: float) -> np.ndarray:
    """Clip to ``floor`` so that exact zeros (e.g. least squares past d) stay on a log axis."""
    return np.maximum(np.asarray(values, dtype=float), floor)


def save(fig: plt.Figure, path: Path, dpi: int, bbox: str | None = "tight") -> Path:
    """Write ``fig`` to ``path`` and free it."""
    fig.savefig(path, dpi=dpi, bbox_inches=bbox)
    plt.close(fig)
    return path


def finish(fig: plt.Figure, ax: plt.Axes, path: str | Path, legend: bool = True) -> Path:
    if legend:
        # outside on the right: many baselines would otherwise cover the curves
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path, dpi=150)
    log.info("wrote %s", path)
    return path


def draw_band(ax: plt.Axes, x: np.ndarray, curve: CurveDict, floor: float, label: str,
          color: Any, **line_kw: Any) -> None:
    ax.plot(x, _positive(curve["mean"], floor), color=color, label=label, **line_kw)
    if "low" in curve and "high" in curve:
        ax.fill_between(x, _positive(curve["low"], floor), _positive(curve["high"], floor),
                        color=color, alpha=0.2, linewidth=0)


def plot_error_vs_examples(curves: Mapping[str, Any], path: str | Path,
                           title: str = "", model_keys: Sequence[str] | None = None,
                           n_dims: int | None = None, ylabel: str = "squared error (normalised)",
                           floor: float = 1e-3) -> Path:
    """Error vs number of in-context examples: models with bootstrap bands, baselines as
    lines, the zero predictor as a dashed line at 1, log-scale y.

    ``model_keys`` picks the curves drawn as models; by default every curve whose ``kind``
    (as ``results.json`` gives it) is not ``"baseline"``. ``n_dims`` adds a dotted vertical
    line at ``k = d``. Values below ``floor`` are drawn at ``floor``.
    """
    if model_keys is None:
        model_keys = [k for k, c in curves.items() if as_dict(c).get("kind") != "baseline"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, key in enumerate(model_keys):  # first, so that models lead the legend
        c = as_dict(curves[key])
        draw_band(ax, xs_of(c), c, floor, key, _MODEL_COLORS[i % 10], linewidth=2.2, zorder=3)
    for i, key in enumerate(k for k in curves if k not in model_keys):
        c = as_dict(curves[key])
        ax.plot(xs_of(c), _positive(c["mean"], floor), color=_BASELINE_COLORS[i % 8],
                linestyle=_BASELINE_STYLES[i % len(_BASELINE_STYLES)], linewidth=1.4, label=key)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="zero predictor")
    if n_dims is not None:
        ax.axvline(n_dims, color="0.6", linestyle=":", linewidth=1, label=f"k = d = {n_dims}")
    ax.set_yscale("log")
    ax.set_xlabel("number of in-context examples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return finish(fig, ax, path)


def _loop_arrays(loop_curve: Mapping[str, Any]) -> tuple[np.ndarray, CurveDict]:
    """Accept ``{"loops": [...], "mean": [...], ...}`` or ``{loops: {"mean": m, ...} | m}``."""
    if "loops" in loop_curve:
        return np.asarray(loop_curve["loops"], dtype=float), loop_curve
    items = sorted(((int(k), v) for k, v in loop_curve.items()), key=lambda kv: kv[0])
    loops = np.array([k for k, _ in items], dtype=float)
    if all(isinstance(v, Mapping) for _, v in items):
        curve = {key: [float(v[key]) for _, v in items] for key in ("mean", "low", "high")
                 if all(key in v for _, v in items)}
    else:
        curve = {"mean": [float(v) for _, v in items]}
    return loops, curve


def plot_error_vs_loops(loop_curve: Mapping[str, Any], trained_loops: int, path: str | Path,
                        title: str = "", ylabel: str = "error at the last position",
                        floor: float = 1e-4) -> Path:
    """Error at the last in-context position vs the number of loop iterations at test time,
    with a vertical marker at the loop count used in training (Yang et al., Fig. 3 style).

    ``loop_curve`` is ``{"loops": [...], "mean": [...], "low": [...], "high": [...]}`` or a
    mapping from loop count to ``{"mean", "low", "high"}`` (or to a number).
    """
    loops, curve = _loop_arrays(loop_curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_band(ax, loops, curve, floor, "looped transformer", _MODEL_COLORS[0], linewidth=2.2,
          marker="o", markersize=3)
    ax.axvline(trained_loops, color="C3", linestyle="--", linewidth=1.2,
               label=f"trained loops b = {trained_loops}")
    ax.set_yscale("log")
    ax.set_xlabel("loop iterations at test time")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_accuracy_vs_position(curves: Mapping[str, Any], path: str | Path, chance: float,
                              title: str = "", xlabel: str = "position") -> Path:
    """A classification task's accuracy per position (token, or number of in-context
    examples): models with bootstrap bands, baselines (``kind: baseline``) as lines, chance
    as a dashed line; linear y in [0, 1]. Positions that ask nothing are gaps."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    models = [k for k, c in curves.items() if as_dict(c).get("kind") != "baseline"]
    for i, key in enumerate(models):
        c = as_dict(curves[key])
        draw_band(ax, xs_of(c), c, 0.0, key, _MODEL_COLORS[i % 10], linewidth=2.2, zorder=3)
    for i, key in enumerate(k for k in curves if k not in models):
        c = as_dict(curves[key])
        ax.plot(xs_of(c), c["mean"], color=_BASELINE_COLORS[i % 8],
                linestyle=_BASELINE_STYLES[i % len(_BASELINE_STYLES)], linewidth=1.4, label=key)
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label=f"chance ({chance:.2g})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_accuracy_vs_loops(loop_curve: Mapping[str, Any], trained_loops: int, chance: float,
                           path: str | Path, title: str = "") -> Path:
    """Accuracy at the last position vs the loop count at test time, the trained count
    marked, chance as a dashed line."""
    loops, curve = _loop_arrays(loop_curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_band(ax, loops, curve, 0.0, "looped transformer", _MODEL_COLORS[0], linewidth=2.2,
              marker="o", markersize=3)
    ax.axvline(trained_loops, color="C3", linestyle="--", linewidth=1.2,
               label=f"trained loops b = {trained_loops}")
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label=f"chance ({chance:.2g})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("loop iterations at test time")
    ax.set_ylabel("accuracy at the last position")
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_dial(dial: Mapping[str, Any], chance: float, path: str | Path, title: str = "") -> Path:
    """The depth dial (:mod:`loopformer.dial`): left, accuracy at the last position per dial
    value at the rule's loop count and at the fixed, trained one, with the trained value
    marked; right (looped models), the accuracy per dial value and loop count, with the two
    loop counts drawn over it."""
    looped = len(dial["loops"]) > 1
    fig, axes = plt.subplots(1, 2 if looped else 1, figsize=(12 if looped else 6.5, 4.4),
                             squeeze=False)
    ax = axes[0, 0]
    x = np.asarray(dial["values"], dtype=float)
    unit = dial["unit"]
    draw_band(ax, x, dial["at_fixed"], 0.0,
              f"fixed: {dial['fixed_loops']} {unit}s", _MODEL_COLORS[0], linewidth=2,
              marker="o", markersize=3)
    if dial["at_rule"] is not None:
        draw_band(ax, x, dial["at_rule"], 0.0, f"rule: {dial['rule']['formula']}",
                  _MODEL_COLORS[1], linewidth=2, marker="s", markersize=3)
    ax.axvline(dial["trained"], color="C3", linestyle="--", linewidth=1.2,
               label=f"trained {dial['of']} = {dial['trained']}")
    ax.axhline(chance, color="0.4", linestyle=":", linewidth=1, label=f"chance ({chance:.2g})")
    ax.set(ylim=(0, 1.02), xlabel=dial["of"], ylabel="accuracy at the last position",
           title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if looped:
        ax2 = axes[0, 1]
        grid = np.asarray(dial["accuracy_last"], dtype=float).T  # (loops, values)
        im = ax2.imshow(grid, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis",
                        extent=(x[0] - 0.5, x[-1] + 0.5, 0.5, len(dial["loops"]) + 0.5))
        fig.colorbar(im, ax=ax2, label="accuracy at the last position")
        ax2.axhline(dial["fixed_loops"], color="w", linestyle="--", linewidth=1.2,
                    label="fixed loops")
        if dial["rule_loops"] is not None:
            ax2.plot(x, dial["rule_loops"], color="C1", linewidth=2, label="rule b(p)")
        ax2.axvline(dial["trained"], color="C3", linestyle="--", linewidth=1.2)
        ax2.set(xlabel=dial["of"], ylabel=f"{unit}s at test time",
                title=f"accuracy per {dial['of']} and {unit} count")
        ax2.legend(fontsize=8, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path, dpi=130)


def plot_training_accuracy(rows: Sequence[Mapping[str, float]], chance: float,
                           path: str | Path, title: str = "") -> Path:
    """A classification run's learning curve from its ``metrics.csv`` rows: training
    accuracy (current curriculum shape) and the fixed test set's (final shape)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (key, label, kw) in enumerate((
            ("train/accuracy", "train accuracy (current shape)", {"linewidth": 1.2}),
            ("test/accuracy", "test accuracy (final shape)", {"linewidth": 2, "marker": "o",
                                                             "markersize": 4}))):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            x, y = np.array(points).T
            ax.plot(x, y, color=_MODEL_COLORS[i], label=label, **kw)
    ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label=f"chance ({chance:.2g})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_training_curve(rows: Sequence[Mapping[str, float]], normalizer, path: str | Path,
                        title: str = "", floor: float = 1e-4) -> Path:
    """A run's learning curve from its ``metrics.csv`` rows: the training loss divided by
    ``normalizer(active dims)`` (error at the curriculum's current shape), the fixed test
    set's normalised error (at the final shape), and the curriculum's active dims."""
    train = [(r["step"], r["train/loss"] / normalizer(int(r.get("curriculum/n_dims", 0)) or None))
             for r in rows if "train/loss" in r]
    test = [(r["step"], r["test/error"]) for r in rows if "test/error" in r]
    dims = [(r["step"], r["curriculum/n_dims"]) for r in rows if "curriculum/n_dims" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        x, y = np.array(train).T
        ax.plot(x, _positive(y, floor), color=_MODEL_COLORS[0], linewidth=1.2, alpha=0.9,
                label="train error, mean over positions (current shape)")
    if test:
        x, y = np.array(test).T
        ax.plot(x, _positive(y, floor), color=_MODEL_COLORS[1], linewidth=2, marker="o",
                markersize=4, label="test error (final shape)")
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="zero predictor")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("squared error (normalised)")
    ax.set_title(title)
    if dims:
        x, y = np.array(dims).T
        twin = ax.twinx()
        twin.step(x, y, where="post", color="0.6", linewidth=1, label="active dims")
        twin.set_ylabel("active dims (curriculum)", color="0.4")
        twin.set_ylim(0, max(y) * 1.1)
        ax.plot([], [], color="0.6", linewidth=1, label="active dims (right axis)")
    # below the axes: the right one carries the curriculum's scale
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False,
              fontsize=9)
    return finish(fig, ax, path, legend=False)


def plot_ood_summary(ood: Mapping[str, Any], path: str | Path, two_d: int, title: str = "",
                     floor: float = 1e-3) -> Path:
    """Error at ``k = 2d`` examples per shift (``results["ood"]``): models (each loop count)
    as markers with their bootstrap band, baselines as small grey markers. A shift scored on
    fewer positions is read at its last one, marked ``*`` in its label."""
    shifts = list(ood)
    x = np.arange(len(shifts))
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(shifts) + 2), 4.5))
    names = list(dict.fromkeys(c for s in shifts for c in ood[s]["curves"]))  # noise: + ridge
    models = [c for c in names if ood[shifts[0]]["curves"].get(c, {}).get("kind") == "model"]
    width = 0.6 / max(1, len(models))
    for i, name in enumerate(names):
        def at(field, name=name):  # the curve's field at each shift's summary position
            return _positive([ood[s]["curves"][name][field][ood[s]["summary_k"]]
                              if name in ood[s]["curves"] else np.nan for s in shifts], floor)

        mean = at("mean")
        if name in models:
            off = x + (models.index(name) - (len(models) - 1) / 2) * width
            err = np.abs(np.stack([at("low"), at("high")]) - mean)
            ax.errorbar(off, mean, yerr=err, fmt="o", color=_MODEL_COLORS[i % 10], label=name,
                        capsize=2, zorder=3)
        else:
            ax.plot(x, mean, linestyle="none", marker="_x^sv"[i % 5], color="0.55",
                    markersize=7, label=name)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="zero predictor")
    ax.set_xticks(x, [s + ("" if ood[s]["summary_k"] == two_d else "*") for s in shifts],
                  rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(f"normalised error at k = {two_d} (* last scored k)")
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_ood_of_run(results: dict, out_dir: Path) -> None:
    """``ood_<shift>.png`` (error vs examples: the model at each loop count, the baselines)
    per shift and ``ood_summary.png`` (error at the summary position per shift), in
    ``out_dir``."""
    d = results["active_dims"]
    for shift, block in results["ood"].items():
        plot_error_vs_examples(block["curves"], out_dir / f"ood_{shift}.png",
                               title=f"{results['task']} (d={d}): {shift}", n_dims=d)
    plot_ood_summary(results["ood"], out_dir / "ood_summary.png", two_d=2 * d,
                     title=f"{results['task']} (d={d}) out of distribution")


# --- a run's analysis (``RUN_DIR/analysis/analysis.json``), beside it ---------------------------

def plot_analysis(r: dict, out: Path) -> None:
    """The figures of each part of one run's analysis, in ``out``."""
    if "dynamics" in r:
        _plot_dynamics(r, out)
    if "match" in r:
        _plot_match(r, out)
    if "exit" in r:
        _plot_exit(r, out)
    if "probe" in r:
        _plot_probe(r, out)
    if "hops" in r:
        _plot_hops(r, out)


def _plot_hops(r: dict, out: Path) -> None:
    """The read-out's accuracy against the j-hop answer per unit of depth, j* marked, with
    the linear (t + c) and doubling (2^(t + c)) lines at the offsets the reading chose."""
    h, unit = r["hops"], r["unit"]
    acc = np.asarray([[np.nan if v is None else v for v in row] for row in h["accuracy"]])
    L, J = acc.shape
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    im = ax.imshow(acc.T, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis",
                   extent=(0.5, L + 0.5, 0.5, J + 0.5))
    fig.colorbar(im, ax=ax, label="accuracy against the j-hop answer")
    t = np.arange(1, L + 1)
    ax.plot(t, h["j_star"], "o", color="C3", markersize=3, label="best-matching j*(t)")
    # each form at its best offset c (the one the reading scored), j = t + c and 2^(t + c)
    c_lin = h["forms"]["linear"]["offset"] or 0
    c_dbl = h["forms"]["doubling"]["offset"] or 0
    lin = (t + c_lin).astype(float)
    keep = (lin >= 1) & (lin <= J)
    ax.plot(t[keep], lin[keep], color="w", ls="--", lw=1, label=f"j = t{c_lin:+d} (linear)"
            if c_lin else "j = t (linear)")
    dbl = 2.0 ** (t + c_dbl)
    keep = (dbl >= 1) & (dbl <= J)
    ax.plot(t[keep], dbl[keep], color="C1", ls=":", lw=1.5,
            label=f"j = 2^(t{c_dbl:+d}) (doubling)" if c_dbl else "j = 2^t (doubling)")
    ax.axhline(h["trained_hops"], color="0.8", ls="-.", lw=0.8, label="trained hops")
    ax.set(xlabel=f"{unit} t", ylabel="hops j", ylim=(0.5, J + 0.5),
           title=f"which j-hop answer each {unit} gives: {h['reading']}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.25, 0.5), frameon=False)
    save(fig, out / "hops.png", dpi=130)


def _plot_dynamics(r: dict, out: Path) -> None:
    unit, dyn = r["unit"], r["dynamics"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if "accuracy" in dyn:  # a classification task
        c = dyn["accuracy"]["last"]
        x = np.arange(1, len(c["mean"]) + 1)
        ax.plot(x, c["mean"], label=f"last position (k={c['k']})")
        ax.fill_between(x, c["low"], c["high"], alpha=0.2)
        ax.plot(x, dyn["accuracy"]["all_asked"], label="every asked position")
        ax.axvline(r["trained_depth"], color="gray", ls=":", label="trained depth")
        ax.set(xlabel=unit, ylabel="accuracy", ylim=(0, 1.02), title="accuracy per " + unit)
        ax.legend(fontsize=8)
    for name, c in dyn.get("error", {}).items():
        x = np.arange(1, len(c["mean"]) + 1)
        ax.plot(x, np.maximum(c["mean"], 1e-8), label=f"{name} (k={c['k']})")
        ax.fill_between(x, np.maximum(c["low"], 1e-8), np.maximum(c["high"], 1e-8),
                        alpha=0.2)
    if "error" in dyn:
        ax.axvline(r["trained_depth"], color="gray", ls=":", label="trained depth")
        ax.set(xlabel=unit, ylabel="normalised error", yscale="log", title="error per " + unit)
        ax.legend(fontsize=8)
    sc = dyn["state_change"]
    ax2.plot(sc["loops"], np.maximum(sc["mean"], 1e-12), label="mean over prompts")
    if "median" in sc:  # per prompt: the median, the band to the 90th percentile, the max
        floor = lambda v: np.maximum(np.nan_to_num(v, nan=1e-12), 1e-12)  # noqa: E731
        line, = ax2.plot(sc["loops"], floor(sc["median"]), label="median")
        ax2.fill_between(sc["loops"], floor(sc["median"]), floor(sc["p90"]), alpha=0.25,
                         color=line.get_color(), label="median to 90th percentile")
        ax2.plot(sc["loops"], floor(sc["max"]), color=line.get_color(), ls="--", lw=0.8,
                 label="max")
        ax2.axhline(dyn["classes"]["tol"], color="gray", ls="-.", lw=0.8,
                    label=f"fixed-point tol {dyn['classes']['tol']:g}")
    ax2.axhline(dyn["converged_below"]["level"], color="gray", ls=":")
    ax2.set(xlabel=unit, ylabel="||h_t - h_{t-1}|| / ||h_t||", yscale="log",
            title="relative state change per prompt")
    ax2.legend(fontsize=7)
    save(fig, out / "dynamics.png", dpi=130)


def _plot_match(r: dict, out: Path) -> None:
    unit, algos = r["unit"], r["match"]["algorithms"]
    fig, axes = plt.subplots(1, len(algos), figsize=(4 * len(algos), 3.6), squeeze=False)
    for ax, (name, a) in zip(axes[0], algos.items(), strict=True):
        im = ax.imshow(np.asarray(a["heatmap"]), aspect="auto", origin="lower",
                       vmin=-1, vmax=1, cmap="RdBu_r",
                       extent=(-0.5, len(a["iterations"]) - 0.5, 0.5,
                               len(a["heatmap"]) + 0.5))
        ticks = np.linspace(0, len(a["iterations"]) - 1, 5).astype(int)
        ax.set_xticks(ticks, [str(a["iterations"][i]) for i in ticks])
        ax.set(xlabel="iteration", ylabel=unit, title=name)
    fig.colorbar(im, ax=axes[0].tolist(), label="cosine similarity of residuals")
    save(fig, out / "match_heatmaps.png", dpi=130)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, a in algos.items():
        ax.plot(np.arange(1, len(a["k_star"]) + 1), np.maximum(a["k_star"], 0.5),
                marker=".", label=name)
    ax.set(xlabel=unit, ylabel="best-matching iteration k*(t)", yscale="log")
    ax.legend(fontsize=8)
    save(fig, out / "match_k_star.png", dpi=130)


def _plot_exit(r: dict, out: Path) -> None:
    ex = r["exit"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    fixed = ex["fixed_depth_held_out"]
    ax.plot(np.arange(1, len(fixed) + 1), fixed, color="k", label="fixed depth")
    for name, rule in ex["rules"].items():
        rows = rule["thresholds"]
        ax.plot([t["held_out"]["mean_loops"] for t in rows],
                [t["held_out"]["error"] for t in rows], marker="o", label=f"rule {name}")
    ax.axhline(ex["oracle_held_out"]["oracle_error"], color="gray", ls=":", label="oracle")
    ax.set(xlabel=f"mean {r['unit']}s spent", ylabel="error (held out)", yscale="log",
           xscale="log")
    ax.legend(fontsize=8)
    save(fig, out / "exit.png", dpi=130)


def _plot_probe(r: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, t in r["probe"]["targets"].items():
        x = np.arange(1, len(t["relative"]) + 1)
        line, = ax.plot(x, t["relative"], marker=".", label=name)
        ax.plot(x, t["control_relative"], ls="--", color=line.get_color(),
                label=f"{name} (control)")
    ax.set(xlabel=r["unit"], ylabel="probe error / target variance (held out)")
    ax.legend(fontsize=8)
    save(fig, out / "probe.png", dpi=130)
