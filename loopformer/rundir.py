"""The layout of a run directory: every file a run writes or reads, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

if not OmegaConf.has_resolver("lf_run_dir"):
    # conf/config.yaml's hydra.run.dir: the pinned run_dir, else a timestamped default
    OmegaConf.register_new_resolver("lf_run_dir", lambda pinned, default: pinned or default)


@dataclass(frozen=True)
class RunDir:
    """``root/``: ``config.yaml`` (the resolved config), ``run.json`` (W&B id, the overrides of
    each launch), ``metrics.csv``, ``checkpoints/{last,step=N}.ckpt`` and ``eval/``."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def kept_ckpt(self, step: int | str) -> Path:
        return self.checkpoints / f"step={step}.ckpt"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def results(self) -> Path:
        return self.eval / "results.json"


def hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


# the output directory and its parents that existed before Hydra made them (noted by
# :class:`NoteExistingDirs`): a refused command never removes one of them
_EXISTED: set[Path] = set()


class NoteExistingDirs(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/``): before Hydra makes the output
    directory, note which of it and its parents exist already."""

    def on_run_start(self, config, **kwargs) -> None:
        _note_existing(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        _note_existing(config.hydra.sweep.dir)


def _note_existing(directory: str) -> None:
    path = Path(directory).resolve()
    _EXISTED.update(p for p in (path, *path.parents) if p.is_dir())


def discard_unused_output_dir() -> None:
    """Remove the output directory Hydra made for this job if nothing was written to it: the
    command was rejected before training. (conf/config.yaml sets ``hydra.output_subdir: null``
    and a delayed job log, so Hydra itself writes nothing there.) A directory that existed
    before the command is kept, empty or not."""
    out = hydra_output_dir()
    if out is None or not out.is_dir() or any(out.iterdir()) or out.resolve() in _EXISTED:
        return
    out.rmdir()
    cwd = Path.cwd().resolve()  # and the parents made for it (logs/runs, logs), left empty
    for parent in out.resolve().parents:
        if cwd not in parent.parents or parent in _EXISTED or any(parent.iterdir()):
            break
        parent.rmdir()
