"""From runs to results pages: ``python -m loopformer.results COMMAND [option=value ...]``.

``export STUDY_DIR`` writes ``docs/results/data/<study>.json`` (:mod:`.export`);
``tables PAGE.md ...`` rebuilds every table between markers

    <!-- table:KIND data=NAME [option=value ...] -->
    ...
    <!-- /table:KIND -->

from ``data/NAME.json`` beside the page (``check=true``: exit 1 if a page differs instead).
Kinds: ``variants`` (escape rate, median escape step, error over escaped seeds),
``comparisons`` (exploratory raw p for ``pairs=A:B,C:D``), ``confirmatory`` (the study's
pre-registered comparisons, Holm-corrected), ``runs``
(one row per run), ``meta`` (how the data was made), ``ood`` and ``ood_trend`` (the
out-of-distribution suite per shift) and ``analysis`` (the loop analysis).
``plot-ood``, ``plot-curves``, ``plot-analysis``, ``plot-dial`` and ``plot-examples``
draw a study's data.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from loopformer.cli import option, run_commands
from loopformer.results.export import export
from loopformer.results.pages import rebuild_pages
from loopformer.results.study_plots import plot_data_file
from loopformer.stats import ACCURACY_ESCAPE, ESCAPE_THRESHOLD

log = logging.getLogger("loopformer.results")


@dataclass
class ExportOptions:
    study_dir: Path = option(help="the study's directory (studies/NAME)", positional=True)
    study: str | None = option(None, "conf/study/NAME.yaml (null: the directory's name)")
    out: Path | None = option(None, "the file to write (null: docs/results/data/NAME.json)")
    threshold: float | None = option(None, "escape threshold on the fixed test set's error at "
                                           f"the last position (null: the study's "
                                           f"escape_threshold, else {ESCAPE_THRESHOLD}; "
                                           f"accuracy, which must stay above it: "
                                           f"{ACCURACY_ESCAPE})")
    command: str | None = option(None, "the command that ran the study, as the page states it")
    commit: str | None = option(None, "the commit the study ran at")
    wall_time: float | None = option(None, "the study's wall time in seconds")
    wall_time_source: str | None = option(None, "what the stated wall time covers (null: "
                                                "'stated at export')")


@dataclass
class TablesOptions:
    pages: list[Path] = option([], "the results pages (.md) to rebuild", positional=True)
    check: bool = option(False, "only check: exit 1 if a page differs")


@dataclass
class PlotOptions:
    data: Path = option(help="a study's data, docs/results/data/NAME.json", positional=True)
    out: Path = option(help="the PNG to write (plot-analysis: the folder for "
                            "analysis_<study>_<part>.png)", positional=True)
    variants: list[str] | None = option(None, "the variants to draw (null: all)")
    dataset: str | None = option(None, "plot-examples: one held-out table of task=openml "
                                       "(null: all held-out prompts pooled)")


def _export(o: ExportOptions) -> None:
    log.info("wrote %s", export(o.study_dir, o.out, o.study, o.threshold, {
        "command": o.command, "commit": o.commit, "wall_time_s": o.wall_time,
        "wall_time_source": o.wall_time_source}))


def _tables(o: TablesOptions) -> int:
    stale = rebuild_pages(o.pages, o.check)
    for line in stale:
        log.error("%s", line)
    return 1 if stale else 0


def _plot(kind: str):
    def draw(o: PlotOptions) -> None:
        for path in plot_data_file(kind, o.data, o.out, o.variants, o.dataset):
            log.info("wrote %s", path)
    return draw


COMMANDS = {
    "export": (ExportOptions, _export, "write docs/results/data/<study>.json from a study"),
    "tables": (TablesOptions, _tables, "rebuild the marked tables of results pages"),
    "plot-ood": (PlotOptions, _plot("ood"), "the out-of-distribution summary of a study"),
    "plot-curves": (PlotOptions, _plot("curves"), "the fixed test set's learning curve of "
                                                 "each run"),
    "plot-analysis": (PlotOptions, _plot("analysis"), "the loop-analysis plots of a study"),
    "plot-dial": (PlotOptions, _plot("dial"), "a token study's accuracy beyond the trained "
                                              "hops (length), per variant"),
    "plot-examples": (PlotOptions, _plot("examples"), "a classification study's accuracy vs "
                                                      "in-context examples, with the baselines"),
}


def main(argv: list[str] | None = None) -> int:
    return run_commands(COMMANDS, argv, "python -m loopformer.results", __doc__)


if __name__ == "__main__":
    sys.exit(main())
