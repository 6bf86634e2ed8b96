"""``<!-- table:analysis data=NAME part=dynamics|classes|match|probe|exit|exit_seeds|cost
[variants=a,b] -->``: the analysis in a study's data (:mod:`loopformer.results.analysis_record`)
per variant over the seeds that left the plateau (``classes``: the dynamics per prompt;
``exit_seeds``: one row per analysed run; the cost over every analysed run)."""

from __future__ import annotations

import statistics

from loopformer.analyze.exits import BEATS_ALL, NO_THRESHOLD
from loopformer.errors import ConfigError
from loopformer.formatting import band_of

PARTS = ("dynamics", "match", "probe", "exit")
TABLE_PARTS = (*PARTS, "classes", "exit_seeds", "hop_seeds", "cost")



def _band(values: list[float | None], digits: str = ".4f") -> str:
    """The band of the values that are defined (not None, not NaN); one value if all agree."""
    return band_of([v for v in values if v is not None and v == v], digits, collapse=True)


def analysed_runs(data: dict, variant: str) -> tuple[list[dict], list[int], list[int]]:
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
                     f"{_band(saved, '.1f')}" + _exit_counts(chosen, made))
    return cells


def _exit_counts(chosen: list[dict], made: list[dict]) -> str:
    """The runs without a threshold, and (where the data has verdicts) those whose rule beat
    every fixed depth, which have no loops saved at equal error."""
    none = len(chosen) - len(made)
    beats = sum(c.get("verdict") == BEATS_ALL for c in made)
    notes = ([f"{none} none"] if none else []) + (
        [f"{beats} beat every fixed depth"] if beats else [])
    return f" ({'; '.join(notes)})" if notes else ""


def _row_classes(runs: list[dict]) -> list[str] | None:
    """Shares of prompts at a fixed point, in a cycle and moving at each analysed loop, the
    state change's spread at b and at the last loop, sigma at fixed points and elsewhere."""
    an = [r["analysis"] for r in runs if "classes" in r["analysis"].get("dynamics", {})]
    if not an:
        return None
    at = an[0]["dynamics"]["classes"]["at"]
    cells = ["; ".join(
        f"{t}: " + " / ".join(_band([a["dynamics"]["classes"]["at"].get(t, {}).get(k)
                                     for a in an], ".2f")
                              for k in ("fixed", "cycle", "moving")) for t in at)]
    b, last = _depths(an[0], "dynamics")
    for depth in (b, last):
        cells.append(" / ".join(
            _band([_at(a, "dynamics", ("state_change_spread", q), depth) for a in an], ".1e")
            for q in ("median", "p90", "max")))
    sig = [a["dynamics"]["sigma"] for a in an]
    cells.append("; ".join(
        f"{t}: {_band([s[t]['at_fixed_points']['mean'] for s in sig], '.3f')} / "
        f"{_band([s[t]['elsewhere']['mean'] for s in sig], '.3f')}"
        for t in sorted(sig[0], key=int)))
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
    if part == "exit_seeds":
        return _table_exit_seeds(data, variants)
    if part == "hop_seeds":
        return _table_hop_seeds(data, variants)
    with_part = [a for a in every if (part if part != "classes" else "dynamics") in a]
    if not with_part:
        raise ConfigError(f"no run in the data of {data['study']} has the {part} part")
    head = {
        "dynamics": ["b", "error at b", "at 5b", "at the last", "state change at b",
                     "at the last", "state change < 1e-3 from", "Jacobian sigma (loop: mean)"],
        "classes": ["share fixed / cycle / moving at loop", "state change median / 90% / "
                    "max at b", "at the last", "Jacobian sigma at fixed points / elsewhere"],
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
        good, stuck, missing = analysed_runs(data, v)
        if part == "dynamics":
            cells = _row_dynamics(good)
        elif part == "classes":
            cells = _row_classes(good)
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


def _table_hop_seeds(data: dict, variants: list[str]) -> list[str]:
    """One row per analysed run with the hops part, escaped or not: its reading, each form's
    best offset and the share of its scored loops where it names the best-matching j, and
    j*(t) (its accuracy) at every loop up to twice the trained depth."""
    head = ["escaped", "reading", "linear j = t + c: c, loops named", "doubling j = 2^(t + c): "
            "c, loops named", "j*(t) (accuracy) for t = 1..2b"]
    lines = ["| variant | seed | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    found = False
    for v in variants:
        for r in (r for r in data["runs"] if r["variant"] == v and r.get("analysis")
                  and "hops" in r["analysis"]):
            found = True
            h, b = r["analysis"]["hops"], r["analysis"]["trained_depth"]
            forms = [f"{f['offset']:+d}, {f['share']:.0%} of {f['loops']}"
                     if f["offset"] is not None else "-"
                     for f in (h["forms"]["linear"], h["forms"]["doubling"])]
            js = ", ".join(f"{t}: {int(j)} ({a:.2f})" for t, j, a in
                           zip(h["loops"], h["j_star"], h["j_star_accuracy"], strict=True)
                           if t <= 2 * b and j is not None)
            lines.append(f"| {v} | {r['seed']} | "
                         + " | ".join(["no" if r["escape_step"] is None else "yes",
                                       h["reading"], *forms, js]) + " |")
    if not found:
        raise ConfigError(f"no run in the data of {data['study']} has the hops part; run "
                          f"python -m loopformer.analyze study=STUDY_DIR on a token study")
    return lines


def _table_exit_seeds(data: dict, variants: list[str]) -> list[str]:
    """One row per analysed run with the exit part, escaped or not: the rule's held-out
    figures and its verdict against the fixed depths."""
    rules = next(list(r["analysis"]["exit"]["rules"]) for r in data["runs"]
                 if r.get("analysis") and "exit" in r["analysis"])
    head = ["escaped", "fixed depth b", "best fixed depth (chosen on calibration)", "oracle"] + [
        f"rule {n}: tol, held-out error in mean loops, verdict" for n in rules]
    lines = ["| variant | seed | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for v in variants:
        for r in (r for r in data["runs"] if r["variant"] == v and r.get("analysis")
                  and "exit" in r["analysis"]):
            ex, b = r["analysis"]["exit"], r["analysis"]["trained_depth"]
            o = ex["oracle_held_out"]
            cells = ["no" if r["escape_step"] is None else "yes",
                     _band([_at(r["analysis"], "exit", ("fixed_held_out",), b)]),
                     f"{o['best_fixed_error']:.4f} at {o['best_fixed_loop']}",
                     f"{o['oracle_error']:.4f}"]
            for name in rules:
                rule = ex["rules"][name]
                c = rule["chosen"]
                cells.append(rule.get("verdict", NO_THRESHOLD) if c is None else
                             f"{rule['chosen_tol']:g}: {c['error']:.4f} in "
                             f"{c['mean_loops']:.1f}; {rule.get('verdict', '-')}")
            lines.append(f"| {v} | {r['seed']} | " + " | ".join(cells) + " |")
    return lines
