"""The LightningModule: owns the step math (loop window loss), optimizer and logging."""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf

from loopformer.config import OptimConfig, Settings
from loopformer.graphs import StepGraph
from loopformer.models import InContextModel, build_model
from loopformer.readout import class_loss, stats_accuracy
from loopformer.tasks import Batch

# per-position loss and per-parameter grad norms are logged this many times less often
DETAIL_EVERY = 10


def is_log_step(trainer, every: int = 1) -> bool:
    """Whether the current batch's metrics reach the loggers: Lightning flushes them at the
    batches with ``(global_step + 1) % log_every_n_steps == 0`` (``every`` multiplies that)."""
    n = trainer.log_every_n_steps * every
    return n > 0 and (trainer.global_step + 1) % n == 0


def make_adam(params, o: OptimConfig) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all parameters, CPU and CUDA), falling back
    to the multi-tensor implementation where the fused one is unavailable."""
    params = list(params)
    kw = dict(lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kw)


class LoopformerModule(L.LightningModule):
    """Trains a model from :mod:`loopformer.models` on streamed prompts, as ``spec`` says.

    ``config`` is ``spec`` as a plain dict (:meth:`Settings.to_dict`), saved in every
    checkpoint's hyperparameters for provenance and for the shape check of a resume."""

    def __init__(self, spec: Settings, config: dict):
        super().__init__()
        self.save_hyperparameters(ignore=["spec"])
        self.spec = spec
        self.model = build_model(spec.model)
        self.perf = spec.perf
        if self.perf.activation_checkpointing and hasattr(self.model, "checkpoint_window"):
            self.model.checkpoint_window = True
        # set every step by callbacks.curriculum.CurriculumCallback: the scheduled loop count
        # b (the fixed test set's) and the count the training step runs (b, or b jittered)
        self.n_loops = self.train_loops = self.spec.curriculum.loops.start
        # perf.cuda_graph: the step graph runs forward and backward, and training_step calls
        # the optimizer itself (Lightning's manual optimization)
        self.automatic_optimization = not self.perf.cuda_graph
        self.step_graph: StepGraph | None = None

    @classmethod
    def from_config(cls, config: dict) -> LoopformerModule:
        """The module of a resolved config dict (tests, tools)."""
        return cls(Settings.from_config(OmegaConf.create(config)), config)

    def setup(self, stage):
        self.perf.apply()

    def on_fit_start(self):
        if self.perf.cuda_graph:
            self.step_graph = StepGraph(self.model.parameters(), self._loss,
                                        capture=self.device.type == "cuda")

    def configure_model(self):
        if self.perf.compile and not getattr(self, "_compiled", False):
            for block in self.model.blocks:
                # in place; recompiles once per new prompt length, then goes dynamic
                block.compile(dynamic=None, mode=self.perf.compile_mode)
            self._compiled = True

    def eager_model(self) -> InContextModel:
        """The trained model without torch.compile: a copy when the blocks were compiled, so
        evaluation at new batch sizes and loop counts neither recompiles nor records CUDA
        graphs (hundreds of loop iterations would each record one)."""
        if not getattr(self, "_compiled", False):
            return self.model
        eager = build_model(self.spec.model).to(self.device)
        eager.load_state_dict(self.model.state_dict())
        return eager.eval()

    def _log_now(self, every: int = 1) -> bool:
        return is_log_step(self.trainer, every)

    def _loss(self, xs, ys, n_loops: int, window: int, per_pos: bool = True):
        """Mean squared error over the window's predictions, and per position ``(n,)``. A
        classification task: the mean cross-entropy over the window's logits and the
        statistics of :func:`~loopformer.readout.class_loss` ``(3, n)`` (always: they give the
        step's accuracy)."""
        preds = self.model(xs, ys, n_loops=n_loops, window=window,
                           backprop=self.spec.curriculum.backprop)  # (K, B, n[, C])
        if self.spec.model.n_classes:
            return class_loss(preds, ys)
        sq = (preds - ys).square()  # (K, B, n), ys broadcast over the K iterations
        return sq.mean(), (sq.detach().mean(dim=(0, 1)) if per_pos else None)

    def training_step(self, batch: Batch, batch_idx: int):
        window = self.spec.curriculum.window
        detail = self._log_now(DETAIL_EVERY)
        if self.step_graph is None:
            loss, per_pos = self._loss(batch.xs, batch.ys, self.train_loops, window, detail)
        else:
            loss, per_pos = self.step_graph(batch.xs, batch.ys, self.train_loops, window)
            # the graph's output buffers are overwritten by the next replay
            keep = detail or self.spec.model.n_classes
            loss, per_pos = loss.clone(), (per_pos.clone() if keep else None)
            self.optimizers().step()
            self.lr_schedulers().step()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        if self.spec.model.n_classes:
            stats = per_pos  # (3, n): cross-entropy, correct answers, asked tokens
            # accuracy of the last iteration's answers (the model's output at this step)
            self.log("train/accuracy", stats_accuracy(stats), on_step=True, on_epoch=False,
                     prog_bar=True)
        if detail:
            if self.spec.model.n_classes:  # the positions that ask something (one host sync)
                shown = (stats[2] > 0).tolist()
                per_pos = {k: v for k, v in enumerate(stats[0] / stats[2]) if shown[k]}
            else:
                per_pos = dict(enumerate(per_pos))
            self.log_dict({f"train/loss_pos/{k:03d}": v for k, v in per_pos.items()},
                          on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        if not self._log_now():
            return  # grad norms cost a reduction; computed only when they are logged
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        norms = torch._foreach_norm([g for _, g in named])  # on device, no host sync here
        self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)),
                 on_step=True, on_epoch=False)
        if self._log_now(DETAIL_EVERY):
            self.log_dict({f"grad_norm/{n}": v for (n, _), v in zip(named, norms, strict=True)},
                          on_step=True, on_epoch=False)

    def configure_optimizers(self):
        o = self.spec.optimizer
        opt = make_adam(self.parameters(), o)
        total = self.spec.trainer.max_steps

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: o.lr_factor(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        if self._log_now():
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                     on_epoch=False)
