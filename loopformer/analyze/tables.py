"""The analysis in a study's data and on its results page.

``loopformer.report export`` keeps, per run that has ``analysis/analysis.json``, a compact record
(:func:`record`): the curves per unit of depth on a grid (every unit up to 2b, then about 12 per
decade, always b, 5b and the last), the convergence loop, the Jacobian estimates, the matched
iterations, the probes and the early-exit figures. ``<!-- table:analysis data=NAME
part=dynamics|match|probe|exit|cost [variants=a,b] -->`` renders them per variant over the
seeds that left the plateau (the cost over every analysed run); ``python -m
loopformer.report plot-analysis DATA OUT_DIR`` draws them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from loopformer.errors import ConfigError

PARTS = ("dynamics", "match", "probe", "exit")
TABLE_PARTS = (*PARTS, "cost")


def _r(x: float | None) -> float | None:
    return None if x is None or x != x else float(f"{x:.5g}")


def depth_grid(n: int, b: int) -> list[int]:
    """Units of depth kept from a curve of ``n``: 1..2b, then about 12 per decade, with b, 5b
    and n."""
    keep = set(range(1, min(2 * b, n) + 1)) | {t for t in (b, 5 * b, n) if t <= n}
    t = 2 * b
    while t < n:
        keep.add(int(round(t)))
        t *= 10 ** (1 / 12)
    return sorted(k for k in keep if 1 <= k <= n)


def _on(curve: list[float], grid: list[int], offset: int = 1) -> list[float | None]:
    """``curve[i]`` is depth ``i + offset``."""
    return [_r(curve[t - offset]) if 0 <= t - offset < len(curve) else None for t in grid]


def record(r: dict) -> dict:
    """The compact analysis of one run (``analysis.json`` -> the study data's ``analysis``)."""
    b = r["trained_depth"]
    out = {"family": r["family"], "unit": r["unit"], "trained_depth": b,
           "n_prompts": r["n_prompts"], "seed": r["seed"], "max_loops": r.get("max_loops"),
           "not_defined": r.get("not_defined", {}),
           "seconds": {k: round(v, 1) for k, v in r["seconds"].items()},
           "cpu_seconds": round(r.get("cpu_seconds", float("nan")), 1)}
    if "dynamics" in r:
        dyn = r["dynamics"]
        n = len(dyn["error"]["last"]["mean"])
        grid = depth_grid(n, b)
        out["dynamics"] = {
            "loops": grid,
            "error": {name: {"k": c["k"], "mean": _on(c["mean"], grid)}
                      for name, c in dyn["error"].items()},
            "state_change": _on(dyn["state_change"]["mean"], grid, offset=2),
            "converged_below": dyn["converged_below"],
            "sigma": {t: {"mean": _r(s["mean"]), "max": _r(s["max"])}
                      for t, s in dyn["jacobian"]["sigma"].items()},
            "jacobian": {k: v for k, v in dyn["jacobian"].items() if k != "sigma"}}
    if "match" in r:
        m = r["match"]
        n = len(next(iter(m["algorithms"].values()))["k_star"])
        grid = depth_grid(n, b)
        out["match"] = {"loops": grid,
                        "algorithms": {name: {"k_star": _on(a["k_star"], grid),
                                              "similarity": _on(a["similarity"], grid)}
                                       for name, a in m["algorithms"].items()},
                        "closed_forms": {name: _on(c, grid)
                                         for name, c in m["closed_forms"].items()}}
    if "exit" in r:
        ex = r["exit"]
        fixed = ex["fixed_depth_held_out"]
        grid = depth_grid(len(fixed), b)
        rules = {}
        for name, rule in ex["rules"].items():
            c = rule["chosen"]
            rules[name] = {"chosen_tol": rule["chosen_tol"],
                           "reference_loop": rule["reference_loop"],
                           "chosen": None if c is None else {
                               k: (_r(c[k]) if isinstance(c[k], float) else c[k])
                               for k in ("error", "mean_loops", "fixed_loops_at_equal_error",
                                         "loops_saved_at_equal_error", "exit_quantiles")}}
        out["exit"] = {"loops": grid, "fixed_held_out": _on(fixed, grid),
                       "oracle_held_out": {k: _r(v) if isinstance(v, float) else v
                                           for k, v in ex["oracle_held_out"].items()},
                       "split": ex["split"], "rules": rules}
    if "probe" in r:
        p = r["probe"]
        out["probe"] = {"split": p["split"], "budget": p["budget"],
                        "targets": {name: {k: [_r(v) for v in t[k]] for k in
                                           ("relative", "control_relative")}
                                    for name, t in p["targets"].items()}}
    return out


# --- tables ---------------------------------------------------------------------------------

def _band(values: list[float], digits: str = ".4f") -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    if min(values) == max(values):  # one seed, or all alike
        return f"{values[0]:{digits}}"
    return (f"{statistics.fmean(values):{digits}} [{min(values):{digits}}, "
            f"{max(values):{digits}}]")


def _analysed(data: dict, variant: str) -> tuple[list[dict], list[int], list[int]]:
    """The escaped runs of ``variant`` with an analysis, the seeds analysed but not escaped,
    and the seeds without an analysis."""
    runs = [r for r in data["runs"] if r["variant"] == variant]
    if not runs:
        raise ConfigError(f"no runs of variant {variant!r} in the data of {data['study']}; "
                          f"variants: {data['variants']}")
    good = [r for r in runs if r.get("analysis") and r["escape_step"] is not None]
    stuck = [r["seed"] for r in runs if r.get("analysis") and r["escape_step"] is None]
    missing = [r["seed"] for r in runs if not r.get("analysis")]
    return good, stuck, missing


def _at(a: dict, part: str, key_path: tuple, depth: int) -> float | None:
    block = a[part]
    grid = block["loops"]
    if depth not in grid:
        return None
    node = block
    for k in key_path:
        node = node[k]
    return node[grid.index(depth)]


def _depths(a: dict, part: str) -> tuple[int, int]:
    return a["trained_depth"], a[part]["loops"][-1]


def _row_dynamics(runs: list[dict]) -> list[str]:
    an = [r["analysis"] for r in runs if "dynamics" in r["analysis"]]
    if not an:
        return None
    b, last = _depths(an[0], "dynamics")
    conv = [a["dynamics"]["converged_below"] for a in an]
    loops = [c["loop"] for c in conv if c["loop"] != "never"]
    never = sum(c["loop"] == "never" for c in conv)
    converged = (_band(loops, ".3g") if loops else "-") + (f" ({never} never)" if never else "")
    sig = [a["dynamics"]["sigma"] for a in an]
    ts = sorted(sig[0], key=int)
    return ([str(b), _band([_at(a, "dynamics", ("error", "last", "mean"), b) for a in an]),
             _band([_at(a, "dynamics", ("error", "last", "mean"), 5 * b) for a in an]),
             f"{last}: " + _band([_at(a, "dynamics", ("error", "last", "mean"), last)
                                  for a in an]),
             _band([_at(a, "dynamics", ("state_change",), b) for a in an], ".2e"),
             _band([_at(a, "dynamics", ("state_change",), last) for a in an], ".2e"),
             converged]
            + ["; ".join(f"{t}: {_band([s[t]['mean'] for s in sig], '.3f')}" for t in ts)])


def _row_match(runs: list[dict], algorithms: list[str]) -> list[str]:
    an = [r["analysis"] for r in runs if "match" in r["analysis"]]
    if not an:
        return None
    b = an[0]["trained_depth"]
    output_only = an[0]["match"]["loops"] == [1]  # a fixed-depth model: its output alone
    at = 1 if output_only else b
    cells = [f"{b} (output)" if output_only else str(b)]
    for name in algorithms:
        ks = [_at(a, "match", ("algorithms", name, "k_star"), at) for a in an]
        sims = [_at(a, "match", ("algorithms", name, "similarity"), at) for a in an]
        first = [_at(a, "match", ("algorithms", name, "k_star"), 1) for a in an]
        cells.append((f"{_band(ks, '.3g')}" if output_only else
                      f"{_band(first, '.3g')} -> {_band(ks, '.3g')}")
                     + f" ({_band(sims, '.3f')})")
    ls = [_at(a, "match", ("closed_forms", "least_squares"), at) for a in an]
    cells.append(_band(ls, ".3f"))
    return cells


def _row_probe(runs: list[dict], targets: list[str]) -> list[str]:
    an = [r["analysis"] for r in runs if "probe" in r["analysis"]]
    if not an:
        return None
    cells = [str(an[0]["trained_depth"])]
    for name in targets:
        rel = [a["probe"]["targets"][name]["relative"] for a in an]
        depth = len(rel[0])
        mean = [statistics.fmean(r[t] for r in rel) for t in range(depth)]
        best = min(range(depth), key=mean.__getitem__)
        ctl = [a["probe"]["targets"][name]["control_relative"][-1] for a in an]
        cells.append(f"{_band([r[0] for r in rel], '.3f')} -> {_band([r[-1] for r in rel], '.3f')}"
                     f"; lowest at {best + 1} ({mean[best]:.3f}); control "
                     f"{_band(ctl, '.3f')}")
    return cells


def _row_exit(runs: list[dict], rules: list[str]) -> list[str]:
    an = [r["analysis"] for r in runs if "exit" in r["analysis"]]
    if not an:
        return None
    b = an[0]["trained_depth"]
    o = [a["exit"]["oracle_held_out"] for a in an]
    cells = [str(b), _band([_at(a, "exit", ("fixed_held_out",), b) for a in an]),
             _band([x["best_fixed_error"] for x in o]) + " at "
             + _band([x["best_fixed_loop"] for x in o], ".3g"),
             _band([x["oracle_error"] for x in o]), _band([x["headroom"] for x in o])]
    for name in rules:
        chosen = [a["exit"]["rules"][name] for a in an]
        made = [c for c in chosen if c["chosen"] is not None]
        if not made:
            cells.append("no threshold reaches the trained depth's error")
            continue
        tols = sorted({c["chosen_tol"] for c in made})
        saved = [c["chosen"]["loops_saved_at_equal_error"] for c in made]
        cells.append(f"tol {', '.join(f'{t:g}' for t in tols)}: "
                     f"{_band([c['chosen']['error'] for c in made])} in "
                     f"{_band([c['chosen']['mean_loops'] for c in made], '.1f')}; saves "
                     f"{_band(saved, '.1f')}"
                     + (f" ({len(chosen) - len(made)} none)" if len(made) < len(chosen) else ""))
    return cells


def _row_cost(runs: list[dict]) -> list[str]:
    an = [r["analysis"] for r in runs]
    if not an:
        return None
    parts = [k for k in ("trajectory", "match", "exit", "probe") if k in an[0]["seconds"]]
    return [str(an[0]["n_prompts"]), _band([a["seconds"]["total"] for a in an], ".0f")] + [
        _band([a["seconds"].get(k) for a in an], ".1f") if k in parts else "-"
        for k in ("trajectory", "match", "exit", "probe")] + [
        _band([a["cpu_seconds"] for a in an], ".0f")]


def table_analysis(data: dict, opts: dict) -> list[str]:
    part = opts.get("part")
    if part not in TABLE_PARTS:
        raise ConfigError(f"table:analysis part={part} must be one of {list(TABLE_PARTS)}")
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    every = [r["analysis"] for r in data["runs"] if r.get("analysis")]
    if not every:
        raise ConfigError(f"the data of {data['study']} has no analysis; run python -m "
                          f"loopformer.analyze study=STUDY_DIR, then export")
    if part == "cost":
        return _table_cost(data, variants)
    with_part = [a for a in every if part in a]
    if not with_part:
        raise ConfigError(f"no run in the data of {data['study']} has the {part} part")
    head = {
        "dynamics": ["b", "error at b", "at 5b", "at the last", "state change at b",
                     "at the last", "state change < 1e-3 from", "Jacobian sigma (loop: mean)"],
        "match": ["b"] + [f"{n}: k*(1) -> k*(b) (similarity at b)"
                          for n in with_part[0]["match"]["algorithms"]]
                 + ["least squares: similarity at b"],
        "probe": ["b"] + [f"{n}: first -> last" for n in with_part[0]["probe"]["targets"]],
        "exit": ["b", "fixed depth b", "best fixed depth", "oracle", "headroom"]
                + [f"rule {n}: held-out error in mean loops; loops saved at equal error"
                   for n in with_part[0]["exit"]["rules"]],
    }[part]
    lines = ["| variant | seeds | " + " | ".join(head) + " |",
             "|---|---|" + "---|" * len(head)]
    for v in variants:
        good, stuck, missing = _analysed(data, v)
        if part == "dynamics":
            cells = _row_dynamics(good)
        elif part == "match":
            cells = _row_match(good, list(with_part[0]["match"]["algorithms"]))
        elif part == "probe":
            cells = _row_probe(good, list(with_part[0]["probe"]["targets"]))
        else:
            cells = _row_exit(good, list(with_part[0]["exit"]["rules"]))
        if cells is None:
            why = next((r["analysis"]["not_defined"].get(part) for r in data["runs"]
                        if r["variant"] == v and r.get("analysis")), None)
            cells = [f"not defined: {why}" if why else "-"] + [""] * (len(head) - 1)
        seeds = f"{len(good)}" + (f" (not escaped: {', '.join(map(str, stuck))})"
                                  if stuck else "") + (
            f" (not analysed: {', '.join(map(str, missing))})" if missing else "")
        lines.append(f"| {v} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def _table_cost(data: dict, variants: list[str]) -> list[str]:
    head = ["prompts", "wall s", "trajectory s", "match s", "exit s", "probe s",
            "CPU s (all threads)"]
    lines = ["| variant | runs | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for v in variants:
        runs = [r for r in data["runs"] if r["variant"] == v and r.get("analysis")]
        cells = _row_cost(runs) or ["-"] * len(head)
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


# --- plots ----------------------------------------------------------------------------------

def _mean_curve(curves: list[list[float | None]]) -> list[float]:
    out = []
    for vals in zip(*curves, strict=True):
        vals = [v for v in vals if v is not None]
        out.append(statistics.fmean(vals) if vals else math.nan)
    return out


def plot(data: dict, out: Path, variants: list[str] | None = None) -> list[Path]:
    """Per variant, the mean over its escaped, analysed seeds: error and state change per unit
    of depth, k*(t) per algorithm, and the probes' error per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = variants or data["variants"]
    runs = {v: _analysed(data, v)[0] for v in variants}
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = out / f"analysis_{data['study']}_{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    dyn = {v: [r["analysis"] for r in rs if "dynamics" in r["analysis"]]
           for v, rs in runs.items()}
    dyn = {v: an for v, an in dyn.items() if an}
    if dyn:
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
        save(fig, "dynamics")
    match = {v: [r["analysis"] for r in rs if "match" in r["analysis"]]
             for v, rs in runs.items()}
    match = {v: an for v, an in match.items() if an and an[0]["match"]["loops"] != [1]}
    if match:
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
        save(fig, "k_star")
    probe = {v: [r["analysis"] for r in rs if "probe" in r["analysis"]]
             for v, rs in runs.items()}
    probe = {v: an for v, an in probe.items() if an}
    if probe:
        targets = list(next(iter(probe.values()))[0]["probe"]["targets"])
        fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.8),
                                 squeeze=False)
        for ax, name in zip(axes[0], targets, strict=True):
            for v, an in probe.items():
                curve = _mean_curve([a["probe"]["targets"][name]["relative"] for a in an])
                line, = ax.plot(range(1, len(curve) + 1), curve, marker=".",
                                label=f"{v} ({an[0]['unit']})")
                ctl = _mean_curve([a["probe"]["targets"][name]["control_relative"]
                                   for a in an])
                ax.plot(range(1, len(ctl) + 1), ctl, ls="--", color=line.get_color())
            ax.set(xlabel="unit of depth", ylabel="probe error / target variance (held out)",
                   title=f"{name} (dashed: control)")
        axes[0][0].legend(fontsize=8)
        save(fig, "probe")
    return written
