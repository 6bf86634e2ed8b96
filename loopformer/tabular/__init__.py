"""Real tables as in-context classification prompts (Yang et al.'s OpenML experiment):
the dataset rule and preprocessing (:mod:`~loopformer.tabular.selection`), the local cache
(:mod:`~loopformer.tabular.cache`), the sources that fill it
(:mod:`~loopformer.tabular.sources`), the task ``task.name=openml``
(:mod:`~loopformer.tabular.task`), and ``python -m loopformer.tabular`` to build a cache.
"""

from loopformer.tabular.cache import Manifest, read_manifest
from loopformer.tabular.selection import FILTER_VERSION, Rules, prepare, rejection, select_openml
from loopformer.tabular.sources import build, parse_source
from loopformer.tabular.task import TabularTask

__all__ = ["FILTER_VERSION", "Manifest", "Rules", "TabularTask", "build", "parse_source",
           "prepare", "read_manifest", "rejection", "select_openml"]
