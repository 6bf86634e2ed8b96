"""Step-based checkpointing: a resumable ``last.ckpt`` and permanent ``step=N.ckpt`` files."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from loopformer.errors import NonFiniteError
from loopformer.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["NonFiniteError", "StepCheckpoint", "weights_finite"]


def weights_finite(module: torch.nn.Module) -> bool:
    norms = torch._foreach_norm([p.detach() for p in module.parameters()])
    return bool(torch.isfinite(torch.stack(norms)).all())  # one host sync per check


class StepCheckpoint(Checkpoint):
    """Writes the run's ``checkpoints/last.ckpt`` every ``every_n_steps`` global steps and
    at the step where training stops (``trainer.max_steps``, ``trainer.max_time``, a stopping
    callback, or a SIGTERM, which Lightning turns into a stop between two steps), and
    ``checkpoints/step=N.ckpt`` every ``keep_every_n_steps`` (0: never). Writes go through the
    trainer's checkpoint I/O (atomic). Non-finite weights are never written, and the training
    loss is checked at every logging step (where Lightning syncs with the device anyway, so no
    extra per-step sync): either way training stops with a NonFiniteError naming the step,
    and the last good checkpoint stays."""

    def __init__(self, run_dir: RunDir, every_n_steps: int, keep_every_n_steps: int = 0):
        self.run_dir = run_dir
        self.every, self.keep_every = every_n_steps, keep_every_n_steps
        self._last_step = self._kept_step = -1  # steps of the files written by this process
        self._seen_step = 0  # global step at the end of the last batch
        self._good_step: int | None = None  # step of the last checkpoint written or resumed

    @property
    def last_path(self) -> Path:
        return self.run_dir.last_ckpt

    def _stop(self, what: str, step: int) -> NonFiniteError:
        kept = (f"the last good checkpoint {self.last_path} (step {self._good_step}) was kept"
                if self._good_step is not None else "no checkpoint had been written yet")
        return NonFiniteError(f"{what} at step {step}: training stopped; {kept}; lower "
                              f"optimizer.lr or set trainer.gradient_clip_val")

    def on_fit_start(self, trainer, pl_module):
        # a write killed half-way leaves only its temporary file; the checkpoint it would
        # have replaced is intact, so the leftover is dropped
        if trainer.is_global_zero:
            for tmp in self.run_dir.checkpoints.glob(".*.ckpt.*.tmp"):
                tmp.unlink(missing_ok=True)

    def on_train_start(self, trainer, pl_module):
        self._seen_step = trainer.global_step
        if trainer.global_step > 0:  # resumed: the checkpoint it came from is good
            self._good_step = trainer.global_step

    def _save(self, trainer, pl_module, last: bool) -> None:
        """Writes ``last.ckpt`` (if ``last``) and this step's permanent checkpoint (if the step
        is a multiple of ``keep_every_n_steps``), each at most once per step."""
        step = trainer.global_step
        last = last and step != self._last_step
        keep = bool(self.keep_every) and step % self.keep_every == 0 and step != self._kept_step
        if not (last or keep):
            return
        if not weights_finite(pl_module):
            raise self._stop("non-finite weights", step)
        if last:
            trainer.save_checkpoint(self.last_path, weights_only=False)
            self._last_step = self._good_step = step
        if keep:
            trainer.save_checkpoint(self.run_dir.kept_ckpt(step), weights_only=False)
            self._kept_step = step

    def _check_loss(self, trainer, outputs) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        # decided by all ranks together, so that every rank stops at the same step
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            # the loss of the update just taken, logged under the step it started from
            raise self._stop("non-finite train/loss", trainer.global_step - 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._seen_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._seen_step = step
        n = trainer.log_every_n_steps
        if n > 0 and step % n == 0:  # a logging step: the loss reaches the host anyway
            self._check_loss(trainer, outputs)
        self._save(trainer, pl_module, last=step % self.every == 0)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer, pl_module, last=True)  # wherever training stopped

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):  # raised between two steps: a clean state
            self._save(trainer, pl_module, last=True)
            log.warning("SIGTERM: training stopped at step %d, %s holds it",
                        trainer.global_step, self.last_path)
