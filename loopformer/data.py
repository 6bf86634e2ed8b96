"""Streaming prompts: every step draws fresh prompts at the current curriculum shape.

The data loader only yields a running batch index; the prompts themselves are sampled on the
training device right after "transfer", from a generator seeded by (seed, batch index, rank).
Data is therefore reproducible, different on every rank, and needs no saved RNG on resume.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from loopformer.curriculum import Curriculum
from loopformer.tasks import Batch, Task


def stream_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. seed, step, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(device: torch.device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(*keys))


class BatchIndexStream(IterableDataset):
    """Yields batch indices ``start, start+1, ...`` forever, as Python ints: Lightning moves
    no int to the device, so a step costs no host-to-device copy (on a GPU a blocking copy
    would stall the host until the queued kernels finish, every step)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        i = self.start
        while True:
            yield i
            i += 1


class PromptDataModule(L.LightningDataModule):
    def __init__(self, task: Task, curriculum: Curriculum, batch_size: int, seed: int):
        super().__init__()
        self.task, self.curriculum = task, curriculum
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self):
        # called after a checkpoint is restored, so a resumed run continues the index stream
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches
        return DataLoader(BatchIndexStream(start), batch_size=None)

    def sample(self, index: int, step: int, rank: int, device) -> Batch:
        g = generator(torch.device(device), self.seed, index, rank)
        # the training step's shape: its hop count drawn with curriculum.hops_mix
        return self.task.sample_at(self.batch_size, self.curriculum.train_state(step, self.seed),
                                   g)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if isinstance(batch, Batch):
            return batch
        t = self.trainer
        return self.sample(int(batch), t.global_step, t.global_rank, t.lightning_module.device)
