"""``run(cfg)``: validate a composed config, then train (and evaluate) in its run directory."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from callbacks import CurriculumCallback, FixedTestSetEvaluation, StepCheckpoint
from callbacks.fixed_test_set import FixedTestSet
from loopformer.checkpoints import SafeCheckpointIO, safe_load
from loopformer.config import PerfConfig, RunSpec, build_spec
from loopformer.csvlog import CSVMetricsLogger
from loopformer.data import PromptDataModule
from loopformer.errors import ConfigError
from loopformer.module import LoopformerModule
from loopformer.rundir import RunDir, hydra_output_dir

log = logging.getLogger(__name__)

# the model fields a checkpoint must agree on to be resumed
SHAPE_FIELDS = ("family", "n_dims", "n_positions", "n_embd", "n_layer", "n_head", "mixer",
                "ssm_d_state", "ssm_d_conv")
PRECISIONS_GPU_ONLY = ("16", "16-mixed", "16-true")


@dataclass
class RunResult:
    run_dir: Path
    global_step: int
    test_metrics: dict = field(default_factory=dict)
    eval_results: dict | None = None


# ----------------------------------------------------------------------------- checks


def _device_count(accelerator: str) -> int:
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count()
    if accelerator == "mps":
        return int(torch.backends.mps.is_available())
    return os.cpu_count() or 1


def check_trainer(cfg: DictConfig) -> str:
    """Validate device settings before anything starts; returns the accelerator in use."""
    t = cfg.trainer
    acc = str(t.get("accelerator", "auto"))
    allowed = ("auto", "cpu", "gpu", "cuda", "mps")
    if acc not in allowed:
        raise ConfigError(f"trainer.accelerator={acc!r} is unknown; choose one of "
                          f"{', '.join(allowed)}")
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator} but no CUDA device is visible; "
                          f"use trainer.accelerator=cpu (or auto)")
    precision = str(t.get("precision", "32-true"))
    if acc == "cpu" and precision in PRECISIONS_GPU_ONLY:
        raise ConfigError(f"trainer.precision={precision} (fp16) needs a GPU; on CPU use "
                          f"32-true or bf16-mixed")
    devices = t.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool):
        available = _device_count(acc)
        if devices < 1 and devices != -1:
            raise ConfigError(f"trainer.devices={devices} must be >= 1, -1 or auto")
        if devices > available:
            raise ConfigError(f"trainer.devices={devices} but only {available} {acc} device(s) "
                              f"exist; use trainer.devices=1..{available}")
    strategy = str(t.get("strategy", "auto"))
    n_procs = _n_devices(devices, acc) * int(t.get("num_nodes", 1))
    relaunches = strategy.startswith("ddp") and not any(
        k in strategy for k in ("spawn", "fork", "notebook"))
    external = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if relaunches and n_procs > 1 and _hydra_multirun() and not external:
        # Lightning would start the other ranks by re-running the command line, which in a
        # multirun job starts the whole sweep again
        raise ConfigError(f"trainer.strategy={strategy} with {n_procs} processes cannot run "
                          f"inside a multirun on this launcher; use hydra/launcher=slurm with "
                          f"hydra.launcher.tasks_per_node={n_procs}, or trainer.devices=1")
    return acc


CUDA_GRAPH_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16")


def check_cuda_graph(cfg: DictConfig, perf: PerfConfig, acc: str) -> None:
    """perf.cuda_graph replays forward and backward on one GPU with the optimizer outside the
    graph: refuse the trainer settings it cannot honour, before anything starts."""
    if not perf.cuda_graph:
        return
    t = cfg.trainer
    if acc not in ("gpu", "cuda"):
        raise ConfigError(f"perf.cuda_graph=true needs a CUDA device but the run is on {acc}; "
                          f"use trainer.accelerator=gpu, or perf.cuda_graph=false")
    if t.get("devices", 1) not in (1, "1") or int(t.get("num_nodes", 1)) != 1:
        raise ConfigError(f"perf.cuda_graph=true runs on one GPU; got trainer.devices="
                          f"{t.get('devices')} and trainer.num_nodes={t.get('num_nodes', 1)}")
    precision = str(t.get("precision", "32-true"))
    if precision not in CUDA_GRAPH_PRECISIONS:
        raise ConfigError(f"perf.cuda_graph=true with trainer.precision={precision}; use one "
                          f"of {', '.join(CUDA_GRAPH_PRECISIONS)}")
    if int(t.get("accumulate_grad_batches", 1)) != 1:
        raise ConfigError(f"perf.cuda_graph=true needs trainer.accumulate_grad_batches=1, got "
                          f"{t.accumulate_grad_batches}")
    if t.get("gradient_clip_val") is not None:
        raise ConfigError(f"perf.cuda_graph=true does not clip gradients; set "
                          f"trainer.gradient_clip_val=null (got {t.gradient_clip_val})")


def _n_devices(devices, acc: str) -> int:
    """How many processes Lightning starts per node for ``trainer.devices``."""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip(",")
    if text in ("auto", "-1"):  # auto on CPU is one process; -1 is every device
        return 1 if acc == "cpu" and text == "auto" else _device_count(acc)
    if "," in text:  # "0,1": those device ids
        return len(text.split(","))
    return int(text) if text.isdigit() else 1


def _hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_compatible(saved: dict, cfg: DictConfig, path: Path) -> None:
    """Refuse to resume ``path`` with a model of a different shape."""
    old, new = saved.get("model", {}), OmegaConf.to_container(cfg.model, resolve=True)
    diff = [f"model.{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}"
            for k in SHAPE_FIELDS if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"ckpt_path={path} was trained with another model shape ("
                          + "; ".join(diff) + "); resume with the same model settings")


# ----------------------------------------------------------------------------- run dir


def requeued_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to continue from when SLURM requeued this job (``SLURM_RESTART_COUNT``
    >= 1: preemption, or a timeout resubmitted by submitit or by Lightning's auto-requeue),
    which re-runs the very same command: the newest of Lightning's ``hpc_ckpt_N.ckpt`` and
    our ``checkpoints/last.ckpt``; None when not requeued or nothing was saved yet."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    found = [p for p in (*run_dir.glob("hpc_ckpt_*.ckpt"), RunDir(run_dir).last_ckpt)
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_paths(cfg: DictConfig) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (or None)."""
    ckpt = cfg.get("ckpt_path")
    run_dir = cfg.get("run_dir")
    if ckpt not in (None, "", "last"):
        p = Path(str(ckpt))
        if p.is_dir():  # a run directory: continue it in place
            return p, RunDir(p).last_ckpt
        if not p.is_file():
            raise ConfigError(f"ckpt_path={ckpt} is neither a checkpoint file nor a run "
                              f"directory")
        if run_dir is None and p.parent.name == RunDir(p.parent.parent).checkpoints.name:
            run_dir = p.parent.parent
    if run_dir is None:
        if ckpt == "last":
            raise ConfigError("ckpt_path=last needs the run to continue: add run_dir=PATH, or "
                              "pass ckpt_path=PATH_TO_RUN_DIR")
        run_dir = hydra_output_dir() or Path("logs/runs") / datetime.now().strftime(
            "%Y-%m-%d_%H-%M-%S")
    run_dir = Path(str(run_dir))
    if ckpt in (None, "", "last") and (requeued := requeued_checkpoint(run_dir)) is not None:
        return run_dir, requeued
    if ckpt == "last":
        last = RunDir(run_dir).last_ckpt
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last but {last} does not exist; drop ckpt_path to "
                              f"start a new run")
        return run_dir, last
    return run_dir, (Path(str(ckpt)) if ckpt else None)


def _read_meta(run: RunDir) -> dict:
    """``run.json``: the W&B run id, and the command-line overrides of every launch so far."""
    meta = json.loads(run.meta.read_text()) if run.meta.exists() else {}
    return {"wandb_id": meta.get("wandb_id") or uuid.uuid4().hex[:8],
            "launches": meta.get("launches", [])}


def _write_meta(run: RunDir, cfg: DictConfig, meta: dict, overrides: list[str] | None) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    run.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if overrides is not None:  # None: composed in-process, no command line to keep
        meta = {**meta, "launches": [*meta["launches"], {"overrides": overrides}]}
    run.meta.write_text(json.dumps(meta, indent=1))


# ----------------------------------------------------------------------------- build


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None, wandb_id: str):
    loggers = []
    lcfg = cfg.get("logger") or {}
    if lcfg.get("csv", True):
        loggers.append(CSVMetricsLogger(RunDir(run_dir).metrics, resume_step=resume_step))
    w = lcfg.get("wandb")
    if w and w.get("mode", "offline") != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(
            save_dir=str(run_dir), project=w.get("project", "loopformer"),
            entity=w.get("entity"), name=cfg.get("name"), id=wandb_id, resume="allow",
            mode=w.get("mode", "offline"), tags=list(w.get("tags") or []),
            notes=w.get("notes"), config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def build_callbacks(cfg: DictConfig, spec: RunSpec, run_dir: Path) -> list[L.Callback]:
    test_set = FixedTestSet(spec.task, spec.curriculum, spec.test.size, spec.test.batch_size,
                            spec.test.seed)
    cbs = [
        CurriculumCallback(spec.curriculum, looped=spec.looped, seed=spec.seed),
        FixedTestSetEvaluation(test_set, spec.test.every_n_steps),
        StepCheckpoint(RunDir(run_dir), spec.checkpoint_every, spec.keep_every),
    ]
    show_progress = cfg.trainer.get("enable_progress_bar", True)
    for name, c in (cfg.get("callbacks") or {}).items():
        try:
            cb = instantiate(c)
        except Exception as e:
            raise ConfigError(f"callbacks.{name} could not be built: {e}") from e
        if show_progress or not isinstance(cb, ProgressBar):
            cbs.append(cb)
    return cbs


def build_trainer(cfg: DictConfig, spec: RunSpec, run_dir: Path, loggers, callbacks):
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.update(max_steps=spec.max_steps, max_epochs=-1, logger=loggers or False,
                  callbacks=callbacks, default_root_dir=str(run_dir),
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
    """Train the run described by ``cfg``; every check happens before anything is written.
    ``overrides``, the command line that composed ``cfg``, is kept in the run's ``run.json``."""
    spec = build_spec(cfg)  # eval included: its baselines are built here
    check_cuda_graph(cfg, spec.perf, check_trainer(cfg))
    run_dir, ckpt = resolve_paths(cfg)
    resume_step = None
    if ckpt is not None:
        state = safe_load(ckpt)
        saved_cfg = (state.get("hyper_parameters") or {}).get("config", {})
        check_compatible(saved_cfg, cfg, ckpt)
        resume_step = int(state.get("global_step", 0))
        del state
    if ckpt is None and RunDir(run_dir).last_ckpt.exists():
        raise ConfigError(f"run_dir={run_dir} already holds a run; continue it with "
                          f"ckpt_path=last or choose another run_dir")

    L.seed_everything(spec.seed, workers=True, verbose=False)
    module = LoopformerModule(spec, OmegaConf.to_container(cfg, resolve=True))
    data = PromptDataModule(spec.task, spec.curriculum, spec.batch_size, spec.seed)
    meta = _read_meta(RunDir(run_dir))
    wandb_id = meta["wandb_id"]
    loggers = build_loggers(cfg, run_dir, resume_step, wandb_id)
    callbacks = build_callbacks(cfg, spec, run_dir)
    trainer = build_trainer(cfg, spec, run_dir, loggers, callbacks)
    if trainer.is_global_zero:
        _write_meta(RunDir(run_dir), cfg, meta, overrides)
    log.info("run directory: %s", run_dir)

    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    finally:
        _finish_wandb(loggers)
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("test/")}
    result = RunResult(run_dir, trainer.global_step, test_metrics)
    if spec.eval.at_end and trainer.is_global_zero:
        from loopformer.evaluate import evaluate_run

        result.eval_results = evaluate_run(run_dir, spec=spec, model=module.eager_model())
    return result
