"""Figures of ``analysis.json``: files only (Agg), beside it in ``RUN_DIR/analysis``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_analysis(r: dict, out: Path) -> None:
    unit = r["unit"]
    if "dynamics" in r:
        dyn = r["dynamics"]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, c in dyn["error"].items():
            x = np.arange(1, len(c["mean"]) + 1)
            ax.plot(x, np.maximum(c["mean"], 1e-8), label=f"{name} (k={c['k']})")
            ax.fill_between(x, np.maximum(c["low"], 1e-8), np.maximum(c["high"], 1e-8),
                            alpha=0.2)
        ax.axvline(r["trained_depth"], color="gray", ls=":", label="trained depth")
        ax.set(xlabel=unit, ylabel="normalised error", yscale="log", title="error per " + unit)
        ax.legend(fontsize=8)
        sc = dyn["state_change"]
        ax2.plot(sc["loops"], np.maximum(sc["mean"], 1e-12))
        ax2.axhline(dyn["converged_below"]["level"], color="gray", ls=":")
        ax2.set(xlabel=unit, ylabel="||h_t - h_{t-1}|| / ||h_t||", yscale="log",
                title="relative state change")
        _save(fig, out / "dynamics.png")
    if "match" in r:
        algos = r["match"]["algorithms"]
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
        _save(fig, out / "match_heatmaps.png")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, a in algos.items():
            ax.plot(np.arange(1, len(a["k_star"]) + 1), np.maximum(a["k_star"], 0.5),
                    marker=".", label=name)
        ax.set(xlabel=unit, ylabel="best-matching iteration k*(t)", yscale="log")
        ax.legend(fontsize=8)
        _save(fig, out / "match_k_star.png")
    if "exit" in r:
        ex = r["exit"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        fixed = ex["fixed_depth_held_out"]
        ax.plot(np.arange(1, len(fixed) + 1), fixed, color="k", label="fixed depth")
        for name, rule in ex["rules"].items():
            rows = rule["thresholds"]
            ax.plot([t["held_out"]["mean_loops"] for t in rows],
                    [t["held_out"]["error"] for t in rows], marker="o", label=f"rule {name}")
        ax.axhline(ex["oracle_held_out"]["oracle_error"], color="gray", ls=":", label="oracle")
        ax.set(xlabel=f"mean {unit}s spent", ylabel="error (held out)", yscale="log",
               xscale="log")
        ax.legend(fontsize=8)
        _save(fig, out / "exit.png")
    if "probe" in r:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, t in r["probe"]["targets"].items():
            x = np.arange(1, len(t["relative"]) + 1)
            line, = ax.plot(x, t["relative"], marker=".", label=name)
            ax.plot(x, t["control_relative"], ls="--", color=line.get_color(),
                    label=f"{name} (control)")
        ax.set(xlabel=unit, ylabel="probe error / target variance (held out)")
        ax.legend(fontsize=8)
        _save(fig, out / "probe.png")
