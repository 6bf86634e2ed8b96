"""A study's runs aggregated over seeds: ``report.md``, ``report.json``, their figures and
``data.json`` beside the study (``python sweep.py``), and the analysis per variant
(``analysis.md``, ``analysis.json``) after ``python -m loopformer.analyze study=STUDY_DIR``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loopformer.errors import ConfigError
from loopformer.results.export import write_study_data
from loopformer.results.reports import analysis_report, ood_report, study_report
from loopformer.results.study_plots import plot_study_report
from loopformer.rundir import RunDir
from loopformer.study import Job, Study, plan

log = logging.getLogger(__name__)


def load_results(job: Job) -> dict | None:
    path = RunDir(job.run_dir).results
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    curves = res.get("curves", {})
    if curves and not any("kind" in c for c in curves.values()):
        # written before curves carried their kind: the model's were named model, model@N
        for name, c in curves.items():
            c["kind"] = "model" if name == "model" or name.startswith("model@") else "baseline"
    return res


def curve_band(rows: list[list[float]]) -> dict:
    """Mean and min..max over seeds of per-seed curves."""
    m = torch.tensor(rows, dtype=torch.float64)  # (seeds, n)
    return {"mean": m.mean(0).tolist(), "low": m.min(0).values.tolist(),
            "high": m.max(0).values.tolist()}


@dataclass
class _Finished:
    """The finished runs' curves, per variant."""

    per_key: dict[str, dict[str, list]] = field(default_factory=dict)  # "model@60" -> variant
    loops: dict[str, list] = field(default_factory=dict)
    loop_x: dict[str, list] = field(default_factory=dict)
    seeds_done: dict[str, int] = field(default_factory=dict)
    trained: dict[str, int | None] = field(default_factory=dict)
    params: dict[str, int | None] = field(default_factory=dict)
    sample: dict | None = None  # one run's results: its task, baselines, prompts

    def add(self, variant: str, res: dict) -> None:
        self.seeds_done[variant] = self.seeds_done.get(variant, 0) + 1
        self.trained[variant] = res.get("trained_loops")
        self.params[variant] = res.get("parameters")
        for key, c in res["curves"].items():
            if c.get("kind") == "model":
                self.per_key.setdefault(key, {}).setdefault(variant, []).append(c["mean"])
        if res.get("loop_curve"):
            self.loops.setdefault(variant, []).append(res["loop_curve"]["mean"])
            self.loop_x[variant] = res["loop_curve"]["loops"]
        self.sample = self.sample or res


def _finished(study: Study, jobs: list[Job], study_dir: Path) -> _Finished:
    found = _Finished()
    for variant in study.variants:
        for job in (j for j in jobs if j.variant == variant):
            res = load_results(job)
            if res is not None:
                found.add(variant, res)
    if not found.seeds_done:
        raise ConfigError(f"no finished runs under {study_dir / 'runs'}; run the study first "
                          f"(without aggregate_only=true)")
    if "model" not in found.per_key:
        raise ConfigError(f"the results.json files under {study_dir / 'runs'} mark no curve as "
                          f"a model (kind); they predate it: evaluate the runs again with "
                          f"python -m loopformer.evaluate run=RUN_DIR")
    return found


def aggregate(study: Study, study_dir: Path) -> dict:
    """Mean and band (min..max over seeds) of each variant's curves at the trained loop count,
    at the extra loop counts of the evaluation, and of its error-vs-loops curve; writes
    ``report.md``, ``report.json``, ``error_vs_examples.png``, ``error_vs_loops.png`` and, for
    each of the study's groups, ``error_vs_examples_<group>.png`` and
    ``error_vs_loops_<group>.png`` in ``study_dir``; and ``data.json``, per run, for results
    pages (:func:`loopformer.results.export.write_study_data`)."""
    jobs = plan(study, study_dir)
    f = _finished(study, jobs, study_dir)
    curves = {v: curve_band(rows) for v, rows in f.per_key.get("model", {}).items()}
    extra = {key.removeprefix("model@"): {v: curve_band(rows) for v, rows in by_variant.items()
                                          if len(rows) == f.seeds_done[v]}
             for key, by_variant in f.per_key.items() if key != "model"}
    loop_curves = {v: {"loops": f.loop_x[v], **curve_band(rows)} for v, rows in f.loops.items()
                   if len(rows) == f.seeds_done[v]}
    if f.sample is not None and "least_squares" in f.sample["curves"]:
        curves["least_squares (baseline)"] = f.sample["curves"]["least_squares"]
    if f.sample is not None and f.sample.get("metric") == "accuracy":  # the classifiers
        curves.update({f"{name} (baseline)": c for name, c in f.sample["curves"].items()
                       if c.get("kind") == "baseline"})
    report = {"study": study.name, "seeds": f.seeds_done, "curves": curves,
              "curves_at_loops": extra, "trained_loops": f.trained, "parameters": f.params,
              "loop_curves": loop_curves,
              "metric": (f.sample or {}).get("metric", "error"),
              "examples": list(study.examples), "groups": {k: list(v) for k, v in
                                                          study.groups.items()}}
    ood = aggregate_ood(study, jobs)
    if ood:
        report["ood"] = ood
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "report.json").write_text(json.dumps(report, indent=1))
    (study_dir / "report.md").write_text(study_report(report, f.sample) +
                                         (ood_report(ood) if ood else ""))
    plot_study_report(study, study_dir, report)
    write_study_data(study, study_dir)
    return report


def aggregate_ood(study: Study, jobs: list[Job]) -> dict:
    """The out-of-distribution blocks (``results["ood"]``) over seeds: per variant, shift
    and model curve (each loop count), the error at the shift's summary position (``k = 2d``
    or its last scored one): mean and min..max over the seeds that scored it."""
    values: dict = {}  # variant -> shift -> curve -> [per-seed error]
    ks: dict = {}
    for job in jobs:
        res = load_results(job)
        for shift, block in ((res or {}).get("ood") or {}).items():
            k = block["summary_k"]
            ks[shift] = k
            for name, c in block["curves"].items():
                if c.get("kind") == "model":
                    values.setdefault(job.variant, {}).setdefault(shift, {}).setdefault(
                        name, []).append(c["mean"][k])
    return {v: {s: {name: {"k": ks[s], "seeds": len(e), **{
        key: val[0] for key, val in curve_band([[x] for x in e]).items()}}
        for name, e in by_curve.items()} for s, by_curve in by_shift.items()}
        for v, by_shift in values.items() if v in study.variants}


# --- the analysis of a study's runs ----------------------------------------------------------

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
        for t, shares in dyn.get("classes", {}).get("at", {}).items():
            for k in ("fixed", "cycle", "moving"):
                out[f"share {k} at {r['unit']} {t}"] = shares[k]
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


def scalar_band(values: list[float]) -> dict:
    finite = [v for v in values if v == v]
    if not finite:
        return {"mean": None, "low": None, "high": None, "n": 0}
    return {"mean": sum(finite) / len(finite), "low": min(finite), "high": max(finite),
            "n": len(finite)}


def summarize_analyses(study_dir: Path, runs: dict[str, list[Path]]) -> dict:
    """Per variant, the band over seeds of each scalar of its runs' analyses (``runs``:
    variant -> its analysed run directories); writes ``analysis.json`` and ``analysis.md``
    in ``study_dir``."""
    table: dict[str, dict] = {}
    for variant, rs in runs.items():
        rows = [headline(json.loads((r / "analysis" / "analysis.json").read_text())) for r in rs]
        keys = dict.fromkeys(k for row in rows for k in row)
        table[variant] = {k: scalar_band([row.get(k, float("nan")) for row in rows]) for k in keys}
    report = {"study_dir": str(study_dir), "seeds": {v: len(rs) for v, rs in runs.items()},
              "variants": table}
    (study_dir / "analysis.json").write_text(json.dumps(report, indent=1))
    (study_dir / "analysis.md").write_text(analysis_report(report))
    log.info("%s\nwrote %s", analysis_report(report), study_dir / "analysis.md")
    return report
