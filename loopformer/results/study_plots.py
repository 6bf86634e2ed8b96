"""A study's figures: its variants' curves with their bands over seeds (``report.md``), and
from its data (:mod:`loopformer.results.export`) the out-of-distribution summary, the learning
curves that decide escape and the loop analysis per variant."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loopformer.errors import ConfigError
from loopformer.results.analysis_tables import analysed_runs
from loopformer.results.plots import as_dict, draw_band, finish, plt, save, xs_of
from loopformer.results.tables import factor_key, for_dataset, runs_of
from loopformer.study import Study


def plot_study(curves_by_variant: Mapping[str, Any], path: str | Path, title: str = "",
               xlabel: str = "number of in-context examples",
               ylabel: str = "squared error (normalised)", log_y: bool = True,
               floor: float = 1e-3, reference: float | None = 1.0,
               reference_label: str = "zero predictor",
               vline: tuple[float, str] | None = None) -> Path:
    """One curve with its band per variant (an ablation or sweep); a dashed line at
    ``reference`` (the zero predictor's 1 by default, ``None`` for none) and an optional
    vertical marker ``vline = (x, label)``."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(curves_by_variant) - 1)
    for i, (name, curve) in enumerate(curves_by_variant.items()):
        c = as_dict(curve)
        # ordered colours: variants are usually a sweep (loops, depth, width, ...)
        draw_band(ax, xs_of(c), c, floor if log_y else -np.inf, str(name), cmap(0.9 * i / n),
              linewidth=2)
    if reference is not None:
        ax.axhline(reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
    if vline is not None:
        ax.axvline(vline[0], color="C3", linestyle="--", linewidth=1.2, label=vline[1])
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return finish(fig, ax, path)


def plot_study_loops(loop_curves: Mapping[str, Mapping[str, Any]], trained_loops: int | None,
                     path: str | Path, title: str = "", floor: float = 1e-4) -> Path:
    """Error at the last position vs loop iterations at test time, one curve with its band
    per variant (``{"loops": [...], "mean": [...], "low": [...], "high": [...]}``), with a
    marker at the trained loop count when the variants share one."""
    curves = {name: {"x": c["loops"], **{k: c[k] for k in ("mean", "low", "high") if k in c}}
              for name, c in loop_curves.items()}
    vline = (trained_loops, f"trained loops b = {trained_loops}") if trained_loops else None
    return plot_study(curves, path, title=title, xlabel="loop iterations at test time",
                      ylabel="error at the last position", floor=floor, vline=vline)


def plot_study_report(study: Study, study_dir: Path, report: dict) -> None:
    """The figures of a study's ``report.md`` (:func:`loopformer.results.aggregate.aggregate`):
    error vs examples and vs loops, for all variants and for each of the study's groups."""
    curves, loop_curves = report["curves"], report["loop_curves"]
    baselines = {k: v for k, v in curves.items() if k not in study.variants}
    b = sorted({t for t in report["trained_loops"].values() if t})
    trained = b[0] if len(b) == 1 else None
    band = "mean over seeds, band min..max"
    if report.get("metric") == "accuracy":  # a classification task: accuracy, linear axes
        # the baselines (one run's prompts) as lines: their bands are over prompts, not seeds
        curves = {k: {"mean": c["mean"]} if k in baselines else c for k, c in curves.items()}
        plot_study(curves, study_dir / "accuracy_vs_position.png", xlabel="position",
                   ylabel="accuracy", log_y=False, reference=None,
                   title=f"{study.name}: accuracy ({band})")
        if loop_curves:
            plot_study({v: {"x": c["loops"], **c} for v, c in loop_curves.items()},
                       study_dir / "accuracy_vs_loops.png", xlabel="loop iterations at test "
                       "time", ylabel="accuracy at the last position", log_y=False,
                       reference=None, title=f"{study.name}: accuracy ({band})")
        return
    plot_study(curves, study_dir / "error_vs_examples.png",
               title=f"{study.name}: normalised error ({band})")
    if loop_curves:
        plot_study_loops(loop_curves, trained, study_dir / "error_vs_loops.png",
                         title=f"{study.name}: error at the last position ({band})")
    for group, members in study.groups.items():
        sel = {v: curves[v] for v in members if v in curves}
        if sel:
            plot_study({**sel, **baselines}, study_dir / f"error_vs_examples_{group}.png",
                       title=f"{study.name}, {group}: normalised error ({band})")
        sel = {v: loop_curves[v] for v in members if v in loop_curves}
        if sel:
            plot_study_loops(sel, trained, study_dir / f"error_vs_loops_{group}.png",
                             title=f"{study.name}, {group}: error at the last position "
                                   f"({band})")


def plot_ood_by_variant(data: dict, path: Path, variants: list[str] | None = None,
                        factors: tuple[str, ...] = ("1", "5", "20")) -> Path:
    """The error at k = 2d per shift: each variant at each loop count (mean over its escaped
    seeds, bars from min to max), the baselines as grey marks."""
    variants = variants or data["variants"]
    every = [r for v in variants for r in runs_of(data, v)]
    shifts = list(every[0]["ood"])
    cols = [(v, f) for v in variants for f in factors
            if any(factor_key(r, f) in r["ood"][shifts[0]]["error"] for r in runs_of(data, v))]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(shifts) + 3), 4.8))
    width = 0.7 / max(1, len(cols))
    colors = plt.get_cmap("tab20")
    for i, (v, f) in enumerate(cols):
        runs = [r for r in runs_of(data, v) if r["escape_step"] is not None]
        offset = (i - (len(cols) - 1) / 2) * width
        _draw_variant_ood(ax, runs, f, shifts, offset, colors(i % 20),
                          f"{v} @{'b' if f == '1' else f + 'b'}")
    names = sorted({b for s in shifts for b in every[0]["ood"][s]["baselines"]})
    for i, b in enumerate(names):
        ys = [every[0]["ood"][s]["baselines"].get(b, float("nan")) for s in shifts]
        ax.plot(range(len(shifts)), [max(y, 1e-3) for y in ys], linestyle="none",
                marker="_x^sv"[i % 5], color="0.55", markersize=7, label=b)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="zero predictor")
    d = data["active_dims"]
    ax.set_xticks(range(len(shifts)), [s + ("" if every[0]["ood"][s]["k"] == 2 * d else "*")
                                       for s in shifts], rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(f"normalised error at k = {2 * d} (* last scored k)")
    ax.set_title(f"{data['study']}: out of distribution (mean over escaped seeds, min..max)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, path, dpi=120, bbox=None)


def _draw_variant_ood(ax, runs: list[dict], factor: str, shifts: list[str], offset: float,
                      color, label: str) -> None:
    """One variant at one loop count: per shift, the mean over ``runs`` with a bar from the
    least to the largest error, ``offset`` beside the shift's tick."""
    xs, mean, low, high = [], [], [], []
    for j, s in enumerate(shifts):
        vals = [r["ood"][s]["error"][factor_key(r, factor)] for r in runs
                if factor_key(r, factor) in r["ood"][s]["error"]]
        if vals:
            xs.append(j + offset)
            mean.append(statistics.fmean(vals))
            low.append(min(vals))
            high.append(max(vals))
    if xs:
        ax.errorbar(xs, mean, yerr=[[m - lo for m, lo in zip(mean, low, strict=True)],
                                    [hi - m for m, hi in zip(mean, high, strict=True)]],
                    fmt="o", markersize=4, capsize=2, color=color, label=label)


def plot_learning_curves(data: dict, path: Path, variants: list[str] | None = None) -> Path:
    """The learning curves that decide escape: the fixed test set's error at the last position
    against the training step, one line per run (a colour per variant, seeds that did not
    escape dashed), with the escape threshold."""
    variants = variants or data["variants"]
    accuracy = data.get("metric") == "accuracy"  # a classification task: accuracy, linear
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        for r in runs_of(data, v):
            escaped = r["escape_step"] is not None
            curve = r["test"]["accuracy_last" if accuracy else "error_last"]
            ax.plot(r["test"]["step"], curve, color=colors(i % 10),
                    linestyle="-" if escaped else "--", marker="o", markersize=3,
                    linewidth=1.2, alpha=0.85)
        ax.plot([], [], color=colors(i % 10), marker="o", markersize=3, label=v)
    ax.axhline(data["escape"]["threshold"], color="0.4", linestyle=":", linewidth=1,
               label=f"escape threshold {data['escape']['threshold']:g}")
    ax.set_xlabel("training step")
    if accuracy:
        ax.axhline(data["chance"], color="0.6", linestyle="--", linewidth=0.8, label="chance")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"fixed test set: accuracy at position {data['n_points'] - 1}")
    else:
        ax.axhline(1.0, color="0.6", linestyle="--", linewidth=0.8, label="zero predictor")
        ax.set_yscale("log")
        ax.set_ylabel(f"fixed test set: error at {data['n_points'] - 1} examples")
    ax.set_title(f"{data['study']}: learning curves, one line per seed (dashed: not escaped)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path, dpi=120, bbox=None)


def plot_examples_by_variant(data: dict, path: Path, variants: list[str] | None = None,
                             dataset: str | None = None) -> Path:
    """A classification study's accuracy against the number of in-context examples at the
    trained loop count: one thin line per run, the mean over all runs of a variant thick, and
    the per-prompt classifiers of the evaluation (the same prompts in every run: their curves
    are drawn once, from the first run, and must agree across runs). ``dataset``: one held-out
    table of ``task=openml`` (None: every held-out prompt pooled)."""
    if data.get("metric") != "accuracy":
        raise ConfigError(f"{data['study']}: plot-examples draws a classification study's "
                          f"accuracy; this study regresses (use its report's error plots)")
    data = for_dataset(data, dataset) if dataset else data
    variants = variants or data["variants"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        # (runs, positions); None (a position that asks nothing) becomes NaN
        curves = np.array([r["accuracy"]["trained"] for r in runs_of(data, v)], dtype=float)
        ks = np.arange(curves.shape[1])
        asked = ~np.isnan(curves).all(0)
        for row in curves:
            ax.plot(ks[asked], row[asked], color=colors(i % 10), linewidth=0.8, alpha=0.45)
        ax.plot(ks[asked], curves[:, asked].mean(0), color=colors(i % 10), linewidth=2.2,
                label=f"{v} (mean of {len(curves)} runs; thin: each run)")
    runs = data["runs"]
    for j, name in enumerate(runs[0]["baselines"]):
        base = np.array(runs[0]["baselines"][name], dtype=float)
        for r in runs[1:]:
            other = np.array(r["baselines"][name], dtype=float)
            if not np.allclose(base, other, equal_nan=True):
                raise ConfigError(f"{data['study']}: the baseline {name} differs between runs; "
                                  f"their evaluations scored different prompts")
        asked = ~np.isnan(base)
        ax.plot(np.arange(len(base))[asked], base[asked], color=colors((len(variants) + j) % 10),
                linewidth=1.1, linestyle=("--", ":", "-.", (0, (5, 1, 1, 1)))[j % 4],
                label=f"{name} (fitted per prompt)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("in-context examples before the query")
    ax.set_ylabel("accuracy")
    where = f"held-out {dataset}" if dataset else "all held-out prompts"
    ax.set_title(f"{data['study']}: accuracy vs examples, {where}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path, dpi=120)


# --- the loop analysis per variant ----------------------------------------------------------

def _mean_curve(curves: list[list[float | None]]) -> list[float]:
    out = []
    for vals in zip(*curves, strict=True):
        vals = [v for v in vals if v is not None]
        out.append(statistics.fmean(vals) if vals else math.nan)
    return out


def plot_analysis_by_variant(data: dict, out: Path,
                             variants: list[str] | None = None) -> list[Path]:
    """Per variant, the mean over its escaped, analysed seeds: error and state change per unit
    of depth, k*(t) per algorithm, and the probes' error per unit; written as
    ``analysis_<study>_<part>.png`` in ``out``."""
    variants = variants or data["variants"]
    runs = {v: analysed_runs(data, v)[0] for v in variants}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, draw in (("dynamics", _draw_dynamics), ("match", _draw_k_star),
                       ("probe", _draw_probes)):
        an = {v: [r["analysis"] for r in rs if part in r["analysis"]] for v, rs in runs.items()}
        an = {v: a for v, a in an.items() if a and (part != "match"
                                                    or a[0]["match"]["loops"] != [1])}
        if an:
            fig, name = draw(an)
            written.append(save(fig, out / f"analysis_{data['study']}_{name}.png", dpi=120))
    return written


def _draw_dynamics(dyn: dict[str, list[dict]]) -> tuple[Any, str]:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for v, an in dyn.items():
        grid = an[0]["dynamics"]["loops"]
        line, = ax.plot(grid, _mean_curve([a["dynamics"]["error"]["last"]["mean"]
                                           for a in an]), label=f"{v} ({len(an)})")
        ax.axvline(an[0]["trained_depth"], color=line.get_color(), ls=":", lw=0.8)
        ax2.plot(grid, _mean_curve([a["dynamics"]["state_change"] for a in an]),
                 color=line.get_color(), label=v)
    ax.set(xscale="log", yscale="log", xlabel="loop (dotted: trained b)",
           ylabel="normalised error, last position", title="error per loop")
    ax2.axhline(1e-3, color="gray", ls=":")
    ax2.set(xscale="log", yscale="log", xlabel="loop",
            ylabel="||h_t - h_(t-1)|| / ||h_t||", title="relative state change")
    ax.legend(fontsize=8)
    return fig, "dynamics"


def _draw_k_star(match: dict[str, list[dict]]) -> tuple[Any, str]:
    algos = list(next(iter(match.values()))[0]["match"]["algorithms"])
    fig, axes = plt.subplots(1, len(algos), figsize=(4 * len(algos), 3.6), squeeze=False)
    for ax, name in zip(axes[0], algos, strict=True):
        for v, an in match.items():
            k_star = _mean_curve([a["match"]["algorithms"][name]["k_star"] for a in an])
            ax.plot(an[0]["match"]["loops"], [max(k, 0.5) for k in k_star], marker=".",
                    label=v)  # iteration 0 (the zero predictor) drawn at 0.5
        ax.set(xscale="log", yscale="log", xlabel="loop", ylabel="k*(t) (0 drawn at 0.5)",
               title=name)
    axes[0][0].legend(fontsize=8)
    return fig, "k_star"


def _draw_probes(probe: dict[str, list[dict]]) -> tuple[Any, str]:
    targets = list(next(iter(probe.values()))[0]["probe"]["targets"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8), squeeze=False)
    for ax, name in zip(axes[0], targets, strict=True):
        for v, an in probe.items():
            curve = _mean_curve([a["probe"]["targets"][name]["relative"] for a in an])
            line, = ax.plot(range(1, len(curve) + 1), curve, marker=".",
                            label=f"{v} ({an[0]['unit']})")
            ctl = _mean_curve([a["probe"]["targets"][name]["control_relative"] for a in an])
            ax.plot(range(1, len(ctl) + 1), ctl, ls="--", color=line.get_color())
        ax.set(xlabel="unit of depth", ylabel="probe error / target variance (held out)",
               title=f"{name} (dashed: control)")
    axes[0][0].legend(fontsize=8)
    return fig, "probe"


PLOTS = ("ood", "curves", "analysis")


def plot_dial_by_variant(data: dict, path: Path, variants: list[str] | None = None) -> Path:
    """Accuracy at the last position per dial value (hops, or length), mean over all trained
    seeds with the band min..max, per variant: at the rule's loop count where it has one
    (solid), at the fixed, trained depth (dashed); the trained value marked."""
    variants = variants or data["variants"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10")
    d0 = None
    for i, v in enumerate(variants):
        runs = runs_of(data, v)
        d0 = runs[0]["dial"]
        for key, style in (("at_rule", "-"), ("at_fixed", "--")):
            if any(r["dial"][key] is None for r in runs):
                continue
            vals = np.array([r["dial"][key] for r in runs], dtype=float)  # (seeds, values)
            label = f"{v}: " + ("rule b(p)" if key == "at_rule" else
                                f"fixed ({d0['fixed_loops']})")
            ax.plot(d0["values"], vals.mean(0), color=colors(i % 10), linestyle=style,
                    marker="o", markersize=3, label=label)
            ax.fill_between(d0["values"], vals.min(0), vals.max(0), color=colors(i % 10),
                            alpha=0.15, linewidth=0)
    if d0 is not None:
        ax.axvline(d0["trained"], color="C3", linestyle=":", label=f"trained {d0['of']}")
        ax.set_xlabel(d0["of"])
    if "chance" in data:
        ax.axhline(data["chance"], color="0.6", linestyle="--", linewidth=0.8, label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy at the last position")
    ax.set_title(f"{data['study']}: beyond the trained dial (mean over seeds, band min..max)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path, dpi=120, bbox=None)


def plot_data_file(kind: str, data_path: Path, out: Path,
                   variants: list[str] | None = None, dataset: str | None = None) -> list[Path]:
    """The ``kind`` figure of a study's data file (``docs/results/data/NAME.json``): ``ood``
    and ``curves`` write the PNG ``out``, ``analysis`` one PNG per part into the folder
    ``out``."""
    if not data_path.is_file():
        raise ConfigError(f"data file {data_path} does not exist")
    data = json.loads(data_path.read_text())
    if dataset is not None and kind != "examples":
        raise ConfigError(f"dataset={dataset} applies to plot-examples only, not plot-{kind}")
    if kind == "ood":
        if not all(r.get("ood") for r in data["runs"]):
            raise ConfigError(f"{data_path}: runs without an out-of-distribution block")
        return [plot_ood_by_variant(data, out, variants)]
    if kind == "curves":
        return [plot_learning_curves(data, out, variants)]
    if kind == "examples":
        return [plot_examples_by_variant(data, out, variants, dataset)]
    if kind == "dial":
        if not all(r.get("dial") for r in data["runs"]):
            raise ConfigError(f"{data_path}: runs without a dial block (eval.dial.factor)")
        return [plot_dial_by_variant(data, out, variants)]
    if not any(r.get("analysis") for r in data["runs"]):
        raise ConfigError(f"{data_path}: no run has an analysis; run python -m "
                          f"loopformer.analyze study=STUDY_DIR, then export")
    return plot_analysis_by_variant(data, out, variants)
