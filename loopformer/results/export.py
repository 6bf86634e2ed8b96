"""A study's data: ``STUDY_DIR/data.json`` when the sweep aggregates it, and
``docs/results/data/<study>.json`` when ``python -m loopformer.results export STUDY_DIR``
rebuilds it. Per run: its variant, seed, torch version, the final error at each number of
examples and loop count (the evaluation's mean over prompts), the fixed test set's curve, the
step of escape, the out-of-distribution summary and the compact analysis; with the study's
confirmatory comparisons (its YAML's ``comparisons``, ``correction`` and ``alpha``, so that
``table:confirmatory`` is rebuilt from the data alone) and its command, commit, machine,
versions, date and wall time."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import lightning
import torch
from omegaconf import OmegaConf

from loopformer.csvlog import read_metrics
from loopformer.errors import ConfigError
from loopformer.results.analysis_record import record as analysis_record
from loopformer.rundir import RunDir
from loopformer.stats import ACCURACY_ESCAPE, ESCAPE_THRESHOLD, escape_step
from loopformer.study import Study, check_comparisons, load_study, plan

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "docs" / "results" / "data"
FORMAT = 1


def _g(x: float) -> float:
    return float(f"{x:.6g}")  # 6 significant digits: pages print 4 decimals


def _run_record(variant: str, seed: int, run: RunDir, threshold: float | None) -> dict | None:
    if not run.results.is_file():
        return None
    res = json.loads(run.results.read_text())
    if res.get("metric") == "accuracy":
        return _accuracy_record(variant, seed, run, res, threshold)
    threshold = ESCAPE_THRESHOLD if threshold is None else threshold
    error = {}
    for key, c in res["curves"].items():
        if key == "model" or key.startswith("model@"):  # the model's curves, at each loop count
            error["trained" if key == "model" else key.removeprefix("model@")] = [
                _g(v) for v in c["mean"]]
    last = f"test/error_pos/{res['n_points'] - 1:03d}"  # the most in-context examples
    rows = _test_rows(run, last)
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
        record["analysis"] = analysis_record(json.loads(analysis.read_text()))
    return record


def _test_rows(run: RunDir, last: str) -> list[dict]:
    """The run's logged rows of the fixed test set (those with ``last``, its curve at the last
    position, from which the escape is read)."""
    rows = [r for r in read_metrics(run.metrics) if last in r] if run.metrics.is_file() else []
    if not rows:
        raise ConfigError(f"{run.metrics} has no fixed-test-set curve ({last}); the escape "
                          f"is read from it: train with test.every_n_steps > 0")
    return rows


def _nan_none(x: float) -> float | None:
    return None if x != x else _g(x)


def _accuracy_record(variant: str, seed: int, run: RunDir, res: dict,
                     threshold: float | None) -> dict:
    """A classification run's record: accuracy per position at each loop count (None where a
    position asks nothing) and over every asked position, the fixed test set's accuracy at the
    last position, the escape (accuracy above ``threshold`` from a test step to the end) and
    the depth dial's accuracy per dial value."""
    threshold = ACCURACY_ESCAPE if threshold is None else threshold
    last = f"test/accuracy_pos/{res['n_points'] - 1:03d}"
    rows = _test_rows(run, last)
    steps = [int(r["step"]) for r in rows]
    acc_last = [_g(r[last]) for r in rows]
    cfg = OmegaConf.load(run.config) if run.config.is_file() else None
    record = {"variant": variant, "seed": seed, "torch": res.get("torch"),
              "parameters": res.get("parameters"), "trained_loops": res.get("trained_loops"),
              **_accuracy_block(res),
              "test": {"step": steps, "accuracy_last": acc_last,
                       "accuracy_mean": [_g(r["test/accuracy"]) for r in rows]},
              "test_every_n_steps": int(cfg.test.every_n_steps) if cfg else None,
              # above the threshold to the end: the error 1 - accuracy below 1 - threshold
              "escape_step": escape_step(steps, [1 - a for a in acc_last], 1 - threshold)}
    if res.get("datasets"):  # held-out tables (task=openml): each its own block
        record["datasets"] = {name: {"n_prompts": block["n_prompts"], **_accuracy_block(block)}
                              for name, block in res["datasets"].items()}
    if res.get("dial"):
        d = res["dial"]
        record["dial"] = {k: d[k] for k in ("of", "trained", "values", "lengths",
                                            "fixed_loops", "rule_loops")}
        record["dial"]["rule"] = d["rule"]["formula"]
        record["dial"]["at_fixed"] = [_g(v) for v in d["at_fixed"]["mean"]]
        record["dial"]["at_rule"] = (None if d["at_rule"] is None
                                     else [_g(v) for v in d["at_rule"]["mean"]])
    analysis = run.root / "analysis" / "analysis.json"
    if analysis.is_file():
        record["analysis"] = analysis_record(json.loads(analysis.read_text()))
    return record


def _accuracy_block(res: dict) -> dict:
    """A classification evaluation's curves (``results.json``, or one held-out dataset's block
    of it): the model's accuracy per position at each loop count (``trained``, ``"24"``) and
    over every asked position, and the baselines' (fitted per prompt on the same prompts)."""
    def key(name: str) -> str:
        return "trained" if name == "model" else name.removeprefix("model@")

    model = [n for n, c in res["curves"].items() if c.get("kind", "model") == "model"]
    others = [n for n in res["curves"] if n not in model]
    return {"accuracy": {key(n): [_nan_none(v) for v in res["curves"][n]["mean"]] for n in model},
            "accuracy_all": {key(n): _g(res["accuracy"][n]) for n in model},
            "baselines": {n: [_nan_none(v) for v in res["curves"][n]["mean"]] for n in others},
            "baselines_all": {n: _g(res["accuracy"][n]) for n in others}}


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


def study_data(study: Study, study_dir: Path, threshold: float | None = None,
               meta: dict | None = None) -> dict:
    """The data of a study's finished runs (see the module's docstring)."""
    jobs = plan(study, study_dir)
    threshold = study.escape_threshold if threshold is None else threshold
    runs = [r for j in jobs if (r := _run_record(j.variant, j.seed, RunDir(j.run_dir),
                                                 threshold))]
    if not runs:
        raise ConfigError(f"no finished runs under {study_dir / 'runs'}; run the study first")
    first = json.loads(RunDir(next(j.run_dir for j in jobs if j.finished)).results.read_text())
    meta = dict(meta or environment(study))
    meta.setdefault("wall_time_s", _span([RunDir(j.run_dir) for j in jobs]))
    meta.setdefault("wall_time_source", "file times: first run started to last run evaluated")
    config = {k: getattr(study, k) for k in ("name", "base", "variants", "seeds", "examples")}
    if study.escape_threshold is not None:
        config["escape_threshold"] = study.escape_threshold
    family = {"comparisons": [dataclasses.asdict(c) for c in study.comparisons],
              "correction": study.correction, "alpha": study.alpha}
    classes = first.get("metric") == "accuracy"
    if threshold is None:
        threshold = ACCURACY_ESCAPE if classes else ESCAPE_THRESHOLD
    escape = ({"threshold": threshold, "above": True,
               "metric": f"test/accuracy_pos/{first['n_points'] - 1:03d}"} if classes else
              {"threshold": threshold,
               "metric": f"test/error_pos/{first['n_points'] - 1:03d}"})
    return {"format": FORMAT, "study": study.name, "config": {**config, **family},
            "task": first["task"], "metric": "accuracy" if classes else "error",
            **({"chance": first["chance"]} if classes else {}),
            "active_dims": first.get("active_dims"), "n_points": first["n_points"],
            "n_prompts": first["n_prompts"], "examples": list(study.examples),
            "variants": [v for v in study.variants if any(r["variant"] == v for r in runs)],
            "seeds": sorted({r["seed"] for r in runs}),
            "escape": escape,
            **family, "meta": meta, "runs": runs}


def data_path(study_dir: Path, name: str) -> Path:
    """``STUDY_DIR/data.json``; where that file holds another study's data (a study run in
    another's directory to share its finished runs), ``data.<name>.json`` beside it, so that
    neither overwrites the other."""
    path = study_dir / "data.json"
    if path.is_file() and json.loads(path.read_text()).get("study") != name:
        return study_dir / f"data.{name}.json"
    return path


def write_study_data(study: Study, study_dir: Path) -> Path | None:
    """``STUDY_DIR/data.json`` (:func:`data_path`), written when the study is aggregated (its
    metadata are the sweep's own: command, commit, machine, versions). A study whose runs have
    no fixed-test-set curve gets its report without it, and a warning."""
    path = data_path(study_dir, study.name)
    try:
        data = study_data(study, study_dir)
    except ConfigError as e:
        log.warning("no %s: %s", path, e)
        return None
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _registered_family(study: Study) -> Study:
    """``study`` (from a data file written before studies carried comparisons) with the
    comparisons, correction and alpha of ``conf/study/<name>.yaml``, where that file exists."""
    if not (ROOT / "conf" / "study" / f"{study.name}.yaml").is_file():
        return study
    registered = load_study(study.name)
    check_comparisons(list(registered.comparisons), list(study.variants))
    return dataclasses.replace(study, comparisons=registered.comparisons,
                               correction=registered.correction, alpha=registered.alpha)


def export(study_dir: Path, out: Path | None = None, name: str | None = None,
           threshold: float | None = None, overrides: dict | None = None) -> Path:
    """Rebuild a study's data from its runs into ``out`` (default ``docs/results/data/<study>
    .json``). The study's definition and metadata come from ``STUDY_DIR/data.json`` (written
    by the sweep) if there is one (its comparisons from ``conf/study/<name>.yaml`` if it has none
    and that file exists), else from ``conf/study/<name>.yaml`` (``name``, default the
    directory's name) and this process; ``overrides`` (command, commit, wall_time_s) replace
    the metadata."""
    if not study_dir.is_dir():
        raise ConfigError(f"study directory {study_dir} does not exist")
    previous = data_path(study_dir, name) if name else study_dir / "data.json"
    previous = json.loads(previous.read_text()) if previous.is_file() else None
    if previous and (not name or previous.get("study") == name):
        study = Study.from_config(OmegaConf.create(previous["config"]))
        if "comparisons" not in previous["config"]:
            study = _registered_family(study)
    else:
        name = name or study_dir.resolve().name
        if not (ROOT / "conf" / "study" / f"{name}.yaml").is_file():
            raise ConfigError(f"no study config conf/study/{name}.yaml and no "
                              f"{study_dir / 'data.json'}; pass study=NAME of a "
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
