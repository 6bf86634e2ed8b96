"""The composed Hydra config, read once into one typed object: :class:`Settings`.

Each config group rests on a typed schema (the dataclasses below, :class:`ModelConfig`,
:class:`Curriculum`); :meth:`Settings.from_config` merges the whole composed config into them
(OmegaConf structured configs), so a wrong type or an unknown key anywhere, top level
included, is refused with its full key, and a non-finite number too. Each schema checks its
own values in ``__post_init__``, next to its fields; :class:`Settings` checks the rules that
span groups. :func:`parse` adds what a training command needs from the machine and the disk
(the devices, the run directory, the checkpoint to resume), so everything is checked before
any directory is written or any step is trained. ``conf/`` holds the values a run uses; a
dataclass default fills a key that a config leaves out (an older run's ``config.yaml``) and
equals ``conf/``'s value (tests check it). Every error is a :class:`ConfigError` that names
the key to change and the values it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from loopformer.baselines import Baseline, allowed_names, build_baselines
from loopformer.curriculum import Curriculum
from loopformer.errors import ConfigError, typed
from loopformer.models import ModelConfig, keep_mask_len
from loopformer.ood import resolve as resolve_ood
from loopformer.rundir import RunDir, hydra_output_dir
from loopformer.tasks import Task, build_task

SCHEDULES = ("constant", "cosine", "wsd")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SEED_MAX = 2**32 - 1  # Lightning's seed_everything seeds NumPy, which takes 0..2**32-1


def at_least(key: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}")


def check_seed(key: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}={value} is outside the seeds the generators take; use "
                          f"0..{SEED_MAX}")


def in_range(key: str, value: float, low: float, high: float, high_open: bool = False,
             low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise ConfigError(f"{key}={value} must be in {'(' if low_open else '['}{low}, "
                          f"{high}{')' if high_open else ']'}")


def choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is unknown; choose one of "
                          f"{', '.join(map(str, allowed))}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | cosine | wsd
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.0  # the decay's floor (cosine, wsd), as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the final share of the steps that decays linearly

    def __post_init__(self):
        self.betas = tuple(self.betas)  # OmegaConf hands a list
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr={self.lr} must be > 0")
        at_least("optimizer.weight_decay", self.weight_decay, 0)
        for i, beta in enumerate(self.betas):
            in_range(f"optimizer.betas[{i}]", beta, 0, 1, high_open=True)
        choice("optimizer.schedule", self.schedule, SCHEDULES)
        at_least("optimizer.warmup_steps", self.warmup_steps, 0)
        in_range("optimizer.min_lr_ratio", self.min_lr_ratio, 0, 1)
        in_range("optimizer.decay_fraction", self.decay_fraction, 0, 1, low_open=True)

    def lr_factor(self, step: int, total: int) -> float:
        """The learning rate at optimizer step ``step`` of ``total``, as a fraction of lr:
        linear warm-up over ``warmup_steps``, then constant, cosine to ``min_lr_ratio`` at
        ``total``, or wsd (warm-up, stable, decay): constant, then linear to ``min_lr_ratio``
        over the last ``decay_fraction`` of the steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        floor = self.min_lr_ratio
        if self.schedule == "cosine":
            progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "wsd":
            decay = max(1, round(self.decay_fraction * total))
            progress = min(1.0, max(0.0, (step - (total - decay)) / decay))
            return 1.0 - (1.0 - floor) * progress
        return 1.0


@dataclass
class TestSetConfig:
    every_n_steps: int = 10000  # 0 disables
    size: int = 100000  # prompts
    batch_size: int = 1000  # prompts per evaluation batch
    seed: int = 1

    def __post_init__(self):
        at_least("test.every_n_steps", self.every_n_steps, 0)
        at_least("test.size", self.size, 1)
        at_least("test.batch_size", self.batch_size, 1)
        check_seed("test.seed", self.seed)


@dataclass
class PerfConfig:
    compile: bool = False  # torch.compile every block (CUDA or CPU with a C++ compiler)
    # torch.compile mode; reduce-overhead replays each compiled block as a CUDA graph (GPU only)
    compile_mode: str = "default"
    # capture forward + backward of the whole step as one CUDA graph per shape (GPU only)
    cuda_graph: bool = False
    activation_checkpointing: bool = False  # recompute window iterations in backward
    threads: int | None = None  # torch intra-op threads; None: torch's default
    matmul_precision: str = "highest"  # float32 matmuls: highest | high (TF32) | medium

    def __post_init__(self):
        choice("perf.compile_mode", self.compile_mode, COMPILE_MODES)
        if self.cuda_graph and self.compile and self.compile_mode != "default":
            raise ConfigError(f"perf.cuda_graph=true already replays the step as a CUDA graph; "
                              f"use perf.compile_mode=default with it, not "
                              f"{self.compile_mode}")
        if self.cuda_graph and self.activation_checkpointing:
            raise ConfigError("perf.cuda_graph=true cannot be combined with "
                              "perf.activation_checkpointing=true; set one of them to false")
        choice("perf.matmul_precision", self.matmul_precision, ("highest", "high", "medium"))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"perf.threads={self.threads} must be >= 1 (or null)")

    def apply(self) -> None:
        """Process-wide settings, applied before training starts."""
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.set_float32_matmul_precision(self.matmul_precision)


def check_device(key: str, device: str) -> str:
    """``device`` as torch writes it, if it names a torch device this machine has."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"{key}={device!r} is not a torch device; use cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device} but no CUDA device is visible; use {key}=cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={device} but no MPS device is visible; use {key}=cpu")
    return str(dev)


@dataclass
class DialConfig:
    """``eval.dial``: a token task scored beyond its trained depth dial (hops, or a parity's
    length) up to ``factor`` times it, each value at the rule's loop count and at the trained
    one (:mod:`loopformer.dial`)."""

    factor: int | None = None  # score the dial up to factor x the trained value; null: not
    n_prompts: int = 256  # fresh prompts per dial value

    def __post_init__(self):
        if self.factor is not None:
            at_least("eval.dial.factor", self.factor, 1)
        at_least("eval.dial.n_prompts", self.n_prompts, 1)


@dataclass
class EvalConfig:
    """The ``eval`` block: how a trained model is scored against baselines."""

    at_end: bool  # evaluate when training ends
    n_prompts: int  # fresh prompts at the final curriculum shape
    seed: int  # their seed, and the bootstrap's
    # loop counts scored beyond the trained one (the task's YAML): a list, one count or null
    extra_loops: tuple[int, ...] | None
    baselines: Any  # "default" (the task's eval.suite), or a list of names and entries
    batch_size: int  # prompts per model forward
    n_resamples: int  # bootstrap resamples of the 90% band
    device: str | None  # where the model runs; null: the GPU if there is one
    ckpt: str  # the checkpoint `python -m loopformer.evaluate` scores: last | step=N | a path
    suite: Any = None  # the task's baselines (conf/task/*.yaml)
    # out-of-distribution shifts (loopformer/ood.py): none | default (the task's ood_suite) |
    # a list of shift names, as written; ``shifts`` holds the names it selects
    ood: Any = "none"
    ood_suite: Any = None  # the shifts that apply to the task (conf/task/*.yaml); none: none
    # long-loop scoring stops computing a prompt whose relative state change stayed below this
    # for SETTLE_PATIENCE loops, carrying its last prediction forward; null: every prompt
    settle_tol: float | None = None
    dial: DialConfig = field(default_factory=DialConfig)  # the depth dial beyond training

    def __post_init__(self):
        self.extra_loops = tuple(self.extra_loops or ())  # null: none
        for key in ("n_prompts", "batch_size", "n_resamples"):
            at_least(f"eval.{key}", getattr(self, key), 1)
        for n in self.extra_loops:
            at_least("eval.extra_loops", n, 1)
        check_seed("eval.seed", self.seed)
        if self.device is not None:
            check_device("eval.device", self.device)
        if self.settle_tol is not None and not 0 < self.settle_tol < 1:
            raise ConfigError(f"eval.settle_tol={self.settle_tol} must be in (0, 1) (a "
                              f"relative state change) or null")

    def check(self) -> None:
        """Build the baselines and resolve the shifts: a bad one is refused before training."""
        self.predictors  # noqa: B018
        self.shifts  # noqa: B018

    @cached_property
    def predictors(self) -> tuple[Baseline, ...]:
        """The baselines that ``baselines`` names, built."""
        return tuple(build_baselines(self.baselines, self.suite))

    @cached_property
    def shifts(self) -> tuple[str, ...]:
        """The out-of-distribution shifts that ``ood`` selects (checked against the task's)."""
        return resolve_ood(self.ood, self.ood_suite)


@dataclass
class DataConfig:
    batch_size: int  # prompts per training batch

    def __post_init__(self):
        at_least("data.batch_size", self.batch_size, 1)


@dataclass
class CheckpointConfig:
    every_n_steps: int  # resumable checkpoints/last.ckpt
    keep_every_n_steps: int  # permanent checkpoints/step=N.ckpt (0 disables)

    def __post_init__(self):
        at_least("checkpoint.every_n_steps", self.every_n_steps, 1)
        at_least("checkpoint.keep_every_n_steps", self.keep_every_n_steps, 0)


@dataclass
class WandbConfig:
    project: str = "loopformer"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)
    notes: str | None = None

    def __post_init__(self):
        choice("logger.wandb.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class LoggerConfig:
    csv: bool = True  # RUN_DIR/metrics.csv
    wandb: WandbConfig | None = None  # null: no W&B run


# ----------------------------------------------------------------------------- trainer

# Lightning's own values; fp16 needs a GPU, the CUDA graph step takes fp32 or bf16
PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16",
              "bf16-mixed", "bf16-true", "transformer-engine", "transformer-engine-float16")
PRECISIONS_GPU_ONLY = ("16", "16-mixed", "16-true")
CUDA_GRAPH_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Trainer arguments the run sets itself (from checkpoint.*, logger, callbacks, run_dir)
TRAINER_OWN = ("max_epochs", "logger", "callbacks", "default_root_dir", "enable_checkpointing",
               "plugins", "num_sanity_val_steps", "limit_val_batches")
MAX_TIME_UNITS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds",
                  "microseconds")


@dataclass
class TrainerConfig:
    """The ``trainer`` block: Lightning ``Trainer`` arguments. The ones loopformer reads or
    checks are fields (defaults: ``conf/trainer/default.yaml``'s); any other key passes to
    Lightning untouched (``others``), which refuses one it does not know when the Trainer is
    built, before anything is written."""

    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: Any = 1  # a count, -1 (all), auto, a list of ids or "0,1"
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    num_nodes: int = 1
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed (GPU only) | ...
    max_steps: int = 100000
    max_time: Any = None  # DD:HH:MM:SS, or timedelta's arguments ({hours: 1}); null: none
    log_every_n_steps: int = 100  # 0: no metrics logged
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    others: dict[str, Any] = field(default_factory=dict)  # any other Trainer argument

    def __post_init__(self):
        own = sorted(set(self.others) & set(TRAINER_OWN))
        if own:
            raise ConfigError(f"trainer.{own[0]} is set by loopformer itself (from "
                              f"checkpoint.*, logger, callbacks, run_dir); remove it")
        at_least("trainer.max_steps", self.max_steps, 1)
        at_least("trainer.num_nodes", self.num_nodes, 1)
        at_least("trainer.accumulate_grad_batches", self.accumulate_grad_batches, 1)
        at_least("trainer.log_every_n_steps", self.log_every_n_steps, 0)
        choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        choice("trainer.precision", self.precision, PRECISIONS)
        devices = self.devices
        if isinstance(devices, int) and not isinstance(devices, bool) and devices < 1 \
                and devices != -1:
            raise ConfigError(f"trainer.devices={devices} must be >= 1, -1 or auto")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise ConfigError(f"trainer.gradient_clip_val={self.gradient_clip_val!r} must be a "
                              f"number >= 0 (or null)")
        self._check_max_time()

    def _check_max_time(self) -> None:
        if isinstance(self.max_time, dict):  # Lightning takes timedelta's arguments too
            for unit, value in self.max_time.items():
                choice("trainer.max_time key", unit, MAX_TIME_UNITS)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError(f"trainer.max_time.{unit}={value!r} must be a number >= 0")
        elif self.max_time is not None:
            parts = str(self.max_time).split(":")
            if len(parts) != 4 or not all(p.isdigit() for p in parts) \
                    or not any(int(p) for p in parts):
                raise ConfigError(f"trainer.max_time={self.max_time!r} is not a positive "
                                  f"duration; use DD:HH:MM:SS, e.g. 00:01:30:00 (or null)")

    @classmethod
    def split(cls, block: dict) -> dict:
        """A ``trainer`` block as written (one flat mapping) -> this schema's shape: the
        fields, and every other key under ``others``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"others"}
        return {**{k: v for k, v in block.items() if k in names},
                "others": {k: v for k, v in block.items() if k not in names}}

    def as_written(self) -> dict:
        """The block as one flat mapping again: ``config.yaml``, the Trainer's arguments."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "others"}
        return {**out, **self.others}


# ----------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """The composed config, typed: every key a run reads, checked. ``task.*`` are the task
    class's own arguments (checked by :func:`build_task`), ``trainer`` Lightning's
    (:class:`TrainerConfig`), ``callbacks`` Lightning callbacks by ``_target_``.

    Read a config with :meth:`from_config`: it types every group, then builds the task, the
    baselines and the shifts the run names (:meth:`check`), outside the typing step, so that a
    bug in their code shows its traceback instead of reading as a bad value."""

    seed: int  # the run's seed: prompts, loop jitter, initial weights
    model: ModelConfig
    task: dict[str, Any]  # name: the task class; the rest: its arguments
    curriculum: Curriculum
    data: DataConfig
    optimizer: OptimConfig
    test: TestSetConfig
    checkpoint: CheckpointConfig
    trainer: TrainerConfig  # Lightning Trainer arguments
    eval: EvalConfig
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)  # extra Lightning callbacks
    perf: PerfConfig = field(default_factory=PerfConfig)  # runs saved before it lack it
    name: str = ""  # the run's name (W&B, plot titles)
    run_dir: str | None = None  # null: logs/runs/<timestamp> (Hydra's output directory)
    ckpt_path: str | None = None  # resume: last | a .ckpt file | a run directory

    def __post_init__(self):
        check_seed("seed", self.seed)
        model, cur = self.model, self.curriculum
        cur.validate()
        if cur.dims.end > model.n_dims:
            raise ConfigError(f"curriculum.dims.end={cur.dims.end} exceeds model.n_dims="
                              f"{model.n_dims}; use 1..{model.n_dims}")
        if cur.points.end > model.n_positions:
            raise ConfigError(f"curriculum.points.end={cur.points.end} exceeds model.n_positions="
                              f"{model.n_positions}; use curriculum.points.end <= "
                              f"{model.n_positions} or raise model.n_positions")
        if self.looped:
            seq_len = model.seq_len(cur.points.end)  # tokens of the longest prompt
            keep_mask_len(model.keep_tokens, seq_len, cur.points.end)
            if model.keep_tokens > seq_len:  # would silently keep everything
                raise ConfigError(f"model.keep_tokens={model.keep_tokens:g} exceeds the "
                                  f"{seq_len} tokens of a {cur.points.end}-point prompt; use "
                                  f"-{seq_len - 1}..{seq_len} or a fraction in (0,1)")
        if not self.looped and not cur.loops_rule.fixed:
            raise ConfigError(f"curriculum.loops_rule.kind={cur.loops_rule.kind} sets a loop "
                              f"count, which model.family={model.family} has not (its depth is "
                              f"model.n_layer); use curriculum.loops_rule.kind=fixed")
        for name, c in self.callbacks.items():
            if not isinstance(c, dict) or not isinstance(c.get("_target_"), str):
                raise ConfigError(f"callbacks.{name} must be a mapping with a _target_ (the "
                                  f"callback's class) and its arguments")

    def check(self) -> Settings:
        """Build what the settings name (the task, the baselines, the shifts): a bad value is a
        ConfigError, a bug in their code its own exception. Returns ``self``."""
        self.function.check_curriculum(self.curriculum)
        self.check_read_out()
        self.eval.check()
        self.check_baselines()
        if self.function.n_classes:
            self.refuse_regression_features()
        self.check_dial()
        return self

    def check_baselines(self) -> None:
        """The baselines must answer what the task asks: numbers for regression, class ids
        for classes over vector prompts; a token task has none."""
        task = self.function
        classifies = bool(task.n_classes)
        wrong = [p.name for p in self.eval.predictors if p.classifies != classifies]
        if task.vocab and self.eval.predictors:
            raise ConfigError(f"eval.baselines={self.eval.baselines} fits baselines to vector "
                              f"prompts; task.name={task.name} is tokens: use eval.baselines=[]")
        if wrong:
            kind = "classifiers" if classifies else "regressors"
            raise ConfigError(f"eval.baselines={self.eval.baselines} asks for "
                              f"{', '.join(wrong)}, but task.name={task.name} takes {kind}; "
                              f"allowed: {allowed_names(classifies)}")

    def check_dial(self) -> None:
        """``eval.dial.factor``: the task has a dial and ``model.n_positions`` holds the
        longest prompt it scores."""
        factor = self.eval.dial.factor
        if factor is None:
            return
        final = self.curriculum.final
        values = self.function.dial_values(self.curriculum, factor)
        longest = max(self.function.dial_shape(v, final).n_points for v in values)
        if longest > self.model.n_positions:
            raise ConfigError(f"eval.dial.factor={factor} scores prompts of up to {longest} "
                              f"tokens, beyond model.n_positions={self.model.n_positions}; "
                              f"use model.n_positions >= {longest} or a smaller "
                              f"eval.dial.factor")

    def check_read_out(self) -> None:
        """The model's read-in and read-out must be the task's (its YAML sets them)."""
        task, m = self.function, self.model
        kind = (f"a token task of {task.vocab} symbols" if task.vocab
                else "a task of vector prompts")
        if m.vocab != task.vocab:
            raise ConfigError(f"model.vocab={m.vocab} does not fit task.name={task.name}, "
                              f"{kind}; use model.vocab={task.vocab}")
        if m.n_classes != task.n_classes:
            out = (f"{task.n_classes} classes" if task.n_classes
                   else "one number per token (regression)")
            raise ConfigError(f"model.n_classes={m.n_classes} does not fit task.name="
                              f"{task.name}, whose read-out is {out}; use model.n_classes="
                              f"{task.n_classes}")

    def refuse_regression_features(self) -> None:
        """A classification task has no shifted vector prompts."""
        name = self.function.name
        if self.eval.shifts:
            raise ConfigError(f"eval.ood={self.eval.ood} shifts vector prompts, which do not "
                              f"apply to task.name={name} (classes); use eval.ood=none")

    @cached_property
    def function(self) -> Task:
        """The task (the function class prompts are drawn from), built from ``task.*``."""
        return build_task(self.task.get("name"), self.model.n_dims, **self.task_params)

    @property
    def task_params(self) -> dict:
        return {k: v for k, v in self.task.items() if k != "name"}

    @property
    def looped(self) -> bool:
        return self.model.family == "looped"

    def to_dict(self) -> dict:
        """The settings as plain containers, as a config writes them (``config.yaml``, the
        checkpoint's copy)."""
        out = OmegaConf.to_container(OmegaConf.structured(self))
        out["trainer"] = self.trainer.as_written()
        return out

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        """``cfg`` (a composed config, or a run's ``config.yaml``) read into Settings; its
        own values checked, not the machine's devices nor the disk."""
        try:
            raw = OmegaConf.to_container(cfg, resolve=True)
        except InterpolationResolutionError as e:
            first = str(e.msg).strip().splitlines()[0]
            raise ConfigError(f"{e.full_key}: {first}") from e
        ev = raw.get("eval") or {}
        if isinstance(ev.get("extra_loops"), int):  # one count
            ev["extra_loops"] = [ev["extra_loops"]]
        if isinstance(raw.get("trainer"), dict):
            raw["trainer"] = TrainerConfig.split(raw["trainer"])
        return typed(cls, raw).check()


# ----------------------------------------------------------------------------- machine


def _device_count(accelerator: str) -> int:
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count()
    if accelerator == "mps":
        return int(torch.backends.mps.is_available())
    return os.cpu_count() or 1


def _n_devices(devices, acc: str) -> int:
    """How many processes Lightning starts per node for ``trainer.devices``."""
    if isinstance(devices, (list, tuple)):
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


def _external_launcher() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def check_trainer(t: TrainerConfig) -> str:
    """The device rules this machine decides; returns the accelerator training runs on."""
    acc = t.accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator} but no CUDA device is "
                          f"visible; use trainer.accelerator=cpu (or auto)")
    if acc == "cpu" and t.precision in PRECISIONS_GPU_ONLY:
        raise ConfigError(f"trainer.precision={t.precision} (fp16) needs a GPU; on CPU use "
                          f"32-true or bf16-mixed")
    if isinstance(t.devices, int) and not isinstance(t.devices, bool):
        available = _device_count(acc)
        if t.devices > available:
            raise ConfigError(f"trainer.devices={t.devices} but only {available} {acc} "
                              f"device(s) exist; use trainer.devices=1..{available}")
    n_procs = _n_devices(t.devices, acc) * t.num_nodes
    relaunches = t.strategy.startswith("ddp") and not any(
        k in t.strategy for k in ("spawn", "fork", "notebook"))
    if relaunches and n_procs > 1 and _hydra_multirun() and not _external_launcher():
        # Lightning would start the other ranks by re-running the command line, which in a
        # multirun job starts the whole sweep again
        raise ConfigError(f"trainer.strategy={t.strategy} with {n_procs} processes cannot run "
                          f"inside a multirun on this launcher; use hydra/launcher=slurm with "
                          f"hydra.launcher.tasks_per_node={n_procs}, or trainer.devices=1")
    return acc


def check_cuda_graph(s: Settings, acc: str) -> None:
    """perf.cuda_graph replays forward and backward on one GPU with the optimizer outside the
    graph: refuse the trainer settings it cannot honour, before anything starts."""
    if not s.perf.cuda_graph:
        return
    t = s.trainer
    if acc not in ("gpu", "cuda"):
        raise ConfigError(f"perf.cuda_graph=true needs a CUDA device but the run is on {acc}; "
                          f"use trainer.accelerator=gpu, or perf.cuda_graph=false")
    if t.devices not in (1, "1") or t.num_nodes != 1:
        raise ConfigError(f"perf.cuda_graph=true runs on one GPU; got trainer.devices="
                          f"{t.devices} and trainer.num_nodes={t.num_nodes}")
    if t.precision not in CUDA_GRAPH_PRECISIONS:
        raise ConfigError(f"perf.cuda_graph=true with trainer.precision={t.precision}; use one "
                          f"of {', '.join(CUDA_GRAPH_PRECISIONS)}")
    if t.accumulate_grad_batches != 1:
        raise ConfigError(f"perf.cuda_graph=true needs trainer.accumulate_grad_batches=1, got "
                          f"{t.accumulate_grad_batches}")
    if t.gradient_clip_val is not None:
        raise ConfigError(f"perf.cuda_graph=true does not clip gradients; set "
                          f"trainer.gradient_clip_val=null (got {t.gradient_clip_val:g})")


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


def resolve_paths(s: Settings) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from, from ``run_dir`` and
    ``ckpt_path``; a new run may not reuse a directory that holds one."""
    ckpt, run_dir = s.ckpt_path, s.run_dir
    if ckpt not in (None, "", "last"):
        p = Path(ckpt)
        if p.is_dir():  # a run directory: continue it in place
            return (p, RunDir(p).last_ckpt)
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
    run_dir = Path(run_dir)
    if ckpt in (None, "", "last") and (requeued := requeued_checkpoint(run_dir)) is not None:
        return (run_dir, requeued)
    if ckpt == "last":
        last = RunDir(run_dir).last_ckpt
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last but {last} does not exist; drop ckpt_path to "
                              f"start a new run")
        return (run_dir, last)
    if not ckpt and RunDir(run_dir).last_ckpt.exists():
        raise ConfigError(f"run_dir={run_dir} already holds a run; continue it with "
                          f"ckpt_path=last or choose another run_dir")
    return (run_dir, Path(ckpt) if ckpt else None)


@dataclass(frozen=True)
class TrainingRun:
    """A training command, read once: its settings, the run directory it writes and the
    checkpoint it continues from (None: a new run)."""

    settings: Settings
    dir: RunDir
    resume: Path | None


def parse(cfg: DictConfig) -> TrainingRun:
    """A training command's config, read once: :meth:`Settings.from_config`, then the rules
    of this machine (devices, the CUDA graph step) and of the disk (run directory, resume)."""
    s = Settings.from_config(cfg)
    check_cuda_graph(s, check_trainer(s.trainer))
    root, resume = resolve_paths(s)
    return TrainingRun(s, RunDir(root), resume)
