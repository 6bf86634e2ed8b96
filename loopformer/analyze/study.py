"""``python -m loopformer.analyze study=STUDY_DIR [options]``: the analysis of every finished
run of a study (``STUDY_DIR/runs/<variant>/seed=<s>``, finished = ``eval/results.json``
written), skipping runs already analysed, then the figures per variant over seeds: mean and
[min, max], in ``STUDY_DIR/analysis.json`` and ``STUDY_DIR/analysis.md``
(:func:`loopformer.results.aggregate.summarize_analyses`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from loopformer.analyze.run import Options, analyze_run
from loopformer.errors import ConfigError
from loopformer.results.aggregate import summarize_analyses
from loopformer.rundir import RunDir

log = logging.getLogger(__name__)


def finished_runs(study_dir: Path) -> dict[str, list[Path]]:
    """Variant -> its finished run directories, in seed order."""
    out: dict[str, list[Path]] = {}
    for run in sorted((study_dir / "runs").glob("*/seed=*")):
        if RunDir(run).results.is_file():
            out.setdefault(run.parent.name, []).append(run)
    return out


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
    return summarize_analyses(study_dir, runs)
