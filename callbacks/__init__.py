"""Lightning callbacks of loopformer: curriculum, fixed-test-set evaluation, checkpointing."""

from callbacks.checkpoint import StepCheckpoint
from callbacks.curriculum import CurriculumCallback
from callbacks.fixed_test_set import FixedTestSetEvaluation

__all__ = ["CurriculumCallback", "FixedTestSetEvaluation", "StepCheckpoint"]
