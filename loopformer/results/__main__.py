"""``python -m loopformer.results export STUDY_DIR`` writes ``docs/results/data/<study>.json``
(:mod:`loopformer.results.export`); ``python -m loopformer.results tables PAGE.md [--check]``
rebuilds every table between markers

    <!-- table:KIND data=NAME [option=value ...] -->
    ...
    <!-- /table:KIND -->

from ``data/NAME.json`` beside the page (``--check``: exit 1 if the page differs instead).
Kinds: ``variants`` (escape rate, median escape step, error over escaped seeds),
``comparisons`` (verdicts of :mod:`loopformer.stats`'s rules for ``pairs=A:B,C:D``), ``runs``
(one row per run), ``meta`` (how the data was made), ``ood`` and ``ood_trend`` (the
out-of-distribution suite per shift) and ``analysis`` (the loop analysis).
``plot-ood``, ``plot-curves`` and ``plot-analysis`` draw a study's data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from loopformer.errors import ConfigError
from loopformer.results.export import export
from loopformer.results.pages import rebuild_pages
from loopformer.results.study_plots import plot_data_file
from loopformer.stats import ESCAPE_THRESHOLD

log = logging.getLogger("loopformer.results")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loopformer.results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
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
    for kind, what, out in (
            ("ood", "the out-of-distribution summary plot of a study's data", "the PNG to write"),
            ("curves", "the fixed test set's learning curve of each run", "the PNG to write"),
            ("analysis", "the loop-analysis plots of a study's data",
             "the folder to write analysis_<study>_<part>.png into")):
        pl = sub.add_parser(f"plot-{kind}", help=what)
        pl.add_argument("data", type=Path, help="docs/results/data/NAME.json")
        pl.add_argument("out", type=Path, help=out)
        pl.add_argument("--variants", help="comma-separated variants (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        if args.cmd.startswith("plot-"):
            for path in plot_data_file(args.cmd.removeprefix("plot-"), args.data, args.out,
                                       args.variants.split(",") if args.variants else None):
                log.info("wrote %s", path)
        elif args.cmd == "export":
            log.info("wrote %s", export(args.study_dir, args.out, args.study, args.threshold, {
                "command": args.command, "commit": args.commit, "wall_time_s": args.wall_time,
                "wall_time_source": args.wall_time_source}))
        else:
            stale = rebuild_pages(args.pages, args.check)
            for line in stale:
                log.error("%s", line)
            return 1 if stale else 0
    except ConfigError as e:
        log.error("error: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
