"""Data-parallel training (Lightning DDP, gloo on CPU): per-rank prompts, sharded test set.

The slow tests run ``python train.py trainer=ddp trainer.devices=2``: Lightning starts rank 1 by
re-running the command line with Hydra's run directory pinned, so both ranks share one run dir.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_cfg

from callbacks.fixed_test_set import FixedTestSet, PositionwiseSquaredError, evaluate_test_set
from loopformer import build_model
from loopformer.checkpoints import safe_load
from loopformer.config import Settings, check_trainer
from loopformer.csvlog import read_metrics
from loopformer.data import PromptDataModule
from loopformer.errors import ConfigError

CPU = torch.device("cpu")


def _spec(*overrides):
    return Settings.from_config(compose_cfg(*TINY, *overrides))


def _data(spec):
    return PromptDataModule(spec.function, spec.curriculum, spec.data.batch_size, spec.seed)


def test_every_rank_draws_its_own_prompts():
    data = _data(_spec())
    for step in (0, 5):
        b0, b1 = (data.sample(step, step, rank, CPU) for rank in (0, 1))
        assert not torch.equal(b0.xs, b1.xs) and not torch.equal(b0.ys, b1.ys)
        again = data.sample(step, step, 0, CPU)
        assert torch.equal(b0.xs, again.xs) and torch.equal(b0.ys, again.ys)


def _test_set(spec):
    return FixedTestSet(spec.function, spec.curriculum, spec.test.size, spec.test.batch_size,
                        spec.test.seed)


def test_test_set_shards_partition_the_set_and_sum_to_the_whole():
    spec = _spec("test.size=40", "test.batch_size=16")  # chunks of 16, 16, 8
    model = build_model(spec.model).eval()
    whole = evaluate_test_set(model, _test_set(spec), 3, 0, 1, CPU)
    test_set = _test_set(spec)
    shards = [test_set.shard(rank, 2, CPU) for rank in (0, 1)]
    assert [len(b.xs) for s in shards for b in s] == [16, 8, 16]  # rank 0: 0, 2; rank 1: 1
    # what the DDP reduction (a sum of the metric states over ranks) computes
    metric = PositionwiseSquaredError(spec.curriculum.final.n_points)
    with torch.no_grad():
        for batch in (b for s in shards for b in s):
            metric.update(model.predict(batch.xs, batch.ys, n_loops=3), batch.ys)
    assert metric.count == 40
    assert float(metric.compute().mean()) == pytest.approx(whole["test/loss"], abs=1e-12)


def test_ddp_inside_a_local_multirun_is_refused(monkeypatch):
    monkeypatch.setattr("loopformer.config._hydra_multirun", lambda: True)
    with pytest.raises(ConfigError, match="hydra.launcher.tasks_per_node=2"):
        check_trainer(_spec("trainer=ddp", "trainer.devices=2").trainer)
    check_trainer(_spec("trainer=ddp", "trainer.devices=1").trainer)  # one process: fine


# ----------------------------------------------------------------------------- processes


DDP = ["trainer=ddp", "trainer.devices=2"]


def run_train(*overrides, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _read_prompts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    prompts = tmp_path / "prompts"
    run_train(*DDP, "trainer.max_steps=4", "test.every_n_steps=2", "test.size=40",
              "test.batch_size=16", "checkpoint.keep_every_n_steps=2",
              "+callbacks.probe._target_=probes.RecordPrompts", f"+callbacks.probe.path={prompts}",
              "eval.at_end=true", "eval.n_prompts=32", "eval.extra_loops=[4]",
              "eval.baselines=[least_squares]", "eval.n_resamples=20", cwd=tmp_path)
    # both ranks used the run directory that Hydra's lf_run_dir resolver gave rank 0
    runs = list((tmp_path / "logs" / "runs").iterdir())
    assert len(runs) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["logs", "prompts"]
    run_dir = runs[0]
    assert {"config.yaml", "run.json", "metrics.csv", "train.log",
            "train_ddp_process_1.log"} <= {p.name for p in run_dir.iterdir()}

    # every rank drew its own prompts, exactly those seeded by (seed, batch index, rank)
    spec = _spec()
    data = _data(spec)
    rows = {rank: _read_prompts(prompts / f"rank{rank}.jsonl") for rank in (0, 1)}
    for rank, rank_rows in rows.items():
        assert [r["step"] for r in rank_rows] == [0, 1, 2, 3]
        for r in rank_rows:
            expected = data.sample(r["step"], r["step"], rank, CPU)
            assert r["xs"] == expected.xs.flatten().tolist()
            assert r["ys"] == expected.ys.flatten().tolist()
    for r0, r1 in zip(rows[0], rows[1], strict=True):
        assert r0["xs"] != r1["xs"]

    # the test loss reduced over the two shards equals one process on the same weights
    metrics = {int(r["step"]): r for r in read_metrics(run_dir / "metrics.csv")
               if "test/loss" in r}
    assert sorted(metrics) == [2, 4]
    test_spec = _spec("test.size=40", "test.batch_size=16")
    for step, row in metrics.items():
        state = safe_load(run_dir / "checkpoints" / f"step={step}.ckpt")
        model = build_model(test_spec.model)
        model.load_state_dict({k.removeprefix("model."): v for k, v in
                               state["state_dict"].items()})
        n_loops = test_spec.curriculum.at(step - 1).n_loops  # set at the step's start
        single = evaluate_test_set(model, _test_set(test_spec), n_loops, 0, 1, CPU)
        assert abs(single["test/loss"] - row["test/loss"]) < 1e-6, step

    # evaluation ran once, on rank 0
    assert (run_dir / "eval" / "results.json").is_file()
    assert "wrote" in (run_dir / "train.log").read_text()
    assert "wrote" not in (run_dir / "train_ddp_process_1.log").read_text()


@pytest.mark.slow
def test_ddp_resumes_a_pinned_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_train("trainer.max_steps=2", f"run_dir={run_dir}")  # one process
    run_train(*DDP, "trainer.max_steps=4", "ckpt_path=last", f"run_dir={run_dir}", cwd=tmp_path)
    assert safe_load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    steps = [int(r["step"]) for r in read_metrics(run_dir / "metrics.csv") if "train/loss" in r]
    assert steps == [0, 1, 2, 3]
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no stray Hydra directory
