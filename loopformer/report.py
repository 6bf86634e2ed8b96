"""A study's data and the tables of its results page, rebuilt from that data by one rule.

``python -m loopformer.report export STUDY_DIR`` writes ``docs/results/data/<study>.json``: per
run its variant, seed, torch version, the final error at each number of examples and loop count
(the evaluation's mean over prompts), the fixed test set's curve and the step of escape, with
the study's command, commit, machine, versions, date and wall time. ``python -m
loopformer.report tables PAGE.md [--check]`` rebuilds every table between markers

    <!-- table:KIND data=NAME [option=value ...] -->
    ...
    <!-- /table:KIND -->

from ``data/NAME.json`` beside the page (``--check``: exit 1 if the page differs instead).
Kinds: ``variants`` (escape rate, median escape step, error over escaped seeds), ``comparisons``
(verdicts of :mod:`loopformer.stats`'s rules for ``pairs=A:B,C:D``), ``runs`` (one row per
run), ``meta`` (how the data was made), ``ood`` and ``ood_trend`` (the out-of-distribution
suite per shift) and ``analysis`` (:mod:`loopformer.analyze.tables`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from loopformer.analyze import tables as analysis_tables
from loopformer.csvlog import read_metrics
from loopformer.errors import ConfigError
from loopformer.rundir import RunDir
from loopformer.stats import (
    ALPHA,
    ESCAPE_THRESHOLD,
    POWER,
    compare_means,
    compare_rates,
    escape_step,
    min_exact_n,
    trend_test,
)

if TYPE_CHECKING:  # the study module (plots, lightning) is imported only to export
    from loopformer.study import Study

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "docs" / "results" / "data"
FORMAT = 1


def _g(x: float) -> float:
    return float(f"{x:.6g}")  # 6 significant digits: pages print 4 decimals


def _run_record(variant: str, seed: int, run: RunDir, threshold: float) -> dict | None:
    if not run.results.is_file():
        return None
    res = json.loads(run.results.read_text())
    error = {}
    for key, c in res["curves"].items():
        if key == "model" or key.startswith("model@"):  # the model's curves, at each loop count
            error["trained" if key == "model" else key.removeprefix("model@")] = [
                _g(v) for v in c["mean"]]
    last = f"test/error_pos/{res['n_points'] - 1:03d}"  # the most in-context examples
    rows = [r for r in read_metrics(run.metrics) if last in r] if run.metrics.is_file() else []
    if not rows:
        raise ConfigError(f"{run.metrics} has no fixed-test-set curve ({last}); the escape "
                          f"is read from it: train with test.every_n_steps > 0")
    steps = [int(r["step"]) for r in rows]
    errors = [_g(r[last]) for r in rows]
    cfg = OmegaConf.load(run.config) if run.config.is_file() else None
    record = {"variant": variant, "seed": seed, "torch": res.get("torch"),
            "parameters": res.get("parameters"), "trained_loops": res.get("trained_loops"),
            "error": error,
            "test": {"step": steps, "error_last": errors,
                     "error_mean": [_g(r["test/error"]) for r in rows]},
            "test_every_n_steps": int(cfg.test.every_n_steps) if cfg else None,
            "escape_step": escape_step(steps, errors, threshold)}
    if res.get("ood"):
        record["ood"] = _ood_record(res["ood"])
    analysis = run.root / "analysis" / "analysis.json"
    if analysis.is_file():
        record["analysis"] = analysis_tables.record(json.loads(analysis.read_text()))
    return record


def _ood_record(ood: dict) -> dict:
    """Per shift of the out-of-distribution suite: its summary position ``k`` (2d, or the
    last scored one), normaliser, and the error there of the model at each loop count and of
    each baseline."""
    out = {}
    for shift, block in ood.items():
        k = block["summary_k"]
        model, baselines = {}, {}
        for key, c in block["curves"].items():
            if c["kind"] == "model":
                model["trained" if key == "model" else key.removeprefix("model@")] = \
                    _g(c["mean"][k])
            else:
                baselines[key] = _g(c["mean"][k])
        out[shift] = {"k": k, "normalizer": _g(block["normalizer"]), "error": model,
                      "baselines": baselines}
    return out


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "gpu": gpu}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty",
                              "--abbrev=7"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment(study: Study) -> dict:
    """Where and with what this process runs: the study's metadata when it runs in the
    process that trained it (``sweep.py``)."""
    import lightning
    import torch

    argv = sys.argv if sys.argv and sys.argv[0].endswith("sweep.py") else None
    return {"command": ("python sweep.py " + " ".join(argv[1:])).strip() if argv
            else f"python sweep.py study={study.name}",
            "commit": _commit(), "machine": _machine(), "torch": torch.__version__,
            "lightning": lightning.__version__, "date": datetime.date.today().isoformat()}


def _span(runs: list[RunDir]) -> float | None:
    """Seconds from the first run's config.yaml to the last results.json (file times): the
    study's wall time if it ran in one go."""
    starts = [r.config.stat().st_mtime for r in runs if r.config.is_file()]
    ends = [r.results.stat().st_mtime for r in runs if r.results.is_file()]
    return round(max(ends) - min(starts), 1) if starts and ends else None


def study_data(study: Study, study_dir: Path, threshold: float = ESCAPE_THRESHOLD,
               meta: dict | None = None) -> dict:
    """The data of a study's finished runs (see the module's docstring)."""
    from loopformer.study import plan

    jobs = plan(study, study_dir)
    runs = [r for j in jobs if (r := _run_record(j.variant, j.seed, RunDir(j.run_dir),
                                                 threshold))]
    if not runs:
        raise ConfigError(f"no finished runs under {study_dir / 'runs'}; run the study first")
    first = json.loads(RunDir(next(j.run_dir for j in jobs if j.finished)).results.read_text())
    meta = dict(meta or environment(study))
    meta.setdefault("wall_time_s", _span([RunDir(j.run_dir) for j in jobs]))
    meta.setdefault("wall_time_source", "file times: first run started to last run evaluated")
    config = {k: getattr(study, k) for k in ("name", "base", "variants", "seeds", "examples")}
    return {"format": FORMAT, "study": study.name, "config": config, "task": first["task"],
            "active_dims": first["active_dims"], "n_points": first["n_points"],
            "n_prompts": first["n_prompts"], "examples": list(study.examples),
            "variants": [v for v in study.variants if any(r["variant"] == v for r in runs)],
            "seeds": sorted({r["seed"] for r in runs}),
            "escape": {"threshold": threshold,
                       "metric": f"test/error_pos/{first['n_points'] - 1:03d}"},
            "meta": meta, "runs": runs}


def write_study_data(study: Study, study_dir: Path) -> Path | None:
    """``STUDY_DIR/data.json``, written when the study is aggregated (its metadata are the
    sweep's own: command, commit, machine, versions). A study whose runs have no fixed-test-set
    curve gets its report without it, and a warning."""
    try:
        data = study_data(study, study_dir)
    except ConfigError as e:
        log.warning("no %s: %s", study_dir / "data.json", e)
        return None
    path = study_dir / "data.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def export(study_dir: Path, out: Path | None = None, name: str | None = None,
           threshold: float = ESCAPE_THRESHOLD, overrides: dict | None = None) -> Path:
    """Rebuild a study's data from its runs into ``out`` (default ``docs/results/data/<study>
    .json``). The study's definition and metadata come from ``STUDY_DIR/data.json`` (written
    by the sweep) if there is one, else from ``conf/study/<name>.yaml`` (``name``, default the
    directory's name) and this process; ``overrides`` (command, commit, wall_time_s) replace
    the metadata."""
    from loopformer.study import Study, load_study

    previous = study_dir / "data.json"
    previous = json.loads(previous.read_text()) if previous.is_file() else None
    if previous and not name:
        study = Study.from_config(OmegaConf.create(previous["config"]))
    else:
        name = name or study_dir.resolve().name
        if not (ROOT / "conf" / "study" / f"{name}.yaml").is_file():
            raise ConfigError(f"no study config conf/study/{name}.yaml and no "
                              f"{study_dir / 'data.json'}; pass --study NAME of a "
                              f"conf/study/*.yaml")
        study = load_study(name)
    meta = previous["meta"] if previous else None
    data = study_data(study, study_dir, threshold, meta)
    data["meta"].update({k: v for k, v in (overrides or {}).items()
                         if v is not None and k != "wall_time_source"})
    if (overrides or {}).get("wall_time_s") is not None:
        data["meta"]["wall_time_source"] = (overrides or {}).get("wall_time_source") \
            or "stated at export"
    out = out or DATA_DIR / f"{study.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    return out


# --- tables -----------------------------------------------------------------------------------

def _band(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def _curve_key(loops: str | None) -> str:
    return "trained" if loops in (None, "trained") else str(loops)


def _runs_of(data: dict, variant: str) -> list[dict]:
    runs = [r for r in data["runs"] if r["variant"] == variant]
    if not runs:
        raise ConfigError(f"no runs of variant {variant!r} in the data of {data['study']}; "
                          f"variants: {data['variants']}")
    return runs


def _errors(runs: list[dict], k: int, loops: str | None) -> list[float]:
    key = _curve_key(loops)
    missing = [r["seed"] for r in runs if key not in r["error"]]
    if missing:
        raise ConfigError(f"loops={loops} is not among the evaluated loop counts of seeds "
                          f"{missing}; have {sorted(runs[0]['error'])}")
    return [r["error"][key][k] for r in runs if r["escape_step"] is not None]


def _resolution(data: dict) -> str:
    every = sorted({r["test_every_n_steps"] for r in data["runs"] if r["test_every_n_steps"]})
    return f"test every {', '.join(map(str, every))} steps" if every else "the test interval"


def _rule(data: dict) -> str:
    e, n = data["escape"], data["n_points"] - 1
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
    lines = [_rule(data) + f" Errors {_loops_label(data, loops)}: mean [min, max] over the "
             f"escaped seeds; the others are listed apart, at k={last}.", "",
             "| variant | escaped | median escape step | " + " | ".join(f"k={k}" for k in ks)
             + f" | not escaped: k={last} |", "|---|---|---|" + "---|" * (len(ks) + 1)]
    for v in variants:
        runs = _runs_of(data, v)
        steps = [r["escape_step"] for r in runs if r["escape_step"] is not None]
        med = f"{statistics.median(steps):g}" if steps else "-"
        cells = [_band(_errors(runs, k, loops)) for k in ks]  # checks the loop count first
        key = _curve_key(loops)
        stuck = ", ".join(f"{r['seed']}: {r['error'][key][last]:.4f}" for r in runs
                          if r["escape_step"] is None) or "-"
        lines.append(f"| {v} | {len(steps)}/{len(runs)} | {med} | " + " | ".join(cells)
                     + f" | {stuck} |")
    return lines


def _pairs(opts: dict, kind: str) -> list[tuple[str, str]]:
    """``pairs=A:B,C:D`` -> [(A, B), (C, D)]."""
    out = []
    for pair in opts["pairs"].split(","):
        a, sep, b = pair.partition(":")
        if not sep:
            raise ConfigError(f"table:{kind} pairs entry {pair!r} is not A:B")
        out.append((a, b))
    return out


def table_comparisons(data: dict, opts: dict) -> list[str]:
    """Pairs of variants by the rules: escape rates (Fisher's exact test), then ``of=error``
    (default: the error at k over the escaped seeds) or ``of=escape_step`` (the escape step over
    the escaped seeds), each by an exact permutation test of the difference of means."""
    if "pairs" not in opts:
        raise ConfigError("table:comparisons needs pairs=A:B[,C:D...] (variants of the data)")
    of = opts.get("of", "error")
    if of not in ("error", "escape_step"):
        raise ConfigError(f"table:comparisons of={of} is not one of: error, escape_step")
    k, loops = _examples(data, opts)[-1], opts.get("loops")
    if of == "error":
        what, col = (f"the error at k={k} {_loops_label(data, loops)}",
                     f"error at k={k} (A vs B)")
    else:
        what, col = (f"the escape step ({_resolution(data)})", "mean escape step (A vs B)")
    lines = [f"Rules (two-sided, {ALPHA}): escape rates by Fisher's exact test; {what}, over "
             f"escaped seeds only, by an exact permutation test of the difference of means "
             f"(Monte Carlo above 100,000 splits). Seeds needed: normal approximation at power "
             f"{POWER} with the observed spread, at least the {min_exact_n()} per variant an "
             f"exact test needs to reach {ALPHA}."
             + (" Variants named STUDY/variant are that study's runs (option with=), trained "
                "with its own recipe and budget." if "with" in opts else ""),
             "",
             f"| A vs B | escaped | escape rate | {col} | {of.replace('_', ' ')} |",
             "|---|---|---|---|---|"]
    for a, b in _pairs(opts, "comparisons"):
        ra, rb = _runs_of(data, a), _runs_of(data, b)
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
                     f"{compare_rates(a, ka, len(ra), b, kb, len(rb)).text} | {means} | "
                     f"{compare_means(a, ea, b, eb).text} |")
    return lines


def table_runs(data: dict, opts: dict) -> list[str]:
    variants = opts["variants"].split(",") if "variants" in opts else data["variants"]
    ks, loops = _examples(data, opts), opts.get("loops")
    key = _curve_key(loops)
    lines = [f"Per run: the escape step, the fixed test set's error at {data['n_points'] - 1} "
             f"examples at the last test step, and the evaluation's error "
             f"{_loops_label(data, loops)}.", "",
             "| variant | seed | torch | escape step | test error (last step) | "
             + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|---|---|---|" + "---|" * len(ks)]
    for v in variants:
        for r in _runs_of(data, v):
            step = r["escape_step"] if r["escape_step"] is not None else "not escaped"
            lines.append(f"| {v} | {r['seed']} | {r['torch'] or '-'} | {step} | "
                         f"{r['test']['error_last'][-1]:.4f} (step {r['test']['step'][-1]}) | "
                         + " | ".join(f"{r['error'][key][k]:.4f}" for k in ks) + " |")
    return lines


def _factor_key(run: dict, factor: str) -> str | None:
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
    runs = {v: [r for r in _runs_of(data, v) if r["escape_step"] is not None] for v in variants}
    every = [r for v in variants for r in _runs_of(data, v)]
    if not all(r.get("ood") for r in every):
        raise ConfigError(f"table:ood: runs of {data['study']} without an out-of-distribution "
                          f"block; evaluate them with eval.ood=default")
    shifts = list(every[0]["ood"])
    baselines = [b for b in opts["baselines"].split(",")] if "baselines" in opts else sorted(
        {b for s in shifts for b in every[0]["ood"][s]["baselines"]})
    cols = [(v, f) for v in variants for f in factors
            if any(_factor_key(r, f) in r["ood"][shifts[0]]["error"] for r in _runs_of(data, v))]
    label = {"1": "b"}
    d = data["active_dims"]
    lines = [f"Normalised error at k = 2d = {2 * d} examples (* the shift's last scored k), at b, "
             f"5b, ... loops (b: the trained loop count): mean [min, max] over the seeds that "
             f"escaped the plateau (escaped/all in brackets after the variant); the baselines "
             f"on the same prompts.", "",
             "| shift | k | " + " | ".join(f"{v} ({len(runs[v])}/{len(_runs_of(data, v))}) "
                                          f"@{label.get(f, f + 'b')}" for v, f in cols)
             + "".join(f" | {b}" for b in baselines) + " |",
             "|---|---|" + "---|" * (len(cols) + len(baselines))]
    for shift in shifts:
        k = every[0]["ood"][shift]["k"]
        cells = [_band([r["ood"][shift]["error"][_factor_key(r, f)] for r in runs[v]
                        if _factor_key(r, f) in r["ood"][shift]["error"]]) for v, f in cols]
        base = [every[0]["ood"][shift]["baselines"].get(b) for b in baselines]
        lines.append(f"| {shift} | {k}{'' if k == 2 * d else '*'} | " + " | ".join(cells)
                     + "".join(f" | {x:.4f}" if x is not None else " | -" for x in base)
                     + " |")
    return lines


def table_ood_trend(data: dict, opts: dict) -> list[str]:
    """Shifts (rows) x pairs of variants (columns): the error at the shift's summary position
    at ``loops`` x b (default b), mean over the escaped seeds of A and of B, and the verdict of
    the rule for errors (:func:`loopformer.stats.compare_means`) on their difference."""
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
    runs = {v: [r for r in _runs_of(data, v) if r["escape_step"] is not None] for v in names}
    every = [r for v in names for r in _runs_of(data, v)]
    if not all(r.get("ood") for r in every):
        raise ConfigError(f"table:ood_trend: runs of {data['study']} without an "
                          f"out-of-distribution block; evaluate them with eval.ood=default")

    def errors(v: str, shift: str) -> list[float]:
        return [r["ood"][shift]["error"][_factor_key(r, factor)] for r in runs[v]
                if _factor_key(r, factor) in r["ood"][shift]["error"]]

    lines = [f"Error at the shift's summary k {'at b' if factor == '1' else f'at {factor}b'} "
             f"loops, mean over the escaped seeds, A -> B; the verdict of the rule for errors "
             f"(two-sided exact permutation test of the difference of means, {ALPHA}) on it."
             + (f" Trend: Spearman's rho between the order {', '.join(trend)} and the error "
                f"over every escaped seed, with its two-sided permutation p-value "
                f"(loopformer.stats.trend_test)." if trend else ""),
             "", "| shift | " + " | ".join(
                 [f"{a} ({len(runs[a])}) -> {b} ({len(runs[b])})" for a, b in pairs]
                 + ([f"trend over {', '.join(f'{v} ({len(runs[v])})' for v in trend)}"]
                    if trend else [])) + " |",
             "|---|" + "---|" * (len(pairs) + bool(trend))]
    for shift in every[0]["ood"]:
        cells = []
        for a, b in pairs:
            ea, eb = errors(a, shift), errors(b, shift)
            if not ea or not eb:
                cells.append("-")
                continue
            v = compare_means(a, ea, b, eb)
            word = ("lower" if statistics.fmean(eb) < statistics.fmean(ea) else "higher")
            verdict = (f"**{word}** (p = {v.p:.3g})" if v.resolved
                       else f"not resolved (p = {v.p:.2f})")
            cells.append(f"{statistics.fmean(ea):.4f} -> {statistics.fmean(eb):.4f}: {verdict}")
        if trend:
            groups = [errors(v, shift) for v in trend]
            if sum(bool(g) for g in groups) < 2:
                cells.append("-")
            else:
                rho, p = trend_test(groups)
                word = "falls" if rho < 0 else "rises"
                cells.append(f"**{word}** (rho = {rho:.2f}, p = {p:.2g})" if p <= ALPHA
                             else f"not resolved (rho = {rho:.2f}, p = {p:.2f})")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return lines


def plot_ood(data: dict, path: Path, variants: list[str] | None = None,
             factors: tuple[str, ...] = ("1", "5", "20")) -> Path:
    """The error at k = 2d per shift: each variant at each loop count (mean over its escaped
    seeds, bars from min to max), the baselines as grey marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = variants or data["variants"]
    every = [r for v in variants for r in _runs_of(data, v)]
    shifts = list(every[0]["ood"])
    cols = [(v, f) for v in variants for f in factors
            if any(_factor_key(r, f) in r["ood"][shifts[0]]["error"] for r in _runs_of(data, v))]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(shifts) + 3), 4.8))
    width = 0.7 / max(1, len(cols))
    colors = plt.get_cmap("tab20")
    for i, (v, f) in enumerate(cols):
        runs = [r for r in _runs_of(data, v) if r["escape_step"] is not None]
        xs, mean, low, high = [], [], [], []
        for j, s in enumerate(shifts):
            vals = [r["ood"][s]["error"][_factor_key(r, f)] for r in runs
                    if _factor_key(r, f) in r["ood"][s]["error"]]
            if vals:
                xs.append(j + (i - (len(cols) - 1) / 2) * width)
                mean.append(statistics.fmean(vals))
                low.append(min(vals))
                high.append(max(vals))
        if xs:
            ax.errorbar(xs, mean, yerr=[[m - lo for m, lo in zip(mean, low, strict=True)],
                                        [hi - m for m, hi in zip(mean, high, strict=True)]],
                        fmt="o", markersize=4, capsize=2, color=colors(i % 20),
                        label=f"{v} @{'b' if f == '1' else f + 'b'}")
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(data: dict, path: Path, variants: list[str] | None = None) -> Path:
    """The learning curves that decide escape: the fixed test set's error at the last position
    against the training step, one line per run (a colour per variant, seeds that did not
    escape dashed), with the escape threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = variants or data["variants"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        for r in _runs_of(data, v):
            escaped = r["escape_step"] is not None
            ax.plot(r["test"]["step"], r["test"]["error_last"], color=colors(i % 10),
                    linestyle="-" if escaped else "--", marker="o", markersize=3,
                    linewidth=1.2, alpha=0.85)
        ax.plot([], [], color=colors(i % 10), marker="o", markersize=3, label=v)
    ax.axhline(data["escape"]["threshold"], color="0.4", linestyle=":", linewidth=1,
               label=f"escape threshold {data['escape']['threshold']:g}")
    ax.axhline(1.0, color="0.6", linestyle="--", linewidth=0.8, label="zero predictor")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"fixed test set: error at {data['n_points'] - 1} examples")
    ax.set_title(f"{data['study']}: learning curves, one line per seed (dashed: not escaped)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    parts = [(h, "h"), (rest // 60, "min"), (rest % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{v} {unit}" for v, unit in parts)


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
    wall = (f"{_duration(wall)} ({m.get('wall_time_source')})" if wall is not None
            else "not recorded")
    torches = sorted({r["torch"] for r in data["runs"] if r["torch"]})
    rows = [("command", f"`{m.get('command')}`"), ("commit", f"`{m.get('commit')}`"),
            ("machine", machine or "-"),
            ("torch", ", ".join(torches) or f"{m.get('torch')} (at aggregation)"),
            ("lightning", m.get("lightning")), ("date", m.get("date")), ("wall time", wall),
            ("runs", _runs_line(data))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


TABLES = {"variants": table_variants, "comparisons": table_comparisons, "runs": table_runs,
          "meta": table_meta, "ood": table_ood, "analysis": analysis_tables.table_analysis,
          "ood_trend": table_ood_trend}
OPTIONS = {"variants": {"data", "variants", "k", "loops"},
           "comparisons": {"data", "pairs", "k", "loops", "of", "with"},
           "runs": {"data", "variants", "k", "loops"}, "meta": {"data"},
           "ood": {"data", "variants", "loops", "baselines"},
           "analysis": {"data", "part", "variants"},
           "ood_trend": {"data", "pairs", "trend", "loops"}}
MARKER = re.compile(r"<!-- table:(\w+)((?: +[\w]+=[^\s>]+)*) *-->\n(.*?)<!-- /table:\1 -->",
                    re.DOTALL)


def render(kind: str, opts: dict, data: dict) -> str:
    if kind not in TABLES:
        raise ConfigError(f"unknown table kind {kind!r}; use one of {list(TABLES)}")
    unknown = sorted(set(opts) - OPTIONS[kind])
    if unknown:
        raise ConfigError(f"table:{kind} has unknown options {unknown}; allowed: "
                          f"{sorted(OPTIONS[kind])}")
    return "\n".join(TABLES[kind](data, opts)) + "\n"


def with_study(data: dict, other: dict) -> dict:
    """``data`` with ``other``'s runs added under the names ``STUDY/variant`` (option
    ``with=NAME`` of ``table:comparisons``: a variant of one study against one of another, e.g.
    at another budget). Both must share the task, the prompt length and the escape rule."""
    for key in ("task", "n_points", "escape"):
        if data[key] != other[key]:
            raise ConfigError(f"with={other['study']}: its {key} {other[key]} differs from "
                              f"{data['study']}'s {data[key]}; only studies of one task, prompt "
                              f"length and escape rule are compared")
    name = other["study"]
    return {**data, "variants": data["variants"] + [f"{name}/{v}" for v in other["variants"]],
            "runs": data["runs"] + [{**r, "variant": f"{name}/{r['variant']}"}
                                    for r in other["runs"]]}


def rebuild(page: Path) -> tuple[str, list[str]]:
    """The page's text with every marked table rebuilt, and the kinds of those that
    changed."""
    text, changed, cache = page.read_text(), [], {}

    def sub(m: re.Match) -> str:
        kind = m.group(1)
        opts = dict(o.split("=", 1) for o in m.group(2).split())
        if "data" not in opts:
            raise ConfigError(f"{page}: table:{kind} needs data=NAME (data/NAME.json beside "
                              f"the page)")
        def load(name: str) -> dict:
            path = page.parent / "data" / f"{name}.json"
            if path not in cache:
                if not path.is_file():
                    raise ConfigError(f"{page}: table:{kind} reads {path}, which does not exist")
                cache[path] = json.loads(path.read_text())
            return cache[path]

        data = load(opts["data"])
        if "with" in opts:
            data = with_study(data, load(opts["with"]))
        body = render(kind, opts, data)
        if body != m.group(3):
            changed.append(kind)
        return m.group(0)[: m.start(3) - m.start(0)] + body + f"<!-- /table:{kind} -->"

    return MARKER.sub(sub, text), changed


def pages_with_tables(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.md") if MARKER.search(p.read_text()))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m loopformer.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write docs/results/data/<study>.json from a study dir")
    ex.add_argument("study_dir", type=Path)
    ex.add_argument("--study", help="conf/study/NAME.yaml (default: the directory's name)")
    ex.add_argument("--out", type=Path, help="output file (default docs/results/data/...)")
    ex.add_argument("--threshold", type=float, default=ESCAPE_THRESHOLD,
                    help="escape threshold on the fixed test set's error at the last position")
    ex.add_argument("--command", help="the command that ran the study, as the page states it")
    ex.add_argument("--commit", help="the commit the study ran at")
    ex.add_argument("--wall-time", type=float, help="the study's wall time in seconds")
    ex.add_argument("--wall-time-source", help="what the stated wall time covers (default: "
                                               "'stated at export')")
    tb = sub.add_parser("tables", help="rebuild the marked tables of results pages")
    tb.add_argument("pages", type=Path, nargs="+")
    tb.add_argument("--check", action="store_true", help="exit 1 if a page differs")
    pl = sub.add_parser("plot-ood", help="the out-of-distribution summary plot of a study's data")
    pl.add_argument("data", type=Path, help="docs/results/data/NAME.json")
    pl.add_argument("out", type=Path, help="the PNG to write")
    pl.add_argument("--variants", help="comma-separated variants (default: all)")
    pc = sub.add_parser("plot-curves", help="the fixed test set's learning curve of each run")
    pc.add_argument("data", type=Path, help="docs/results/data/NAME.json")
    pc.add_argument("out", type=Path, help="the PNG to write")
    pc.add_argument("--variants", help="comma-separated variants (default: all)")
    pa = sub.add_parser("plot-analysis", help="the loop-analysis plots of a study's data")
    pa.add_argument("data", type=Path, help="docs/results/data/NAME.json")
    pa.add_argument("out", type=Path, help="the folder to write analysis_<study>_<part>.png into")
    pa.add_argument("--variants", help="comma-separated variants (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.cmd in ("plot-ood", "plot-analysis", "plot-curves"):
            if not args.data.is_file():
                raise ConfigError(f"data file {args.data} does not exist")
            data = json.loads(args.data.read_text())
        if args.cmd == "plot-ood":
            if not all(r.get("ood") for r in data["runs"]):
                raise ConfigError(f"{args.data}: runs without an out-of-distribution block")
            plot_ood(data, args.out, args.variants.split(",") if args.variants else None)
            log.info("wrote %s", args.out)
            return 0
        if args.cmd == "plot-curves":
            plot_curves(data, args.out, args.variants.split(",") if args.variants else None)
            log.info("wrote %s", args.out)
            return 0
        if args.cmd == "plot-analysis":
            if not any(r.get("analysis") for r in data["runs"]):
                raise ConfigError(f"{args.data}: no run has an analysis; run python -m "
                                  f"loopformer.analyze study=STUDY_DIR, then export")
            for path in analysis_tables.plot(data, args.out, args.variants.split(",")
                                             if args.variants else None):
                log.info("wrote %s", path)
            return 0
        if args.cmd == "export":
            if not args.study_dir.is_dir():
                raise ConfigError(f"study directory {args.study_dir} does not exist")
            out = export(args.study_dir, args.out, args.study, args.threshold,
                         {"command": args.command, "commit": args.commit,
                          "wall_time_s": args.wall_time,
                          "wall_time_source": args.wall_time_source})
            log.info("wrote %s", out)
            return 0
        stale = []
        missing = [str(p) for p in args.pages if not p.is_file()]
        if missing:
            raise ConfigError(f"no such page: {', '.join(missing)}")
        for page in args.pages:
            text, changed = rebuild(page)
            if args.check:
                if changed:
                    stale.append(f"{page}: tables {changed} differ from their data")
            else:
                page.write_text(text)
                log.info("%s: rebuilt, %d table(s) changed", page, len(changed))
        for line in stale:
            log.error("%s", line)
        return 1 if stale else 0
    except ConfigError as e:
        log.error("error: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
