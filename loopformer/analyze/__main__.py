"""``python -m loopformer.analyze run=RUN_DIR [parts=[dynamics,match,probe,exit]]
[n_prompts=1280] [max_loops=...] [seed=0] [device=cpu] [ckpt=last]``, or ``study=STUDY_DIR``
(every finished run of a study, then the aggregate per variant)."""

import logging
import sys

from omegaconf import OmegaConf

from loopformer.analyze.run import analyze_run, parse_options
from loopformer.errors import ConfigError

log = logging.getLogger("loopformer.analyze")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = OmegaConf.to_container(OmegaConf.from_cli(argv if argv is not None
                                                         else sys.argv[1:]))
        if "study" in args:
            from loopformer.analyze.study import analyze_study

            analyze_study(args.pop("study"), args)
        else:
            analyze_run(parse_options(args))
    except ConfigError as e:
        log.error("error: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
