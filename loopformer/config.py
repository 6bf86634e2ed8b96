"""Turn a composed Hydra config into validated, typed run settings.

Everything a run needs is checked here, before any directory is written or any step is
trained; each error names the override to change and the values it accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from loopformer.baselines import Baseline, build_baselines
from loopformer.curriculum import Curriculum, Schedule
from loopformer.errors import ConfigError, check_type
from loopformer.models import ModelConfig, keep_mask_len
from loopformer.tasks import Task, build_task

SCHEDULES = ("constant", "cosine", "wsd")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # constant | cosine | wsd
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.0  # the decay's floor (cosine, wsd), as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the final share of the steps that decays linearly

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


@dataclass(frozen=True)
class TestSetConfig:
    every_n_steps: int = 10000  # 0 disables
    size: int = 100000  # prompts
    batch_size: int = 1000  # prompts per evaluation batch
    seed: int = 1


@dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` block: how a trained model is scored against baselines."""

    at_end: bool  # evaluate when training ends
    n_prompts: int  # fresh prompts at the final curriculum shape
    seed: int  # their seed, and the bootstrap's
    extra_loops: tuple[int, ...]  # loop counts scored beyond the trained one (the task's YAML)
    baselines: tuple[Baseline, ...]  # eval.baselines; "default" is the task's eval.suite
    batch_size: int  # prompts per model forward
    n_resamples: int  # bootstrap resamples of the 90% band
    device: str | None  # where the model runs; null: the GPU if there is one
    ckpt: str  # the checkpoint `python -m loopformer.evaluate` scores: last | step=N | a path


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
    name: str  # the run's name (W&B, plot titles)

    @property
    def looped(self) -> bool:
        return self.model.family == "looped"


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be {bound}")


def _int(key: str, value) -> int:
    return check_type(key, value, int)


def _float(key: str, value) -> float:
    return float(check_type(key, value, float))


def _schedule(cfg: DictConfig, key: str) -> Schedule:
    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"{key} is missing; give {key}.start and {key}.end")
    fields = {k: _int(f"{key}.{k}", node.get(k, d)) for k, d in
              (("start", None), ("end", None), ("inc", 0), ("interval", 1))}
    sched = Schedule(**fields)
    sched.validate(key)
    return sched


def model_config(cfg: DictConfig) -> ModelConfig:
    d = OmegaConf.to_container(cfg.model, resolve=True)
    n_embd, n_head = d.get("n_embd"), d.get("n_head")
    if (isinstance(n_embd, int) and isinstance(n_head, int) and n_embd >= 1 and n_head >= 1
            and n_embd % n_head):
        divisors = [h for h in range(1, n_embd + 1) if n_embd % h == 0]
        raise ConfigError(f"model.n_head={n_head} does not divide model.n_embd={n_embd}; use "
                          f"model.n_head in {divisors[:12]}")
    try:
        return ModelConfig.from_dict(d)
    except TypeError as e:  # a wrong type such as model.n_layer=abc
        raise ConfigError(f"model: {e}") from e


def _required(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default="???")
    if value == "???":
        raise ConfigError(f"{key} is missing; conf/task/*.yaml sets eval.extra_loops and "
                          f"eval.suite, conf/config.yaml the rest of eval")
    return value


def _plain(value):
    """A config node as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def eval_config(cfg: DictConfig) -> EvalConfig:
    """The ``eval`` block, its baselines built (so a bad one is refused before training)."""
    ev = {k: _required(cfg, f"eval.{k}") for k in
          ("at_end", "n_prompts", "seed", "extra_loops", "baselines", "batch_size",
           "n_resamples", "device", "ckpt")}
    loops = ev["extra_loops"]  # a list, one count, or null for none
    if not OmegaConf.is_list(loops):
        loops = [] if loops is None else [loops]
    out = EvalConfig(
        at_end=check_type("eval.at_end", ev["at_end"], bool),
        n_prompts=_int("eval.n_prompts", ev["n_prompts"]), seed=_int("eval.seed", ev["seed"]),
        extra_loops=tuple(_int("eval.extra_loops", n) for n in loops),
        baselines=tuple(build_baselines(_plain(ev["baselines"]),
                                        _plain(OmegaConf.select(cfg, "eval.suite")))),
        batch_size=_int("eval.batch_size", ev["batch_size"]),
        n_resamples=_int("eval.n_resamples", ev["n_resamples"]),
        device=None if ev["device"] is None else str(ev["device"]), ckpt=str(ev["ckpt"]))
    for key in ("n_prompts", "batch_size", "n_resamples"):
        _positive(f"eval.{key}", getattr(out, key))
    for n in out.extra_loops:
        _positive("eval.extra_loops", n)
    return out


def curriculum_config(cfg: DictConfig) -> Curriculum:
    cur = Curriculum(
        dims=_schedule(cfg, "curriculum.dims"),
        points=_schedule(cfg, "curriculum.points"),
        loops=_schedule(cfg, "curriculum.loops"),
        window=_int("curriculum.window", cfg.curriculum.window),
    )
    cur.validate()
    return cur


def build_spec(cfg: DictConfig) -> RunSpec:
    """Validate ``cfg`` (the composed config) and return typed settings."""
    try:
        return _build_spec(cfg)
    except ConfigError:
        raise
    except Exception as e:  # interpolation or type errors from OmegaConf
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"invalid configuration: {first}") from e


def _build_spec(cfg: DictConfig) -> RunSpec:
    model = model_config(cfg)
    cur = curriculum_config(cfg)
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
            raise ConfigError(f"model.keep_tokens={model.keep_tokens} exceeds the {seq_len} "
                              f"tokens of a {cur.points.end}-point prompt; use "
                              f"-{seq_len - 1}..{seq_len} or a fraction in (0,1)")

    optim_cfg = cfg.optimizer
    optim = OptimConfig(
        lr=_float("optimizer.lr", optim_cfg.lr),
        weight_decay=_float("optimizer.weight_decay", optim_cfg.weight_decay),
        betas=tuple(_float("optimizer.betas", b) for b in optim_cfg.betas),
        schedule=str(optim_cfg.get("schedule", "constant")),
        warmup_steps=_int("optimizer.warmup_steps", optim_cfg.get("warmup_steps", 0)),
        min_lr_ratio=_float("optimizer.min_lr_ratio", optim_cfg.get("min_lr_ratio", 0.0)),
        decay_fraction=_float("optimizer.decay_fraction", optim_cfg.get("decay_fraction", 0.2)),
    )
    _positive("optimizer.lr", optim.lr)
    _positive("optimizer.weight_decay", optim.weight_decay, allow_zero=True)
    _positive("optimizer.warmup_steps", optim.warmup_steps, allow_zero=True)
    if not 0 < optim.decay_fraction <= 1:
        raise ConfigError(f"optimizer.decay_fraction={optim.decay_fraction} must be in (0, 1]")
    if optim.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={optim.schedule!r} is unknown; choose one of "
                          f"{', '.join(SCHEDULES)}")

    test = TestSetConfig(**{k: _int(f"test.{k}", cfg.test[k]) for k in
                            ("every_n_steps", "size", "batch_size", "seed")})
    _positive("test.every_n_steps", test.every_n_steps, allow_zero=True)
    _positive("test.size", test.size)
    _positive("test.batch_size", test.batch_size)

    spec = RunSpec(
        model=model, task=task, task_params=task_params, curriculum=cur,
        batch_size=_int("data.batch_size", cfg.data.batch_size), optim=optim, test=test,
        checkpoint_every=_int("checkpoint.every_n_steps", cfg.checkpoint.every_n_steps),
        keep_every=_int("checkpoint.keep_every_n_steps", cfg.checkpoint.keep_every_n_steps),
        seed=_int("seed", cfg.seed), max_steps=_int("trainer.max_steps", cfg.trainer.max_steps),
        eval=eval_config(cfg), name=str(cfg.get("name") or ""),
    )
    _positive("data.batch_size", spec.batch_size)
    _positive("trainer.max_steps", spec.max_steps)
    _positive("checkpoint.every_n_steps", spec.checkpoint_every)
    _positive("checkpoint.keep_every_n_steps", spec.keep_every, allow_zero=True)
    return spec
