"""Run a study and aggregate it: ``python sweep.py study=NAME [n_jobs=K] [aggregate_only=true]``."""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from loopformer.cli import hydra_command, refuse
from loopformer.errors import ConfigError, typed
from loopformer.results.aggregate import aggregate
from loopformer.rundir import discard_unused_output_dir
from loopformer.study import Interrupted, RunsFailed, Study, SweepConfig, launch


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> None:
    # a refused command: one line, exit 2; a failed or stopped run: its own exit code; any
    # other error is a bug and shows its traceback
    try:
        opts = typed(SweepConfig, cfg)
        study = Study.from_config(opts.study)
        study_dir = Path(opts.study_dir)
        if not opts.aggregate_only:
            launch(study, study_dir, opts.launcher, tuple(opts.overrides), opts.n_jobs)
        aggregate(study, study_dir)
        print((study_dir / "report.md").read_text())
    except ConfigError as e:
        discard_unused_output_dir()  # a refused command leaves no study directory behind
        sys.exit(refuse(e))
    except Interrupted as e:
        print(f"study {study.name} {e}; its runs were stopped. Run the same command again "
              f"to resume: finished runs are kept, the others continue from their last "
              f"checkpoint.", file=sys.stderr)
        sys.exit(130)
    except RunsFailed as e:
        logging.getLogger("loopformer").error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    hydra_command(main, Path(__file__).parent / "conf", "sweep")
