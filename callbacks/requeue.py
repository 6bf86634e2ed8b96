"""SLURM's time-limit warning ends training at a step boundary, with that step checkpointed."""

from __future__ import annotations

import logging
import os
import signal
import threading

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def warning_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send ``signal_delay_s`` before the time limit
    (``--signal=USR2@...``; submitit reads the same environment variable)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class DeferredRequeue(Callback):
    """Inside a SLURM job launched by submitit, lets its time-limit handler requeue the job
    but not end the process mid-step.

    submitit's handler for the warning signal records the job for resubmission, runs
    ``scontrol requeue`` and exits at once, wherever training is: the step under way is lost
    and the resumed job starts from the last periodic checkpoint. During training this callback
    runs that handler and swallows only its exit. The requeue makes SLURM send SIGTERM to
    every task of the job, which Lightning turns into a stop at the end of the current step
    (the same step on every rank), where :class:`StepCheckpoint` writes ``last.ckpt``. A
    preemption or ``scontrol requeue`` from outside takes the same SIGTERM path. Outside SLURM,
    or where no handler is installed for the signal, nothing changes."""

    def __init__(self):
        self._signum = warning_signal()
        self._previous = None
        self._trainer = None

    def on_train_start(self, trainer, pl_module):
        # after Lightning has set its own handlers (it restores all of them when fit ends)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts:
            log.warning("SLURM requeued this job (restart %d): training resumes at step %d",
                        restarts, trainer.global_step)
        if "SLURM_JOB_ID" not in os.environ or threading.current_thread() is not \
                threading.main_thread():
            return
        previous = signal.getsignal(self._signum)
        if callable(previous):  # submitit's; the default action would kill the process
            self._previous, self._trainer = previous, trainer
            signal.signal(self._signum, self._handle)

    def _handle(self, signum, frame):
        log.warning("%s at step %d: SLURM's time-limit warning; requeueing the job, training "
                    "stops and checkpoints at the end of this step", signal.Signals(signum).name,
                    self._trainer.global_step)
        try:
            self._previous(signum, frame)
        except SystemExit:
            pass  # the requeue's SIGTERM ends the process at the step boundary

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = self._trainer = None

    def teardown(self, trainer, pl_module, stage):
        self._restore()

    def on_exception(self, trainer, pl_module, exception):
        self._restore()  # a stopped fit does not reach teardown
