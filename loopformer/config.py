"""Turn a composed Hydra config into validated, typed run settings.

The config groups rest on typed schemas, the dataclasses below and :class:`ModelConfig`,
:class:`Curriculum`: :func:`build_spec` reads them once (OmegaConf structured configs, so a
wrong type or unknown key is refused with its full key), then checks the rules that span
fields. ``conf/`` holds the values a run uses; a dataclass default fills a key that a config
leaves out (an older run's ``config.yaml``), and equals ``conf/``'s value (tests check it).
Everything is checked here, before any directory is written or any step is trained; each
error names the override to change and the values it accepts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from loopformer.baselines import build_baselines
from loopformer.curriculum import Curriculum
from loopformer.errors import ConfigError, typed
from loopformer.models import ModelConfig, keep_mask_len
from loopformer.ood import resolve as resolve_ood
from loopformer.tasks import Task, build_task

SCHEDULES = ("constant", "cosine", "wsd")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"perf.compile_mode={self.compile_mode!r} is unknown; "
                              f"choose one of {', '.join(COMPILE_MODES)}")
        if self.cuda_graph and self.compile and self.compile_mode != "default":
            raise ConfigError(f"perf.cuda_graph=true already replays the step as a CUDA graph; "
                              f"use perf.compile_mode=default with it, not "
                              f"{self.compile_mode}")
        if self.cuda_graph and self.activation_checkpointing:
            raise ConfigError("perf.cuda_graph=true cannot be combined with "
                              "perf.activation_checkpointing=true; set one of them to false")
        allowed = ("highest", "high", "medium")
        if self.matmul_precision not in allowed:
            raise ConfigError(f"perf.matmul_precision={self.matmul_precision!r} is unknown; "
                              f"choose one of {', '.join(allowed)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"perf.threads={self.threads} must be >= 1 (or null)")

    def apply(self) -> None:
        """Process-wide settings, applied before training starts."""
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.set_float32_matmul_precision(self.matmul_precision)


@dataclass
class EvalConfig:
    """The ``eval`` block: how a trained model is scored against baselines."""

    at_end: bool  # evaluate when training ends
    n_prompts: int  # fresh prompts at the final curriculum shape
    seed: int  # their seed, and the bootstrap's
    # loop counts scored beyond the trained one (the task's YAML): a list, one count or null
    extra_loops: tuple[int, ...] | None
    # eval.baselines as written ("default": the task's eval.suite); in a RunSpec, the built
    # Baseline objects (build_baselines checks them)
    baselines: Any
    batch_size: int  # prompts per model forward
    n_resamples: int  # bootstrap resamples of the 90% band
    device: str | None  # where the model runs; null: the GPU if there is one
    ckpt: str  # the checkpoint `python -m loopformer.evaluate` scores: last | step=N | a path
    suite: Any = None  # the task's baselines (conf/task/*.yaml)
    # out-of-distribution shifts (loopformer/ood.py): none | default (the task's ood_suite) |
    # a list of shift names; in a RunSpec, the tuple of names (ood.resolve checks them)
    ood: Any = "none"
    ood_suite: Any = None  # the shifts that apply to the task (conf/task/*.yaml); none: none


@dataclass
class DataConfig:
    batch_size: int  # prompts per training batch


@dataclass
class CheckpointConfig:
    every_n_steps: int  # resumable checkpoints/last.ckpt
    keep_every_n_steps: int  # permanent checkpoints/step=N.ckpt (0 disables)


@dataclass
class TrainerSteps:
    max_steps: int  # the rest of ``trainer`` is Lightning's, checked by its Trainer


@dataclass
class Settings:
    """The typed part of the composed config (``task.*`` is the task class's, checked by
    build_task; ``trainer``, ``logger`` and ``callbacks`` are Lightning's)."""

    seed: int
    model: ModelConfig
    curriculum: Curriculum
    data: DataConfig
    optimizer: OptimConfig
    test: TestSetConfig
    checkpoint: CheckpointConfig
    trainer: TrainerSteps
    eval: EvalConfig
    perf: PerfConfig = field(default_factory=PerfConfig)  # runs saved before it lack it


@dataclass(frozen=True)
class RunSpec:
    """The validated settings of one training run."""

    model: ModelConfig
    task: Task
    task_params: dict
    curriculum: Curriculum
    batch_size: int
    optim: OptimConfig
    test: TestSetConfig
    checkpoint_every: int
    keep_every: int
    seed: int
    max_steps: int
    eval: EvalConfig
    perf: PerfConfig
    name: str  # the run's name (W&B, plot titles)

    @property
    def looped(self) -> bool:
        return self.model.family == "looped"


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be {bound}")


def _plain(value):
    """A config node as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def settings(cfg: DictConfig) -> Settings:
    """The typed part of ``cfg``: wrong types and unknown keys are refused here."""
    raw = {f.name: _plain(cfg[f.name]) for f in dataclasses.fields(Settings)
           if f.name in cfg and f.name != "trainer"}
    raw["trainer"] = {"max_steps": OmegaConf.select(cfg, "trainer.max_steps")}
    ev = raw.get("eval") or {}
    if isinstance(ev.get("extra_loops"), int):  # one count
        ev["extra_loops"] = [ev["extra_loops"]]
    return typed(Settings, raw)


def eval_config(ev: EvalConfig) -> EvalConfig:
    """``ev`` with its baselines built (so a bad one is refused before training)."""
    out = dataclasses.replace(ev, extra_loops=tuple(ev.extra_loops or ()),
                              baselines=tuple(build_baselines(ev.baselines, ev.suite)),
                              ood=resolve_ood(ev.ood, ev.ood_suite))
    for key in ("n_prompts", "batch_size", "n_resamples"):
        _positive(f"eval.{key}", getattr(out, key))
    for n in out.extra_loops:
        _positive("eval.extra_loops", n)
    return out


def build_spec(cfg: DictConfig) -> RunSpec:
    """Validate ``cfg`` (the composed config) and return typed settings."""
    try:
        return _build_spec(cfg)
    except ConfigError:
        raise
    except Exception as e:  # interpolation errors from OmegaConf
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"invalid configuration: {first}") from e


def _build_spec(cfg: DictConfig) -> RunSpec:
    s = settings(cfg)
    model, cur, optim, test = s.model, s.curriculum, s.optimizer, s.test
    cur.validate()
    task_params = OmegaConf.to_container(cfg.task, resolve=True)
    task_name = task_params.pop("name", None)
    task = build_task(task_name, model.n_dims, **task_params)

    if cur.dims.end > model.n_dims:
        raise ConfigError(f"curriculum.dims.end={cur.dims.end} exceeds model.n_dims="
                          f"{model.n_dims}; use 1..{model.n_dims}")
    task.check_active_dims(cur.dims.start)
    if cur.points.end > model.n_positions:
        raise ConfigError(f"curriculum.points.end={cur.points.end} exceeds model.n_positions="
                          f"{model.n_positions}; use curriculum.points.end <= "
                          f"{model.n_positions} or raise model.n_positions")
    if model.family == "looped":
        seq_len = 2 * cur.points.end  # tokens of the longest prompt
        keep_mask_len(model.keep_tokens, seq_len, cur.points.end)
        if model.keep_tokens > seq_len:  # would silently keep everything
            raise ConfigError(f"model.keep_tokens={model.keep_tokens:g} exceeds the {seq_len} "
                              f"tokens of a {cur.points.end}-point prompt; use "
                              f"-{seq_len - 1}..{seq_len} or a fraction in (0,1)")

    _positive("optimizer.lr", optim.lr)
    _positive("optimizer.weight_decay", optim.weight_decay, allow_zero=True)
    _positive("optimizer.warmup_steps", optim.warmup_steps, allow_zero=True)
    if not 0 < optim.decay_fraction <= 1:
        raise ConfigError(f"optimizer.decay_fraction={optim.decay_fraction} must be in (0, 1]")
    if optim.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={optim.schedule!r} is unknown; choose one of "
                          f"{', '.join(SCHEDULES)}")
    _positive("test.every_n_steps", test.every_n_steps, allow_zero=True)
    _positive("test.size", test.size)
    _positive("test.batch_size", test.batch_size)
    _positive("data.batch_size", s.data.batch_size)
    _positive("trainer.max_steps", s.trainer.max_steps)
    _positive("checkpoint.every_n_steps", s.checkpoint.every_n_steps)
    _positive("checkpoint.keep_every_n_steps", s.checkpoint.keep_every_n_steps,
              allow_zero=True)

    return RunSpec(
        model=model, task=task, task_params=task_params, curriculum=cur,
        batch_size=s.data.batch_size, optim=optim, test=test,
        checkpoint_every=s.checkpoint.every_n_steps,
        keep_every=s.checkpoint.keep_every_n_steps, seed=s.seed,
        max_steps=s.trainer.max_steps, eval=eval_config(s.eval), perf=s.perf,
        name=str(cfg.get("name") or ""),
    )
