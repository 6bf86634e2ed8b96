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


def resume_is_bitwise(tmp_path: Path, *overrides: str) -> set[str]:
    """Train 8 steps in one go and 4 + 4 with a resume from ``last``; assert the two runs end
    with equal weights and equal logs, and return the metric names they logged."""
    from loopformer.csvlog import read_metrics
    from loopformer.training import run

    run(compose_cfg(*overrides, "trainer.max_steps=8", run_dir=tmp_path / "a"))
    run(compose_cfg(*overrides, "trainer.max_steps=4", run_dir=tmp_path / "b"))
    run(compose_cfg(*overrides, "trainer.max_steps=8", "ckpt_path=last", run_dir=tmp_path / "b"))
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=False)
            for r in "ab")
    assert a["global_step"] == b["global_step"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    rows_a, rows_b = (read_metrics(tmp_path / r / "metrics.csv") for r in "ab")
    assert rows_a == rows_b
    return {k for r in rows_a for k in r}


def train_cmd(*overrides: str) -> list[str]:
    """``python train.py`` with the tiny settings and ``overrides``."""
    return [sys.executable, str(ROOT / "train.py"), *TINY, *overrides]


def run_cmd(cmd, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a command as a user would, with the tests' helpers (probes.py) importable."""
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
