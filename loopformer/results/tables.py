"""The tables of a results page, each rendered from a study's data (:mod:`loopformer.results
.export`) by one rule: ``variants`` (escape rate, median escape step, error over escaped
seeds), ``comparisons`` (exploratory raw p for ``pairs=A:B,C:D``), ``confirmatory`` (the study's
pre-registered family, :mod:`loopformer.results.confirm`),
``runs`` (one row per run), ``meta`` (how the data was made), ``ood`` and ``ood_trend`` (the
out-of-distribution suite per shift); ``analysis`` is :mod:`loopformer.results.analysis_tables`.
"""

from __future__ import annotations

import statistics

from loopformer import exact
from loopformer.errors import ConfigError
from loopformer.formatting import band_of, duration
from loopformer.results import confirm
from loopformer.results.findings import HEADER
from loopformer.stats import fisher_exact, permutation_test, trend_test


def _curve_key(loops: str | None) -> str:
    return "trained" if loops in (None, "trained") else str(loops)


def runs_of(data: dict, variant: str) -> list[dict]:
    runs = [r for r in data["runs"] if r["variant"] == variant]
    if not runs:
        raise ConfigError(f"no runs of variant {variant!r} in the data of {data['study']}; "
                          f"variants: {data['variants']}")
    return runs


def classes(data: dict) -> bool:
    """Whether the study scores accuracy (a classification task) rather than error."""
    return data.get("metric") == "accuracy"


def curves(run: dict) -> dict:
    """A run's evaluated curves per loop count: accuracy per position for a classification
    task, normalised error per number of examples otherwise."""
    return run["accuracy"] if "accuracy" in run else run["error"]


ACCURACY_KEYS = ("accuracy", "accuracy_all", "baselines", "baselines_all")


def for_dataset(data: dict, name: str) -> dict:
    """``dataset=NAME``: a classification study's data with each run's accuracy (and its
    baselines') those of the held-out dataset NAME (``task=openml``: the top level pools
    every held-out dataset)."""
    held_out = sorted({d for r in data["runs"] for d in r.get("datasets", {})})
    if any(name not in r.get("datasets", {}) for r in data["runs"]):
        raise ConfigError(f"dataset={name} is not a held-out dataset of every run of "
                          f"{data['study']}; held out: {held_out or 'none'}")
    return {**data, "runs": [{**r, **{k: r["datasets"][name][k] for k in ACCURACY_KEYS}}
                             for r in data["runs"]]}


def _what(data: dict) -> str:
    return "accuracy" if classes(data) else "error"


def _errors(runs: list[dict], k: int, loops: str | None) -> list[float]:
    key = _curve_key(loops)
    missing = [r["seed"] for r in runs if key not in curves(r)]
    if missing:
        raise ConfigError(f"loops={loops} is not among the evaluated loop counts of seeds "
                          f"{missing}; have {sorted(curves(runs[0]))}")
    return [curves(r)[key][k] for r in runs if r["escape_step"] is not None]


def _resolution(data: dict) -> str:
    every = sorted({r["test_every_n_steps"] for r in data["runs"] if r["test_every_n_steps"]})
    return f"test every {', '.join(map(str, every))} steps" if every else "the test interval"


def _rule(data: dict) -> str:
    e, n = data["escape"], data["n_points"] - 1
    if classes(data):
        return (f"Escaped: the fixed test set's accuracy at the last position {n} "
                f"({e['metric']}) is above {e['threshold']} from some test step to the end "
                f"(chance {data.get('chance', float('nan')):.3g}); escape step: the first "
                f"such step (resolution: {_resolution(data)}). Columns k: positions.")
    return (f"Escaped: the fixed test set's error at {n} examples ({e['metric']}) is below "
            f"{e['threshold']} from some test step to the end; escape step: the first such "
            f"step (resolution: {_resolution(data)}).")


def _loops_label(data: dict, loops: str | None) -> str:
    if loops in (None, "trained"):
        b = sorted({r["trained_loops"] for r in data["runs"] if r["trained_loops"]})
        return f"at the trained loop count (b = {', '.join(map(str, b))})" if b else ""
    return f"at {loops} loops"


def _examples(data: dict, opts: dict) -> list[int]:
    ks = [int(k) for k in opts["k"].split(",")] if "k" in opts else data["examples"]
    return [k for k in ks if k < data["n_points"]] or [data["n_points"] - 1]


def table_variants(data: dict, opts: dict) -> list[str]:
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    ks, loops = _examples(data, opts), opts.get("loops")
    last = ks[-1]
    lines = [_rule(data) + f" {'Accuracy' if classes(data) else 'Errors'} "
             f"{_loops_label(data, loops)}: mean "
             f"[min, max] over the escaped seeds; the others are listed apart, at k={last}.", "",
             "| variant | escaped | median escape step | " + " | ".join(f"k={k}" for k in ks)
             + f" | not escaped: k={last} |", "|---|---|---|" + "---|" * (len(ks) + 1)]
    for v in variants:
        runs = runs_of(data, v)
        steps = [r["escape_step"] for r in runs if r["escape_step"] is not None]
        med = f"{statistics.median(steps):g}" if steps else "-"
        cells = [band_of(_errors(runs, k, loops)) for k in ks]  # checks the loop count first
        key = _curve_key(loops)
        stuck = ", ".join(f"{r['seed']}: {curves(r)[key][last]:.4f}" for r in runs
                          if r["escape_step"] is None) or "-"
        lines.append(f"| {v} | {len(steps)}/{len(runs)} | {med} | " + " | ".join(cells)
                     + f" | {stuck} |")
    return lines + _baseline_rows(data, variants, ks)


def _baseline_rows(data: dict, variants: list[str], ks: list[int]) -> list[str]:
    """A classification study's baselines (fitted per prompt on each run's evaluation
    prompts): their accuracy at each k, mean [min, max] over every run of the variants (one
    value where all runs drew the same prompts)."""
    every = [r for v in variants for r in runs_of(data, v)]
    names = list(every[0].get("baselines", {}))
    return [f"| {b} (baseline) | - | - | "
            + " | ".join(band_of([r["baselines"][b][k] for r in every
                                  if r["baselines"].get(b, [None] * (k + 1))[k] is not None],
                                 collapse=True) for k in ks) + " | - |" for b in names]


def _pairs(opts: dict, kind: str) -> list[tuple[str, str]]:
    """``pairs=A:B,C:D`` -> [(A, B), (C, D)]."""
    out = []
    for pair in opts["pairs"].split(","):
        a, sep, b = pair.partition(":")
        if not sep:
            raise ConfigError(f"table:{kind} pairs entry {pair!r} is not A:B")
        out.append((a, b))
    return out


EXPLORATORY = ("Exploratory: these comparisons are not in the study's pre-registered family "
               "(table:confirmatory); each gives its raw p only and decides nothing.")


def raw_p(p: float) -> str:
    """A raw p as pages quote it: three significant digits up to 0.05, two decimals above."""
    return f"p = {p:.3g}" if p <= 0.05 else f"p = {p:.2f}"


def _mean_p(ea: list[float], eb: list[float]) -> str:
    """The raw two-sided p of the permutation test of the difference of means, or why none."""
    if not ea or not eb:
        return "no values"
    return f"{raw_p(permutation_test(ea, eb))} (n = {len(ea)} vs {len(eb)})"


def table_comparisons(data: dict, opts: dict) -> list[str]:
    """Exploratory pairs of variants, raw p only: escape rates (Fisher's exact test), then
    ``of=error`` (default: the error at k over the escaped seeds, a secondary view beside the
    confirmatory family's all-seed tests) or ``of=escape_step`` (the escape step over the escaped
    seeds, read on the test grid), each by an exact permutation test of the difference of
    means."""
    if "pairs" not in opts:
        raise ConfigError("table:comparisons needs pairs=A:B[,C:D...] (variants of the data)")
    of = opts.get("of", "error")
    if of not in ("error", "escape_step"):
        raise ConfigError(f"table:comparisons of={of} is not one of: error, escape_step")
    k, loops = _examples(data, opts)[-1], opts.get("loops")
    if of == "error":  # accuracy, for a classification study
        what, col = (f"the {_what(data)} at k={k} {_loops_label(data, loops)}",
                     f"{_what(data)} at k={k} (A vs B)")
    else:
        what, col = (f"the escape step ({_resolution(data)})", "mean escape step (A vs B)")
    lines = [f"{EXPLORATORY} Escape rates: two-sided Fisher's exact test; {what}, over escaped "
             f"seeds only: two-sided exact permutation test of the difference of means (Monte "
             f"Carlo above 100,000 splits)."
             + (" Variants named STUDY/variant are that study's runs (option with=), trained "
                "with its own recipe and budget." if "with" in opts else ""),
             "",
             f"| A vs B | escaped | escape rate: raw p | {col} | "
             f"{_what(data) if of == 'error' else 'escape step'}: raw p |",
             "|---|---|---|---|---|"]
    for a, b in _pairs(opts, "comparisons"):
        ra, rb = runs_of(data, a), runs_of(data, b)
        ka = sum(r["escape_step"] is not None for r in ra)
        kb = sum(r["escape_step"] is not None for r in rb)
        if of == "error":
            ea, eb = _errors(ra, k, loops), _errors(rb, k, loops)
            fmt = "{:.4f}"
        else:
            ea, eb = ([float(r["escape_step"]) for r in rs if r["escape_step"] is not None]
                      for rs in (ra, rb))
            fmt = "{:.0f}"
        means = " vs ".join(fmt.format(statistics.fmean(e)) if e else "-" for e in (ea, eb))
        lines.append(f"| {a} vs {b} | {ka}/{len(ra)} vs {kb}/{len(rb)} | "
                     f"{raw_p(fisher_exact(ka, len(ra), kb, len(rb)))} | {means} | "
                     f"{_mean_p(ea, eb)} |")
    return lines


def table_runs(data: dict, opts: dict) -> list[str]:
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    ks, loops = _examples(data, opts), opts.get("loops")
    key = _curve_key(loops)
    what = _what(data)
    where = (f"the last position {data['n_points'] - 1}" if classes(data)
             else f"{data['n_points'] - 1} examples")
    lines = [f"Per run: the escape step, the fixed test set's {what} at {where} at the last "
             f"test step, and the evaluation's {what} {_loops_label(data, loops)}.", "",
             f"| variant | seed | torch | escape step | test {what} (last step) | "
             + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|---|---|---|" + "---|" * len(ks)]
    for v in variants:
        for r in runs_of(data, v):
            step = r["escape_step"] if r["escape_step"] is not None else "not escaped"
            test_last = r["test"]["accuracy_last" if classes(data) else "error_last"][-1]
            lines.append(f"| {v} | {r['seed']} | {r['torch'] or '-'} | {step} | "
                         f"{test_last:.4f} (step {r['test']['step'][-1]}) | "
                         + " | ".join(f"{curves(r)[key][k]:.4f}" for k in ks) + " |")
    return lines


def table_dial(data: dict, opts: dict) -> list[str]:
    """The depth dial per variant: accuracy at the last position at each scored dial value
    (``values=1,4,16``; default the first, the trained one and its multiples), at the loops
    rule's b(p) where the run has a rule and at the fixed, trained depth: mean [min, max] over
    every trained seed."""
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    every = [r for v in variants for r in runs_of(data, v)]
    if not all(r.get("dial") for r in every):
        raise ConfigError(f"table:dial: runs of {data['study']} without a dial block; "
                          f"evaluate them with eval.dial.factor=F")
    d0 = every[0]["dial"]
    if "values" in opts:
        values = [int(v) for v in opts["values"].split(",")]
    else:
        values = sorted({d0["values"][0]} | {m * d0["trained"] for m in range(1, 5)})
    values = [v for v in values if v in d0["values"]]
    idx = [d0["values"].index(v) for v in values]
    lengths = ", ".join(f"{v}: {d0['lengths'][i]}" for v, i in zip(values, idx, strict=True))
    lines = [f"Accuracy at the last position per {d0['of']} (trained: {d0['trained']}; prompt "
             f"lengths {lengths} tokens), mean [min, max] over all trained seeds (escaped or "
             f"not): at the rule's loop count b(p) ({d0['rule']}) and at the fixed trained "
             f"depth (loops b, or the model's n_layer).", "",
             "| variant | depth | " + " | ".join(f"{d0['of']}={v}" for v in values) + " |",
             "|---|---|" + "---|" * len(values)]
    for v in variants:
        runs = runs_of(data, v)
        rows = [("fixed", "at_fixed", f"fixed ({runs[0]['dial']['fixed_loops']})")]
        if all(r["dial"]["at_rule"] is not None for r in runs):
            rows.insert(0, ("rule", "at_rule", "rule b(p)"))
        for _, key, label in rows:
            cells = [band_of([r["dial"][key][i] for r in runs]) for i in idx]
            lines.append(f"| {v} | {label} | " + " | ".join(cells) + " |")
    return lines


def factor_key(run: dict, factor: str) -> str | None:
    """The error key of ``factor`` x the run's trained loop count (``1``: the trained one)."""
    if factor == "1":
        return "trained"
    b = run["trained_loops"]
    return str(int(factor) * b) if b else None


def table_ood(data: dict, opts: dict) -> list[str]:
    """Shifts (rows) x variant and loop count (columns): the error at the shift's summary
    position, mean [min, max] over the escaped seeds; then the baselines (one run's: every
    run of a study draws the same prompts)."""
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    factors = opts.get("loops", "1").split(",")
    if any(not f.isdigit() or int(f) < 1 for f in factors):
        raise ConfigError(f"table:ood loops={opts['loops']} must list multiples of the trained "
                          f"loop count b (1, 5, 20, ...)")
    runs = {v: [r for r in runs_of(data, v) if r["escape_step"] is not None] for v in variants}
    every = [r for v in variants for r in runs_of(data, v)]
    if not all(r.get("ood") for r in every):
        raise ConfigError(f"table:ood: runs of {data['study']} without an out-of-distribution "
                          f"block; evaluate them with eval.ood=default")
    shifts = list(every[0]["ood"])
    baselines = [b for b in opts["baselines"].split(",")] if "baselines" in opts else sorted(
        {b for s in shifts for b in every[0]["ood"][s]["baselines"]})
    cols = [(v, f) for v in variants for f in factors
            if any(factor_key(r, f) in r["ood"][shifts[0]]["error"] for r in runs_of(data, v))]
    label = {"1": "b"}
    d = data["active_dims"]
    lines = [f"Normalised error at k = 2d = {2 * d} examples (* the shift's last scored k), at b, "
             f"5b, ... loops (b: the trained loop count): mean [min, max] over the seeds that "
             f"escaped the plateau (escaped/all in brackets after the variant); the baselines "
             f"on the same prompts.", "",
             "| shift | k | " + " | ".join(f"{v} ({len(runs[v])}/{len(runs_of(data, v))}) "
                                          f"@{label.get(f, f + 'b')}" for v, f in cols)
             + "".join(f" | {b}" for b in baselines) + " |",
             "|---|---|" + "---|" * (len(cols) + len(baselines))]
    for shift in shifts:
        k = every[0]["ood"][shift]["k"]
        cells = [band_of([r["ood"][shift]["error"][factor_key(r, f)] for r in runs[v]
                        if factor_key(r, f) in r["ood"][shift]["error"]]) for v, f in cols]
        base = [every[0]["ood"][shift]["baselines"].get(b) for b in baselines]
        lines.append(f"| {shift} | {k}{'' if k == 2 * d else '*'} | " + " | ".join(cells)
                     + "".join(f" | {x:.4f}" if x is not None else " | -" for x in base)
                     + " |")
    return lines


def table_ood_trend(data: dict, opts: dict) -> list[str]:
    """Shifts (rows) x pairs of variants (columns), exploratory: the error at the shift's summary
    position at ``loops`` x b (default b), mean over the escaped seeds of A and of B, and the raw
    p of the permutation test of their difference; with ``trend``, Spearman's rho over the
    ordered variants and its raw permutation p."""
    if "pairs" not in opts and "trend" not in opts:
        raise ConfigError("table:ood_trend needs pairs=A:B[,C:D...] and/or trend=A,B,C... "
                          "(variants of the data)")
    factor = opts.get("loops", "1")
    if not factor.isdigit() or int(factor) < 1:
        raise ConfigError(f"table:ood_trend loops={factor} must be one multiple of the trained "
                          f"loop count b (1, 5, 20, ...)")
    pairs = _pairs(opts, "ood_trend") if "pairs" in opts else []
    trend = opts["trend"].split(",") if "trend" in opts else []
    names = list(dict.fromkeys([*(v for pair in pairs for v in pair), *trend]))
    runs = {v: [r for r in runs_of(data, v) if r["escape_step"] is not None] for v in names}
    every = [r for v in names for r in runs_of(data, v)]
    if not all(r.get("ood") for r in every):
        raise ConfigError(f"table:ood_trend: runs of {data['study']} without an "
                          f"out-of-distribution block; evaluate them with eval.ood=default")

    def errors(v: str, shift: str) -> list[float]:
        return [r["ood"][shift]["error"][factor_key(r, factor)] for r in runs[v]
                if factor_key(r, factor) in r["ood"][shift]["error"]]

    lines = [f"Error at the shift's summary k {'at b' if factor == '1' else f'at {factor}b'} "
             f"loops, mean over the escaped seeds, A -> B, with the raw p of the two-sided exact "
             f"permutation test of the difference of means. {EXPLORATORY}"
             + (f" Trend: Spearman's rho between the order {', '.join(trend)} and the error "
                f"over every escaped seed, with its two-sided permutation p-value "
                f"(loopformer.stats.trend_test)." if trend else ""),
             "", "| shift | " + " | ".join(
                 [f"{a} ({len(runs[a])}) -> {b} ({len(runs[b])})" for a, b in pairs]
                 + ([f"trend over {', '.join(f'{v} ({len(runs[v])})' for v in trend)}"]
                    if trend else [])) + " |",
             "|---|" + "---|" * (len(pairs) + bool(trend))]
    for shift in every[0]["ood"]:
        cells = [_pair_cell(errors(a, shift), errors(b, shift)) for a, b in pairs]
        if trend:
            cells.append(_trend_cell([errors(v, shift) for v in trend]))
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return lines


def _pair_cell(ea: list[float], eb: list[float]) -> str:
    """``mean A -> mean B (raw p)``."""
    if not ea or not eb:
        return "-"
    return (f"{statistics.fmean(ea):.4f} -> {statistics.fmean(eb):.4f} "
            f"({raw_p(permutation_test(ea, eb))})")


def _trend_cell(groups: list[list[float]]) -> str:
    """Spearman's rho of the error over the order of the groups, and its raw p."""
    if sum(bool(g) for g in groups) < 2:
        return "-"
    rho, p = trend_test(groups)
    return f"rho = {rho:.2f} ({raw_p(p)})"


def _runs_line(data: dict) -> str:
    """``N (V variants x seeds a, b, c)``, naming the variants that have other seeds."""
    seeds = {v: sorted(r["seed"] for r in data["runs"] if r["variant"] == v)
             for v in data["variants"]}
    line = (f"{len(data['runs'])} ({len(data['variants'])} variants x seeds "
            f"{', '.join(map(str, data['seeds']))}")
    other = [f"{v}: {', '.join(map(str, s))}" for v, s in seeds.items() if s != data["seeds"]]
    return line + (f"; except {'; '.join(other)})" if other else ")")


def table_meta(data: dict, opts: dict) -> list[str]:
    m = data["meta"]
    mach = m.get("machine") or {}
    machine = ", ".join(str(x) for x in (mach.get("cpu"), f"{mach.get('cores')} cores",
                                          mach.get("gpu")) if x)
    wall = m.get("wall_time_s")
    wall = (f"{duration(wall)} ({m.get('wall_time_source')})" if wall is not None
            else "not recorded")
    torches = sorted({r["torch"] for r in data["runs"] if r["torch"]})
    rows = [("command", f"`{m.get('command')}`"), ("commit", f"`{m.get('commit')}`"),
            ("machine", machine or "-"),
            ("torch", ", ".join(torches) or f"{m.get('torch')} (at aggregation)"),
            ("lightning", m.get("lightning")), ("date", m.get("date")), ("wall time", wall),
            ("runs", _runs_line(data))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


MEASURE_LABELS = {"escape_rate": "escape rate", "final_error": "error at k={k}",
                  "test_error": "test error at step {step} (k={k})",
                  "test_area": "test-curve area to step {step} (k={k})",
                  "final_accuracy": "accuracy at position k={k}",
                  "test_accuracy": "test accuracy at step {step} (k={k})",
                  "dial_accuracy": "accuracy at the last position at dial value {k} (rule's "
                                   "b(p), else the fixed depth)"}


def _measure(c, data: dict) -> str:
    if c.measure == "dial_accuracy":
        dial = next((r["dial"] for r in data["runs"] if r.get("dial")), None)
        k = c.k if c.k is not None else (dial["values"][-1] if dial else "largest")
        return MEASURE_LABELS[c.measure].format(k=f"{dial['of']}={k}" if dial else k)
    final = c.measure in ("final_error", "final_accuracy")
    k = c.k if c.k is not None else (max(data["examples"], default=data["n_points"] - 1)
                                     if final else data["n_points"] - 1)
    return MEASURE_LABELS[c.measure].format(k=k, step=c.step if c.step is not None else "last")


def _design(c) -> str:
    if c.margin is not None:
        return f"{c.design}, TOST +-{c.margin:g}"
    return f"{c.design}, " + {"two-sided": "two-sided", "greater": "a > b", "less": "a < b"}[
        c.side]


def _confirmatory_rule(data: dict, rows: list) -> str:
    fam = confirm.family(data)
    m, alpha = len(rows), fam.alpha
    best = exact.best_threshold(m, fam.correction, alpha)
    return (
        f"Confirmatory family: the {m} comparisons of the study's YAML (`comparisons:`; the "
        f"page says when they were stated), over every trained seed (escaped or not). "
        f"Correction: {fam.correction} at "
        f"alpha = {alpha} (adjusted p <= {alpha} rejects; Holm: step-down, the i-th smallest "
        f"raw p held to {alpha}/(m - i + 1)). Tests: escape rates by exact McNemar (paired) or "
        f"Fisher's exact test (unpaired); errors by the exact sign-flip test of the per-seed "
        f"differences a - b (paired; effect: their mean) or the exact Wilcoxon-Mann-Whitney "
        f"test (unpaired; effect: the Hodges-Lehmann shift of a over b); test-curve area: "
        f"the fixed test set's {_what(data)} at the last position averaged over the test steps "
        f"(trapezoids). Intervals: the shifts (McNemar: a's share of the discordant seeds; "
        f"Fisher: the conditional odds ratio) that the row's own exact test does not reject at "
        f"its threshold (TOST rows: the two-sided interval at twice it). Floor: the smallest p "
        f"the row's design can reach whatever the data (in brackets: the other design's, paired "
        f"or unpaired, with the same seeds). Verdicts: \"holds: a < b\" (or >) - "
        f"the family rejects no difference (two-sided rows) or the claimed direction's null "
        f"(one-sided rows) at the adjusted level; \"does not hold\" - a one-sided row whose "
        f"opposite one-sided p is <= {alpha}/{m} (Bonferroni); \"comparable (TOST, margin "
        f"m)\" - both one-sided tests against -m and +m reject at the adjusted level; \"cannot "
        f"be resolved\" - the floor is above the best threshold the row can be held to "
        f"({best:.3g}); \"not resolved\" - otherwise, with the seeds per variant that give "
        f"power {exact.POWER} at the row's threshold in studies simulated by resampling the "
        f"observed per-seed values (differences when paired).")


def _floor_cell(r) -> str:
    other = {"paired": "unpaired", "unpaired": "paired"}[r.comparison.design]
    return f"{r.floor:.3g}" + (f" ({other}: {r.other_floor:.3g})" if r.other_floor is not None
                               else "")


def table_confirmatory(data: dict, opts: dict) -> list[str]:
    """One row per pre-registered comparison, in the YAML's order
    (:func:`loopformer.results.confirm.evaluate`)."""
    rows = confirm.evaluate(data)
    lines = [_confirmatory_rule(data, rows), "",
             HEADER, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.comparison
        lines.append(f"| {c.id} | {c.claim or '-'} | {c.a} vs {c.b} | {_measure(c, data)} | "
                     f"{_design(c)} | {r.n_a} vs {r.n_b} | {_floor_cell(r)} | {r.effect} | "
                     f"{r.p:.3g} | {r.adjusted:.3g} | {r.verdict} |")
    return lines
