"""``train(settings)``: train (and evaluate) a parsed run in its run directory."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from callbacks import CurriculumCallback, DeferredRequeue, FixedTestSetEvaluation, StepCheckpoint
from callbacks.fixed_test_set import FixedTestSet
from loopformer.checkpoints import SafeCheckpointIO, safe_load
from loopformer.config import Settings, TrainingRun, parse
from loopformer.csvlog import CSVMetricsLogger
from loopformer.data import PromptDataModule
from loopformer.errors import ConfigError
from loopformer.evaluate import evaluate_run
from loopformer.models import ModelConfig
from loopformer.module import LoopformerModule
from loopformer.rundir import RunDir

log = logging.getLogger(__name__)


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's start-up tip for its cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())

# the model fields a checkpoint must agree on to be resumed
SHAPE_FIELDS = ("family", "n_dims", "n_positions", "n_embd", "n_layer", "n_head", "mixer",
                "ssm_d_state", "ssm_d_conv", "vocab", "n_classes")


@dataclass
class RunResult:
    run_dir: Path
    global_step: int
    test_metrics: dict = field(default_factory=dict)
    eval_results: dict | None = None


# ----------------------------------------------------------------------------- resume


def check_compatible(saved: dict, s: Settings, path: Path) -> None:
    """Refuse to resume ``path`` with a model of a different shape."""
    old = saved.get("model", {})
    if old:  # saved before the read-in and read-out were fields: vectors and regression
        old = {"vocab": ModelConfig.vocab, "n_classes": ModelConfig.n_classes, **old}
    new = s.model.to_dict()
    diff = [f"model.{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}"
            for k in SHAPE_FIELDS if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"ckpt_path={path} was trained with another model shape ("
                          + "; ".join(diff) + "); resume with the same model settings")


# ----------------------------------------------------------------------------- run dir


def _read_meta(run: RunDir) -> dict:
    """``run.json``: the W&B run id, and the command-line overrides of every launch so far."""
    meta = json.loads(run.meta.read_text()) if run.meta.exists() else {}
    return {"wandb_id": meta.get("wandb_id") or uuid.uuid4().hex[:8],
            "launches": meta.get("launches", [])}


def _write_meta(run: RunDir, config: dict, meta: dict, overrides: list[str] | None) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    run.config.write_text(OmegaConf.to_yaml(config))
    if overrides is not None:  # None: composed in-process, no command line to keep
        meta = {**meta, "launches": [*meta["launches"], {"overrides": overrides}]}
    run.meta.write_text(json.dumps(meta, indent=1))


# ----------------------------------------------------------------------------- build


def build_loggers(s: Settings, run: RunDir, config: dict, resume_step: int | None,
                  wandb_id: str):
    loggers = []
    if s.logger.csv:
        loggers.append(CSVMetricsLogger(run.metrics, resume_step=resume_step))
    w = s.logger.wandb
    if w and w.mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(
            save_dir=str(run.root), project=w.project, entity=w.entity, name=s.name,
            id=wandb_id, resume="allow", mode=w.mode, tags=list(w.tags), notes=w.notes,
            config=config))
    return loggers


def build_callbacks(s: Settings, run: RunDir) -> list[L.Callback]:
    test_set = FixedTestSet(s.function, s.curriculum, s.test.size, s.test.batch_size,
                            s.test.seed)
    cbs = [
        CurriculumCallback(s.curriculum, looped=s.looped, seed=s.seed),
        FixedTestSetEvaluation(test_set, s.test.every_n_steps),
        StepCheckpoint(run, s.checkpoint.every_n_steps,
                       s.checkpoint.keep_every_n_steps),
        DeferredRequeue(),  # SLURM's time-limit warning: checkpoint the step, then requeue
    ]
    for name, c in s.callbacks.items():
        try:
            cb = instantiate(c)
        except InstantiationException as e:  # a _target_ or argument the callback lacks
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"callbacks.{name} could not be built: {first}") from e
        if s.trainer.enable_progress_bar or not isinstance(cb, ProgressBar):
            cbs.append(cb)
    return cbs


def build_trainer(s: Settings, run: RunDir, loggers, callbacks):
    kwargs = s.trainer.as_written()
    kwargs.update(max_epochs=-1, logger=loggers or False,
                  callbacks=callbacks, default_root_dir=str(run.root),
                  # StepCheckpoint is a Lightning Checkpoint, so no default ModelCheckpoint is
                  # added; a ModelCheckpoint from the callbacks group runs beside it
                  enable_checkpointing=True, plugins=[SafeCheckpointIO()],
                  num_sanity_val_steps=0, limit_val_batches=0)
    try:
        return L.Trainer(**kwargs)
    except (TypeError, ValueError, MisconfigurationException) as e:
        raise ConfigError(f"trainer: {e}") from e


def _finish_wandb(loggers) -> None:
    """Close W&B runs, so the next in-process run (a multirun job, a resume) starts its own."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and lg._experiment is not None:
            lg.experiment.finish()


# ----------------------------------------------------------------------------- run


def run(cfg: DictConfig, overrides: list[str] | None = None) -> RunResult:
    """Train the run a composed config describes (tests, tools): :func:`parse`, then
    :func:`train`."""
    return train(parse(cfg), overrides)


def train(job: TrainingRun, overrides: list[str] | None = None) -> RunResult:
    """Train (and evaluate) the run ``job`` describes, in its run directory. ``overrides``,
    the command line that composed it, is kept in the run's ``run.json``."""
    s, run, ckpt = job.settings, job.dir, job.resume
    config = s.to_dict()
    resume_step = None
    if ckpt is not None:
        state = safe_load(ckpt)
        saved_cfg = (state.get("hyper_parameters") or {}).get("config", {})
        check_compatible(saved_cfg, s, ckpt)
        resume_step = int(state.get("global_step", 0))
        del state

    L.seed_everything(s.seed, workers=True, verbose=False)
    module = LoopformerModule(s, config)
    data = PromptDataModule(s.function, s.curriculum, s.data.batch_size, s.seed)
    meta = _read_meta(run)
    loggers = build_loggers(s, run, config, resume_step, meta["wandb_id"])
    callbacks = build_callbacks(s, run)
    trainer = build_trainer(s, run, loggers, callbacks)
    if trainer.is_global_zero:
        _write_meta(run, config, meta, overrides)
    log.info("run directory: %s", run.root)

    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    finally:
        _finish_wandb(loggers)
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("test/")}
    result = RunResult(run.root, trainer.global_step, test_metrics)
    if s.eval.at_end and trainer.is_global_zero:
        result.eval_results = evaluate_run(run.root, settings=s, model=module.eager_model())
    return result
