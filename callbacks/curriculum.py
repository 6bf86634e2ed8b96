"""Applies the curriculum's loop count to the module every step and logs the schedules."""

from __future__ import annotations

import lightning as L

from loopformer.curriculum import Curriculum
from loopformer.module import is_log_step


class CurriculumCallback(L.Callback):
    """Sets ``pl_module.n_loops`` (the scheduled b, which the fixed test set uses) and
    ``pl_module.train_loops`` (what the training step runs: b, or b moved by
    ``curriculum.loops_jitter``, or following the drawn hop count by ``curriculum.loops_rule``)
    from the global step. The data module draws prompts at ``curriculum.train_state(step,
    seed)`` itself: the same pure function, so both always agree."""

    def __init__(self, curriculum: Curriculum, looped: bool, seed: int):
        self.curriculum = curriculum
        self.looped = looped
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        state = self.curriculum.at(step)
        pl_module.n_loops = state.n_loops
        train = self.curriculum.train_state(step, self.seed)
        pl_module.train_loops = train.n_loops
        if is_log_step(trainer):
            values = {"curriculum/n_dims": state.n_dims, "curriculum/n_points": state.n_points}
            if state.n_hops is not None:
                values["curriculum/n_hops"] = state.n_hops
                if self.curriculum.hops_mix:
                    values["curriculum/train_hops"] = train.n_hops
            if self.looped:
                values["curriculum/n_loops"] = state.n_loops
                if self.curriculum.loops_jitter or not self.curriculum.loops_rule.fixed:
                    values["curriculum/train_loops"] = pl_module.train_loops
            pl_module.log_dict({k: float(v) for k, v in values.items()}, on_step=True,
                               on_epoch=False)
