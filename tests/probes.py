"""Helpers that run inside the training processes started by the slow tests.

``RecordPrompts`` is a Lightning callback (``+callbacks.probe._target_=probes.RecordPrompts``,
with ``tests/`` on PYTHONPATH) that appends every rank's prompts to ``PATH/rank<r>.jsonl``;
``SigtermAt`` (``+callbacks.term._target_=probes.SigtermAt +callbacks.term.step=N``) sends its
own process a SIGTERM at the end of global step N, as a cluster scheduler would.

``python tests/probes.py ARGS...`` runs ``train.py ARGS...`` and, when ``LF_KILL=MOMENT:N`` is
set, SIGKILLs the process at the N-th such moment:
  ``step:N``  global step N, after the backward pass, before the optimizer update
  ``save:N``  the N-th checkpoint write, half of it on disk (a torn temporary file)
  ``test:N``  the N-th fixed-test-set evaluation
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


class RecordPrompts(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.path.mkdir(parents=True, exist_ok=True)
        row = {"step": trainer.global_step, "xs": batch.xs.flatten().tolist(),
               "ys": batch.ys.flatten().tolist()}
        with open(self.path / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class SigtermAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class Pace(L.Callback):
    """Sleeps ``seconds`` after every step of a job's first start (not after a SLURM requeue):
    a run that lasts long enough for SLURM's warning whatever the machine's speed, with the
    same numbers."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
            time.sleep(self.seconds)


class SignalAt(L.Callback):
    """Sends this process the signal ``name`` (e.g. SIGUSR2) at the end of step ``step``."""

    def __init__(self, step: int, name: str):
        self.step, self.signum = step, getattr(signal, name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(moment: str, n: int) -> None:
    import torch

    import callbacks.fixed_test_set as fixed_test_set
    from loopformer.module import LoopformerModule

    calls = {"n": 0}

    def nth_call() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    if moment == "step":
        original_step = LoopformerModule.on_before_optimizer_step

        def on_before_optimizer_step(self, optimizer):
            if self.trainer.global_step == n:
                _die()
            return original_step(self, optimizer)

        LoopformerModule.on_before_optimizer_step = on_before_optimizer_step
    elif moment == "save":
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            original_save(obj, f, *args, **kwargs)
            if nth_call() and hasattr(f, "fileno"):
                f.flush()
                os.ftruncate(f.fileno(), f.tell() // 2)  # a write cut half-way
                _die()

        torch.save = save
    elif moment == "test":
        original_eval = fixed_test_set.evaluate_test_set

        def evaluate_test_set(*args, **kwargs):
            if nth_call():
                _die()
            return original_eval(*args, **kwargs)

        fixed_test_set.evaluate_test_set = evaluate_test_set
    else:
        raise ValueError(f"LF_KILL={moment}:{n}: moment must be step, save or test")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if os.environ.get("LF_KILL"):
        moment, count = os.environ["LF_KILL"].split(":")
        install_kill(moment, int(count))
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
