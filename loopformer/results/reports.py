"""The markdown reports written beside a study: ``report.md`` (its variants' errors over
seeds, with the out-of-distribution summary) and ``analysis.md`` (the analysis per variant)."""

from __future__ import annotations

from loopformer.formatting import band


def _cell(c: dict, k: int) -> str:
    return band(c["mean"][k], c["low"][k], c["high"][k])


def study_report(report: dict, sample: dict | None) -> str:
    """``report.md``: per variant, its error at the study's numbers of examples, at the trained
    loop count and at the extra ones, mean [min, max] over seeds; then its figures."""
    curves = report["curves"]
    n = len(next(iter(curves.values()))["mean"])
    cols = [k for k in report["examples"] if k < n] or [n - 1]
    b = sorted({t for t in report.get("trained_loops", {}).values() if t})
    at = [("", curves)] + [(f" @{key}", c) for key, c in report.get("curves_at_loops",
                                                                    {}).items()]
    params = report.get("parameters", {})
    head = "| variant | parameters | seeds | " + " | ".join(
        f"k={k}{suffix}" for suffix, _ in at for k in cols) + " |"
    lines = [f"# Study `{report['study']}`", ""]
    if sample:
        loops = (f" Columns `k=N` use the trained loop count (b = {', '.join(map(str, b))}); "
                 f"`k=N @L` use L loop iterations." if b else "")
        if sample.get("metric") == "accuracy":  # a classification task: k is a position
            lines += [f"Task `{sample['task']}`, {sample['n_points']} tokens, "
                      f"{sample['n_prompts']} prompts per run. Accuracy at position k (chance "
                      f"{sample['chance']:.3g}): mean over seeds [min, max].{loops}"
                      + (" Baselines (fitted per prompt): one run's prompts, mean [90% "
                         "bootstrap band over its prompts]." if any(
                             n.endswith("(baseline)") for n in curves) else ""), ""]
        else:
            lines += [f"Task `{sample['task']}`, d={sample['active_dims']}, "
                      f"{sample['n_prompts']} prompts per run. Normalised squared error at k "
                      f"in-context examples: mean over seeds [min, max].{loops}", ""]
    lines += [head, "|" + "---|" * (len(cols) * len(at) + 3)]
    for name, c in curves.items():
        cells = [_cell(c, k) for k in cols]
        for _, by_variant in at[1:]:
            cells += [_cell(by_variant[name], k) if name in by_variant else "-" for k in cols]
        n_params = f"{params[name]:,}" if params.get(name) else "-"
        lines.append(f"| {name} | {n_params} | {report['seeds'].get(name, '-')} | "
                     + " | ".join(cells) + " |")
    if report.get("metric") == "accuracy":  # the figures plot_study_report draws for it
        lines += ["", "![accuracy vs position](accuracy_vs_position.png)", ""]
        if report.get("loop_curves"):
            lines += ["![accuracy vs loops](accuracy_vs_loops.png)", ""]
        return "\n".join(lines) + "\n"
    lines += ["", "![error vs examples](error_vs_examples.png)", ""]
    if report.get("loop_curves"):
        lines += ["![error vs loops](error_vs_loops.png)", ""]
    for group in report.get("groups", {}):
        lines += [f"![{group}: error vs examples](error_vs_examples_{group}.png)"]
    return "\n".join(lines) + "\n"


def ood_report(ood: dict) -> str:
    """A markdown table: variant x shift x loop count, mean [min, max] over seeds."""
    lines = ["", "## Out of distribution", "",
             "Normalised error at k = 2d examples (or the shift's last scored k, given), "
             "mean [min, max] over seeds.", "",
             "| variant | shift | k | curve | error |", "|---|---|---|---|---|"]
    for v, by_shift in ood.items():
        for s, by_curve in by_shift.items():
            for name, c in by_curve.items():
                lines.append(f"| {v} | {s} | {c['k']} | {name} | "
                             f"{band(c['mean'], c['low'], c['high'])} |")
    return "\n".join(lines) + "\n"


def analysis_report(report: dict) -> str:
    """``analysis.md``: per variant, each scalar of its analyses, mean [min, max] over seeds."""
    lines = ["# Analysis per variant (mean [min, max] over seeds)", ""]
    for variant, rows in report["variants"].items():
        lines += [f"## {variant} ({report['seeds'][variant]} runs)", "", "| | value |",
                  "|---|---|"]
        for key, b in rows.items():
            cell = "n/a" if b["mean"] is None else band(b["mean"], b["low"], b["high"], ".4g")
            lines.append(f"| {key} | {cell} |")
        lines.append("")
    return "\n".join(lines)
