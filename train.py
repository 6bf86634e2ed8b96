"""Train a model: ``python train.py [group=option ...] [key=value ...]`` (see README)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from loopformer.config import parse
from loopformer.errors import ConfigError, NonFiniteError
from loopformer.rundir import discard_unused_output_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # a refused config or a diverged run: one line on stderr, no traceback; anything else is
    # a bug and shows its traceback
    try:
        settings = parse(cfg)  # every check, before the trainer's imports (lightning)
        from loopformer.training import train

        train(settings, overrides=list(HydraConfig.get().overrides.task))
    except (ConfigError, NonFiniteError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        discard_unused_output_dir()  # a rejected command leaves no run directory behind
        sys.exit(2 if isinstance(e, ConfigError) else 1)


if __name__ == "__main__":
    main()
