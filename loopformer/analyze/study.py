"""``python -m loopformer.analyze study=STUDY_DIR [options]``: the analysis of every finished
run of a study (``STUDY_DIR/runs/<variant>/seed=<s>``, finished = ``eval/results.json``
written), skipping runs already analysed, then the figures per variant over seeds: mean and
[min, max], in ``STUDY_DIR/analysis.json`` and ``STUDY_DIR/analysis.md``."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from loopformer.analyze.run import Options, analyze_run
from loopformer.errors import ConfigError
from loopformer.rundir import RunDir

log = logging.getLogger(__name__)


def finished_runs(study_dir: Path) -> dict[str, list[Path]]:
    """Variant -> its finished run directories, in seed order."""
    out: dict[str, list[Path]] = {}
    for run in sorted((study_dir / "runs").glob("*/seed=*")):
        if RunDir(run).results.is_file():
            out.setdefault(run.parent.name, []).append(run)
    return out


def headline(r: dict) -> dict[str, float]:
    """The scalars of one run's analysis that the study table reports."""
    out: dict[str, float] = {}
    b = r["trained_depth"]
    if "dynamics" in r:
        dyn = r["dynamics"]
        last = dyn["error"]["last"]["mean"]
        out[f"error at {r['unit']} b"] = last[min(b, len(last)) - 1]
        out[f"error at {r['unit']} {len(last)}"] = last[-1]
        loop = dyn["converged_below"]["loop"]
        out["state change < 1e-3 from"] = float("nan") if loop == "never" else float(loop)
        for t, s in dyn["jacobian"]["sigma"].items():
            out[f"sigma at {t}"] = s["mean"]
    if "match" in r:
        for name, a in r["match"]["algorithms"].items():
            t = min(b, len(a["k_star"])) - 1
            out[f"{name} k* at b"] = float(a["k_star"][t])
            out[f"{name} similarity at b"] = a["similarity"][t]
    if "exit" in r:
        ex = r["exit"]
        out["oracle headroom"] = ex["oracle_held_out"]["headroom"]
        for name, rule in ex["rules"].items():
            if rule["chosen"] is not None:
                out[f"exit {name}: error"] = rule["chosen"]["error"]
                out[f"exit {name}: mean loops"] = rule["chosen"]["mean_loops"]
    if "probe" in r:
        for name, t in r["probe"]["targets"].items():
            out[f"probe {name} first"] = t["relative"][0]
            out[f"probe {name} last"] = t["relative"][-1]
    return out


def _band(values: list[float]) -> dict:
    finite = [v for v in values if v == v]
    if not finite:
        return {"mean": None, "low": None, "high": None, "n": 0}
    return {"mean": sum(finite) / len(finite), "low": min(finite), "high": max(finite),
            "n": len(finite)}


def analyze_study(options: Options) -> dict:
    """Analyse every finished run of the study ``options.study`` with ``options``."""
    study_dir = options.study
    if not (study_dir / "runs").is_dir():
        raise ConfigError(f"study={study_dir} has no runs/ directory; give a study's output "
                          f"directory (studies/NAME)")
    runs = finished_runs(study_dir)
    if not runs:
        raise ConfigError(f"study={study_dir} has no finished runs under runs/")
    opts = [dataclasses.replace(options, run=r, study=None) for rs in runs.values() for r in rs]
    for o in opts:
        done = o.run / "analysis" / "analysis.json"
        if done.is_file():
            log.info("skip %s (analysed)", o.run)
            continue
        analyze_run(o)
    table: dict[str, dict] = {}
    for variant, rs in runs.items():
        rows = [headline(json.loads((r / "analysis" / "analysis.json").read_text())) for r in rs]
        keys = dict.fromkeys(k for row in rows for k in row)
        table[variant] = {k: _band([row.get(k, float("nan")) for row in rows]) for k in keys}
    report = {"study_dir": str(study_dir), "seeds": {v: len(rs) for v, rs in runs.items()},
              "variants": table}
    (study_dir / "analysis.json").write_text(json.dumps(report, indent=1))
    (study_dir / "analysis.md").write_text(format_table(report))
    log.info("%s\nwrote %s", format_table(report), study_dir / "analysis.md")
    return report


def format_table(report: dict) -> str:
    lines = ["# Analysis per variant (mean [min, max] over seeds)", ""]
    for variant, rows in report["variants"].items():
        lines += [f"## {variant} ({report['seeds'][variant]} runs)", "", "| | value |",
                  "|---|---|"]
        for key, band in rows.items():
            cell = "n/a" if band["mean"] is None else (
                f"{band['mean']:.4g} [{band['low']:.4g}, {band['high']:.4g}]")
            lines.append(f"| {key} | {cell} |")
        lines.append("")
    return "\n".join(lines)
