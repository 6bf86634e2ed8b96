"""``python -m loopformer.tabular {build,list}``: build a dataset cache from a source, or list
the datasets of one (their index is Yang et al.'s ``test_idx``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from loopformer.cli import option, run_commands
from loopformer.errors import ConfigError
from loopformer.tabular.cache import read_manifest
from loopformer.tabular.selection import Rules
from loopformer.tabular.sources import SOURCES, build, parse_source

COMMAND = "python -m loopformer.tabular"


@dataclass
class BuildOptions:
    source: str = option(help=f"where the tables come from: {SOURCES}")
    data_dir: str = option(help="the cache folder to write (task.data_dir)")
    label: str | None = option(None, "dir:PATH only: the label column (null: the last)")
    min_instances: int | None = option(None, "rule: NumberOfInstances >= this (null: the "
                                             "source's; Yang et al.: 1000)")
    max_instances: int | None = option(None, "rule: NumberOfInstances <= this (10000)")
    max_features: int | None = option(None, "rule: NumberOfFeatures, label included, <= this "
                                            "(20)")
    min_numeric_features: int | None = option(None, "rule: numeric features >= this (5)")
    max_classes: int | None = option(None, "rule: classes <= this (2); a user's table with "
                                           "more is refused")
    min_minority_ratio: float | None = option(None, "rule: minority class >= this x majority "
                                                    "class (0.5)")

    def rules(self, default: Rules) -> Rules:
        given = {k: v for k, v in self.__dict__.items()
                 if k in Rules.__dataclass_fields__ and v is not None}
        for k, v in given.items():
            if v < 0:
                raise ConfigError(f"{COMMAND} build: {k}={v} must be >= 0")
        return Rules(**{**default.__dict__, **given})


@dataclass
class ListOptions:
    data_dir: str = option(help="the cache folder (task.data_dir)")


def build_cache(opts: BuildOptions) -> None:
    src = parse_source(opts.source)  # refused before any work
    manifest = build(src, opts.data_dir, opts.rules(src.rules), opts.label,
                     progress=lambda line: sys.stdout.write(line + "\n"))
    sys.stdout.write(f"{opts.data_dir}: {len(manifest.datasets)} datasets from "
                     f"{manifest.source}, {manifest.n_classes} classes\n")


def list_cache(opts: ListOptions) -> None:
    m = read_manifest(opts.data_dir, "data_dir")
    sys.stdout.write(f"source: {m.source}   filter: {m.filter_version}   relaxed: "
                     f"{m.relaxed or 'nothing'}\n")
    sys.stdout.write(f"{'test_idx':>8}  {'name':<32} {'train':>7} {'test':>6} {'feat':>5} "
                     f"classes\n")
    for i, e in enumerate(m.datasets):
        sys.stdout.write(f"{i:>8}  {e.name:<32} {e.n_train:>7} {e.n_test:>6} "
                         f"{e.n_features:>5} {e.class_counts}\n")


def main(argv=None) -> int:
    return run_commands({"build": (BuildOptions, build_cache, "build a dataset cache"),
                         "list": (ListOptions, list_cache, "list a cache's datasets")},
                        argv, COMMAND, __doc__)


if __name__ == "__main__":
    sys.exit(main())
