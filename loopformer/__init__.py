"""loopformer: looped transformers learning functions in-context."""

from loopformer import tabular  # noqa: F401  (registers task.name=openml)
from loopformer.curriculum import Curriculum, Schedule
from loopformer.errors import ConfigError
from loopformer.models import ModelConfig, build_model, count_parameters
from loopformer.tasks import Batch, build_task

__all__ = [
    "Batch",
    "ConfigError",
    "Curriculum",
    "ModelConfig",
    "Schedule",
    "build_model",
    "build_task",
    "count_parameters",
]
__version__ = "0.1.0"
