"""What the loop computes: ``python -m loopformer.analyze run=RUN_DIR [option=value ...]``, or
``study=STUDY_DIR`` (every finished run of a study, then the figures per variant). Writes
``RUN_DIR/analysis/`` (``analysis.json``, plots); ``--help`` lists the options."""

import sys

from loopformer.analyze.run import Options, analyze_run
from loopformer.analyze.study import analyze_study
from loopformer.cli import run


def _analyze(opts: Options) -> None:
    if opts.study is not None:
        analyze_study(opts)
    else:
        analyze_run(opts)


def main(argv: list[str] | None = None) -> int:
    return run(Options, _analyze, argv, "python -m loopformer.analyze", __doc__)


if __name__ == "__main__":
    sys.exit(main())
