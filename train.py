"""Train a model: ``python train.py [group=option ...] [key=value ...]`` (see README)."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from loopformer.errors import ConfigError
from loopformer.training import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as e:
        logging.getLogger("loopformer").error("config error: %s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
