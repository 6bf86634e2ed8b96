import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

# shrinks any configuration to a model and prompts that train in milliseconds on a CPU
TINY = [
    "model.n_embd=16", "model.n_head=2", "model.n_dims=4", "model.n_positions=12",
    "curriculum.dims.start=3", "curriculum.dims.inc=1", "curriculum.dims.interval=3",
    "curriculum.points.start=5", "curriculum.points.end=9", "curriculum.points.inc=2",
    "curriculum.points.interval=3",
    "curriculum.loops.start=2", "curriculum.loops.end=3", "curriculum.loops.inc=1",
    "curriculum.loops.interval=2",
    "curriculum.window=2", "data.batch_size=8", "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "callbacks=none",
    "logger=csv", "test.size=32", "test.batch_size=16", "test.every_n_steps=0",
    "checkpoint.every_n_steps=2", "checkpoint.keep_every_n_steps=0", "eval.at_end=false",
]


def compose_cfg(*overrides: str, run_dir=None):
    extra = [f"run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra])


@pytest.fixture
def tiny():
    return list(TINY)


def train_cmd(*overrides: str) -> list[str]:
    """``python train.py`` with the tiny settings and ``overrides``."""
    return [sys.executable, str(ROOT / "train.py"), *TINY, *overrides]


def run_cmd(cmd, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a command as a user would, with the tests' helpers (probes.py) importable."""
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
