"""Lightning callbacks of loopformer: curriculum, fixed-test-set evaluation, checkpointing."""

from callbacks.checkpoint import StepCheckpoint
from callbacks.curriculum import CurriculumCallback
from callbacks.test_eval import FixedTestSetEvaluation

__all__ = ["CurriculumCallback", "FixedTestSetEvaluation", "StepCheckpoint"]
