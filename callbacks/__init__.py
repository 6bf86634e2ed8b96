"""Lightning callbacks of loopformer: curriculum, fixed-test-set evaluation, checkpointing,
training speed."""

from callbacks.checkpoint import StepCheckpoint
from callbacks.curriculum import CurriculumCallback
from callbacks.fixed_test_set import FixedTestSetEvaluation
from callbacks.step_rate import StepRate

__all__ = ["CurriculumCallback", "FixedTestSetEvaluation", "StepCheckpoint", "StepRate"]
