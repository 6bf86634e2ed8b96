"""Applies the curriculum's loop count to the module every step and logs the schedules."""

from __future__ import annotations

import lightning as L

from loopformer.curriculum import Curriculum
from loopformer.module import is_log_step


class CurriculumCallback(L.Callback):
    """Sets ``pl_module.n_loops`` from the global step (the data module draws prompts at
    ``curriculum.at(step)`` itself: the same pure function, so both always agree)."""

    def __init__(self, curriculum: Curriculum, looped: bool = True):
        self.curriculum = curriculum
        self.looped = looped

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state = self.curriculum.at(trainer.global_step)
        pl_module.n_loops = state.n_loops
        if is_log_step(trainer):
            values = {"curriculum/n_dims": state.n_dims, "curriculum/n_points": state.n_points}
            if self.looped:
                values["curriculum/n_loops"] = state.n_loops
            pl_module.log_dict({k: float(v) for k, v in values.items()}, on_step=True,
                               on_epoch=False)
