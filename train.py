"""Train a model: ``python train.py [group=option ...] [key=value ...]`` (see README)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from loopformer.cli import hydra_command, refuse
from loopformer.config import parse
from loopformer.errors import ConfigError, NonFiniteError
from loopformer.rundir import discard_unused_output_dir

CONF = Path(__file__).parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # a refused config: one line, exit 2; a diverged run: one line, exit 1; anything else is
    # a bug and shows its traceback
    try:
        job = parse(cfg)  # every check, before the trainer's imports (lightning)
        from loopformer.training import train

        train(job, overrides=list(HydraConfig.get().overrides.task))
    except ConfigError as e:
        discard_unused_output_dir()  # a refused command leaves no run directory behind
        sys.exit(refuse(e))
    except NonFiniteError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    hydra_command(main, CONF, "config")
