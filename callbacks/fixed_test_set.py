"""Periodic evaluation on a fixed test set (the seed study's test loss)."""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from torchmetrics import Metric

from loopformer.curriculum import Curriculum
from loopformer.data import generator
from loopformer.readout import asked, correct, cross_entropy
from loopformer.tasks import Batch, Task


class PositionwiseSquaredError(Metric):
    """Sum of squared errors per position and prompt count; reduces by sum across ranks."""

    full_state_update = False

    def __init__(self, n_points: int):
        super().__init__()
        self.add_state("sum_sq", torch.zeros(n_points, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.sum_sq += (preds.double() - target.double()).square().sum(0)  # (n,)
        self.count += preds.shape[0]

    def compute(self) -> torch.Tensor:
        return self.sum_sq / self.count  # (n,) mean squared error per position


class PositionwiseClassification(Metric):
    """Per position: summed cross-entropy, correct answers and asked tokens over the prompts
    (targets at IGNORE ask nothing); reduces by sum across ranks."""

    full_state_update = False

    def __init__(self, n_points: int):
        super().__init__()
        for name in ("sum_ce", "n_correct", "n_asked"):
            self.add_state(name, torch.zeros(n_points, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.sum_ce += cross_entropy(logits, target).double().sum(0)  # (n,)
        self.n_correct += correct(logits, target).double().sum(0)
        self.n_asked += asked(target).double().sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n_asked.sum().clamp_min(1)
        return {"loss": self.sum_ce.sum() / n, "accuracy": self.n_correct.sum() / n,
                "accuracy_pos": self.n_correct / self.n_asked}  # nan where nothing is asked


class FixedTestSet:
    """``size`` prompts at the curriculum's final shape, drawn once from their own seed in
    chunks of ``batch_size``; chunk ``i`` belongs to rank ``i % world_size``."""

    def __init__(self, task: Task, curriculum: Curriculum, size: int, batch_size: int,
                 seed: int):
        self.task, self.shape = task, curriculum.final
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._cache: dict = {}

    def shard(self, rank: int, world_size: int, device) -> list[Batch]:
        key = (rank, world_size, str(device))
        if key not in self._cache:
            self._cache = {key: [self.chunk(i, device) for i in
                                 range(rank, self.n_chunks, world_size)]}
        return self._cache[key]

    @property
    def n_chunks(self) -> int:
        return -(-self.size // self.batch_size)

    def chunk(self, i: int, device) -> Batch:
        n = min(self.batch_size, self.size - i * self.batch_size)
        g = generator(torch.device(device), self.seed, i)
        return self.task.sample_test(n, self.shape, g)


@torch.no_grad()
def evaluate_test_set(model, test_set: FixedTestSet, n_loops, rank: int, world_size: int,
                      device, context=None) -> dict[str, float]:
    """Test loss of ``model`` (at ``n_loops``) over the whole test set, reduced over ranks:
    squared error for a regression task, cross-entropy and accuracy for a classification task
    (:func:`evaluate_test_set_classes`)."""
    if test_set.task.n_classes:
        return evaluate_test_set_classes(model, test_set, n_loops, rank, world_size, device,
                                         context)
    metric = PositionwiseSquaredError(test_set.shape.n_points).to(device)
    was_training = model.training
    model.eval()
    for batch in test_set.shard(rank, world_size, device):
        with (context or contextlib.nullcontext)():  # the trainer's precision context
            preds = model.predict(batch.xs, batch.ys, n_loops=n_loops)
        metric.update(preds, batch.ys)
    model.train(was_training)
    per_pos = metric.compute().cpu()  # (n,), summed over ranks
    norm = test_set.task.normalizer(test_set.shape.n_dims)
    out = {"test/loss": float(per_pos.mean()), "test/error": float(per_pos.mean() / norm)}
    out.update({f"test/error_pos/{k:03d}": float(v / norm) for k, v in enumerate(per_pos)})
    return out


@torch.no_grad()
def evaluate_test_set_classes(model, test_set: FixedTestSet, n_loops, rank: int,
                              world_size: int, device, context=None) -> dict[str, float]:
    """``test/loss`` (mean cross-entropy over the asked tokens), ``test/accuracy`` and the
    accuracy per position ``test/accuracy_pos/NNN`` (positions that ask something)."""
    metric = PositionwiseClassification(test_set.shape.n_points).to(device)
    was_training = model.training
    model.eval()
    for batch in test_set.shard(rank, world_size, device):
        with (context or contextlib.nullcontext)():
            logits = model.predict(batch.xs, batch.ys, n_loops=n_loops)  # (b, n, C)
        metric.update(logits, batch.ys)
    model.train(was_training)
    out = {k: v.cpu() for k, v in metric.compute().items()}
    metrics = {"test/loss": float(out["loss"]), "test/accuracy": float(out["accuracy"])}
    metrics.update({f"test/accuracy_pos/{k:03d}": float(v)
                    for k, v in enumerate(out["accuracy_pos"]) if not torch.isnan(v)})
    return metrics


class FixedTestSetEvaluation(L.Callback):
    """Every ``every_n_steps`` global steps, evaluates the model on the fixed test set at the
    current loop count and logs ``test/loss``, ``test/error`` (normalised) and the normalised
    error per position; for a classification task ``test/loss`` (cross-entropy),
    ``test/accuracy`` and the accuracy per position.

    The values go through ``pl_module.log_dict``, so they are in ``trainer.callback_metrics``
    for any callback (``ModelCheckpoint(monitor="test/loss")``, ``EarlyStopping``) and for the
    caller of ``fit``; they are already reduced over the ranks by torchmetrics, hence no
    ``sync_dist``. The loggers get them from ``logger.log_metrics`` at the global step of the
    weights they score, as Lightning's own ``LearningRateMonitor`` does: ``log_dict`` would
    hand them to the loggers only at the next logging step, one step earlier (Lightning's
    logging step of the batch that just ran), and again at every later logging step."""

    def __init__(self, test_set: FixedTestSet, every_n_steps: int):
        self.test_set, self.every = test_set, every_n_steps
        self._seen_step = 0

    def on_train_start(self, trainer, pl_module):
        self._seen_step = trainer.global_step  # a resumed run has scored this step already

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._seen_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._seen_step = step
        if self.every <= 0 or step % self.every:
            return
        metrics = evaluate_test_set(
            pl_module.model, self.test_set, pl_module.n_loops, trainer.global_rank,
            trainer.world_size, pl_module.device, trainer.precision_plugin.forward_context)
        # float64 on the CPU: callback_metrics keep the exact values
        pl_module.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()},
                           on_step=True, on_epoch=False, logger=False)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
