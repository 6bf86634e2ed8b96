"""Lightning callbacks of loopformer: curriculum, fixed-test-set evaluation, checkpointing,
training speed, SLURM requeue."""

from callbacks.checkpoint import StepCheckpoint
from callbacks.curriculum import CurriculumCallback
from callbacks.fixed_test_set import FixedTestSetEvaluation
from callbacks.requeue import DeferredRequeue
from callbacks.step_rate import StepRate

__all__ = ["CurriculumCallback", "DeferredRequeue", "FixedTestSetEvaluation", "StepCheckpoint",
           "StepRate"]
