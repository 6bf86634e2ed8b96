"""Step-based checkpointing: a resumable ``last.ckpt`` and permanent ``step=N.ckpt`` files."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced non-finite weights or loss."""


def weights_finite(module: torch.nn.Module) -> bool:
    norms = torch._foreach_norm([p.detach() for p in module.parameters()])
    return bool(torch.isfinite(torch.stack(norms)).all())  # one host sync per check


class StepCheckpoint(L.Callback):
    """Writes ``dirpath/last.ckpt`` every ``every_n_steps`` global steps and at the end of
    training, and ``dirpath/step=N.ckpt`` every ``keep_every_n_steps`` (0: never). Writes go
    through the trainer's checkpoint I/O (atomic). Non-finite weights are never written:
    training stops with a message naming the step, and the last good checkpoint stays."""

    def __init__(self, dirpath: str | Path, every_n_steps: int, keep_every_n_steps: int = 0):
        self.dirpath = Path(dirpath)
        self.every, self.keep_every = every_n_steps, keep_every_n_steps
        self._saved_step = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if step == self._saved_step:
            return
        if not weights_finite(pl_module):
            raise NonFiniteError(
                f"non-finite weights at step {step}: training stopped; the last good "
                f"checkpoint {self.last_path} was kept (lower optimizer.lr or set "
                f"trainer.gradient_clip_val)")
        if step % self.every == 0 or trainer.global_step >= (trainer.max_steps or 0):
            trainer.save_checkpoint(self.last_path)
        if self.keep_every and step % self.keep_every == 0:
            trainer.save_checkpoint(self.dirpath / f"step={step}.ckpt")
        self._saved_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate():
            return
        if step % self.every == 0 or (self.keep_every and step % self.keep_every == 0):
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer, pl_module)
