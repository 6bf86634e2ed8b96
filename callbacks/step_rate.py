"""Training speed in the run's own logs: ``time/steps_per_s`` at every logging step."""

from __future__ import annotations

import time

import lightning as L

from loopformer.module import is_log_step


class StepRate(L.Callback):
    """Logs ``time/steps_per_s``: optimizer steps per second of wall clock since the previous
    logging step, fixed-test-set evaluations and checkpoints included (the speed a run really
    trains at). The first logging step of a process has no interval yet and logs nothing.

    On a GPU the host queues steps ahead of the device but waits for it at every logging step
    (the logged values are read back), so the host can be at most one logging period ahead,
    and in steady training each interval's rate is the device's pace."""

    def __init__(self):
        self.last: tuple[int, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not is_log_step(trainer):
            return
        step, now = trainer.global_step, time.perf_counter()
        if self.last is not None and step > self.last[0]:
            pl_module.log("time/steps_per_s", (step - self.last[0]) / (now - self.last[1]),
                          on_step=True, on_epoch=False)
        self.last = (step, now)
