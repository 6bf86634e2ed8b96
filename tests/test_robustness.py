"""Bad inputs are refused before anything is written; faults never cost a good checkpoint.

Fast tests call ``run`` in-process; the ``slow`` ones run ``python train.py`` (exit code, one
line on stderr, no run directory left) and kill training processes with SIGKILL.
"""

import os
import pickle
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_cfg, run_cmd, train_cmd

from callbacks.checkpoint import StepCheckpoint
from loopformer.checkpoints import SafeCheckpointIO, safe_load
from loopformer.config import requeued_checkpoint
from loopformer.csvlog import read_metrics
from loopformer.data import PromptDataModule
from loopformer.errors import ConfigError, NonFiniteError
from loopformer.rundir import RunDir
from loopformer.training import run

SPARSE = ["task=sparse_linear_regression"]
SHORT_EVAL = ["trainer.max_steps=2", "eval.at_end=true", "eval.n_prompts=16",
              "eval.extra_loops=[4]"]

# (overrides on top of TINY, the key the message must name); TINY: n_embd 16, n_head 2,
# n_dims 4, n_positions 12, dims 3->4, points 5->9 (18 tokens), loops 2->3, window 2
BAD_INPUTS = [
    (["model.n_head=3"], "model.n_head=3"),
    (["curriculum.points.end=13"], "curriculum.points.end=13"),
    (["curriculum.points.end=4"], "curriculum.points.end=4"),
    (["curriculum.loops.inc=0"], "curriculum.loops.inc=0"),
    (["curriculum.points.inc=-2"], "curriculum.points.inc=-2"),
    (["curriculum.dims.interval=0"], "curriculum.dims.interval=0"),
    (["curriculum.dims.end=5"], "curriculum.dims.end=5"),
    (["curriculum.window=0"], "curriculum.window=0"),
    (["curriculum.window=4"], "curriculum.window=4"),
    (["model.keep_tokens=-18"], "model.keep_tokens=-18"),
    (["model.keep_tokens=0.02"], "model.keep_tokens=0.02"),
    (["model.keep_tokens=19"], "model.keep_tokens=19"),
    (["model.keep_tokens=2.5"], "model.keep_tokens=2.5"),
    ([*SPARSE, "task.sparsity=0"], "task.sparsity=0"),
    ([*SPARSE, "task.sparsity=4"], "task.sparsity=4"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["optimizer.lr=-0.001"], "optimizer.lr=-0.001"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["optimizer.schedule=step"], "optimizer.schedule='step'"),
    (["optimizer.schedule=wsd", "optimizer.decay_fraction=0"], "optimizer.decay_fraction=0"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' must be a number"),
    (["data.batch_size=abc"], "data.batch_size='abc' must be an integer"),
    (["task.name=cubic_regression"], "task.name='cubic_regression'"),
    (["model.family=mlp"], "model.family='mlp'"),
    (["model.mixer=rnn"], "model.mixer='rnn'"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed"),
    ([f"trainer.devices={(os.cpu_count() or 1) + 1}"], "trainer.devices="),
    (["ckpt_path=last"], "ckpt_path=last"),
    (["perf.compile_mode=fast"], "perf.compile_mode='fast'"),
    (["perf.cuda_graph=true"], "perf.cuda_graph=true needs a CUDA device"),  # TINY: CPU
    (["perf.matmul_precision=low"], "perf.matmul_precision='low'"),
    (["model.n_layer=abc"], "model.n_layer='abc' must be an integer"),
    (["model.skip_connection=maybe", "trainer.max_steps=2"], "model.skip_connection='maybe' "
                                                             "must be true or false"),
    (["task=decision_tree", "task.depth=null"], "task.depth=null must be an integer"),
    (["+task.depth=2"], "task.name=linear_regression has no setting task.depth"),
    # a short run, were the baselines checked only when the evaluation starts
    (["eval.baselines=[lasso]", *SHORT_EVAL], "eval.baselines: 'lasso' needs its alpha"),
    (["eval.baselines=[least_squares,lsq]", *SHORT_EVAL], "eval.baselines has unknown "
                                                           "baseline 'lsq'"),
]


@pytest.mark.parametrize("overrides,key", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(overrides, key, tmp_path):
    cfg = compose_cfg(*TINY, *overrides, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,allowed", [
    (["model.n_head=3"], "[1, 2, 4, 8, 16]"),
    (["curriculum.window=4"], "use 1..3"),
    (["model.keep_tokens=19"], "use -17..18"),
    (["curriculum.points.end=13"], "curriculum.points.end <= 12"),
    ([*SPARSE, "task.sparsity=4"], "task.sparsity in 1..3"),
    (["model.mixer=rnn"], "attention, ssm"),
    (["optimizer.schedule=step"], "constant, cosine, wsd"),
    (["perf.compile_mode=fast"], "default, reduce-overhead, max-autotune"),
    (["task=decision_tree", "+task.max_depth=2"], "allowed: task.depth"),
    (["eval.baselines=[lsq]"], "allowed names: ['default', 'least_squares', 'averaging'"),
])
def test_messages_name_the_allowed_values(overrides, allowed):
    with pytest.raises(ConfigError, match=re.escape(allowed)):
        run(compose_cfg(*TINY, *overrides))


def _train(tmp_path, *overrides, name="run", steps=2):
    return run(compose_cfg(*TINY, f"trainer.max_steps={steps}", *overrides,
                           run_dir=tmp_path / name))


def _snapshot(path: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_resume_with_another_model_shape_names_the_fields(tmp_path):
    _train(tmp_path)
    before = _snapshot(tmp_path / "run")
    cfg = compose_cfg(*TINY, "model.n_embd=32", "model.n_layer=2", "trainer.max_steps=4",
                      "ckpt_path=last", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="model.n_embd: checkpoint 16 vs now 32; "
                                          "model.n_layer: checkpoint 1 vs now 2"):
        run(cfg)
    assert _snapshot(tmp_path / "run") == before  # the existing run is untouched


def test_damaged_checkpoint_is_refused(tmp_path):
    _train(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    for damaged in (data[: len(data) // 2], bytes(range(256)) * 16, b""):
        last.write_bytes(damaged)  # truncated, garbage, empty
        with pytest.raises(ConfigError, match="truncated or corrupt"):
            safe_load(last)
        before = _snapshot(tmp_path / "run")
        with pytest.raises(ConfigError,
                           match=re.escape(f"checkpoint {last} is truncated or corrupt")):
            _train(tmp_path, "ckpt_path=last", steps=4)
        assert _snapshot(tmp_path / "run") == before


class _CreatesFile:
    """Unpickling this object opens (creates) a file: the simplest code-execution payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def craft_checkpoint(path: Path, marker: Path, fmt: str = "torch") -> Path:
    payload = {"state_dict": {}, "global_step": 0, "evil": _CreatesFile(marker)}
    if fmt == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # a legacy (pre-zip) torch file
    return path


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_crafted_checkpoint_runs_no_code(fmt, tmp_path):
    marker = tmp_path / "pwned"
    evil = craft_checkpoint(tmp_path / "evil.ckpt", marker, fmt)
    if fmt == "torch":  # the payload is real: an unsafe load does create the file
        torch.load(evil, weights_only=False)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(ConfigError, match="was refused: it holds objects other than tensors"):
        safe_load(evil)
    with pytest.raises(ConfigError, match="was refused"):
        _train(tmp_path, f"ckpt_path={evil}")
    from loopformer.evaluate import main as evaluate_main

    _train(tmp_path, name="good")
    assert evaluate_main([f"run={tmp_path / 'good'}", f"ckpt={evil}"]) == 2
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_lightning_saves_and_resumes_through_the_safe_checkpoint_io(tmp_path, monkeypatch):
    calls = {"save": [], "load": [], "torch.load": []}
    save, load, torch_load = (SafeCheckpointIO.save_checkpoint, SafeCheckpointIO.load_checkpoint,
                              torch.load)

    def spy_save(self, checkpoint, path, storage_options=None):
        calls["save"].append(Path(path).name)
        return save(self, checkpoint, path, storage_options)

    def spy_load(self, path, map_location=None, weights_only=None):
        calls["load"].append(Path(path).name)
        return load(self, path, map_location, weights_only)

    def spy_torch_load(*args, **kwargs):
        calls["torch.load"].append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(SafeCheckpointIO, "save_checkpoint", spy_save)
    monkeypatch.setattr(SafeCheckpointIO, "load_checkpoint", spy_load)
    monkeypatch.setattr(torch, "load", spy_torch_load)
    _train(tmp_path, "checkpoint.keep_every_n_steps=2")
    assert calls["save"] == ["last.ckpt", "step=2.ckpt"]
    stale = tmp_path / "run" / "checkpoints" / ".last.ckpt.x1y2.tmp"  # a write cut short
    stale.write_bytes(b"half a checkpoint")
    _train(tmp_path, "checkpoint.keep_every_n_steps=2", "ckpt_path=last", steps=4)
    assert calls["load"] == ["last.ckpt"]  # Lightning's resume went through the plugin
    assert calls["torch.load"] and all(w is True for w in calls["torch.load"])
    # a real checkpoint of ours holds only allow-listed types
    state = torch_load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 and isinstance(state["hyper_parameters"]["config"], dict)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "last.ckpt", "step=2.ckpt", "step=4.ckpt"]  # the stale temporary file was dropped


def _finite(ckpt: Path) -> bool:
    return all(torch.isfinite(v).all() for v in safe_load(ckpt)["state_dict"].values())


@pytest.fixture
def nan_prompts_at_step_5(monkeypatch):
    """The prompts of global step 5 carry a NaN target: a non-finite loss, forced."""
    sample = PromptDataModule.sample

    def poisoned(self, index, step, rank, device):
        batch = sample(self, index, step, rank, device)
        if step == 5:
            batch.ys[0, 0] = float("nan")
        return batch

    monkeypatch.setattr(PromptDataModule, "sample", poisoned)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                 nan_prompts_at_step_5):
    with pytest.raises(NonFiniteError, match="non-finite train/loss at step 5: ") as err:
        _train(tmp_path, steps=10)  # checkpoints every 2 steps, loss checked every step
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint {last} (step 4) was kept" in str(err.value)
    assert safe_load(last)["global_step"] == 4 and _finite(last)


def test_non_finite_weights_are_never_checkpointed(tmp_path, nan_prompts_at_step_5):
    # with the loss check off (log_every_n_steps=0) the NaN gradient of step 5 reaches the
    # weights; the checkpoint of step 6 is refused
    with pytest.raises(NonFiniteError, match="non-finite weights at step 6: .* [(]step 4[)]"):
        _train(tmp_path, "trainer.log_every_n_steps=0", steps=10)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == 4 and _finite(last)


def test_sigterm_checkpoints_the_step_it_stops_at_and_resumes_exactly(tmp_path):
    """A SIGTERM at step 7 (between two periodic checkpoints) leaves last.ckpt at step 7;
    continuing from it ends where an uninterrupted run does."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    every = "checkpoint.every_n_steps=4"
    with pytest.raises(SIGTERMException):
        _train(tmp_path, every, "+callbacks.term._target_=probes.SigtermAt",
               "+callbacks.term.step=7", steps=10)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == 7 and _finite(last)
    _train(tmp_path, every, "ckpt_path=last", steps=10)
    _train(tmp_path, every, name="straight", steps=10)
    _assert_same_state(_final_state(tmp_path / "run"), _final_state(tmp_path / "straight"))
    assert (read_metrics(tmp_path / "run" / "metrics.csv")
            == read_metrics(tmp_path / "straight" / "metrics.csv"))


def test_slurm_requeue_continues_from_the_newest_checkpoint(tmp_path, monkeypatch):
    _train(tmp_path, steps=2)
    run_dir = tmp_path / "run"
    assert requeued_checkpoint(run_dir) is None  # not requeued
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"
    # the requeued job re-runs the very same command, without ckpt_path
    result = _train(tmp_path, steps=4)
    assert result.global_step == 4
    steps = [int(r["step"]) for r in read_metrics(run_dir / "metrics.csv") if "train/loss" in r]
    assert steps == [0, 1, 2, 3]
    # Lightning's auto-requeue checkpoint, newer than last.ckpt, wins
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    hpc.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    assert requeued_checkpoint(run_dir) == hpc


def test_slurm_time_limit_warning_stops_training_at_a_step_boundary(tmp_path, monkeypatch):
    """Inside a SLURM job, submitit's handler of the warning signal (here a stand-in doing what
    it does: the requeue, to which SLURM answers with SIGTERM, then an immediate exit) runs
    under DeferredRequeue without ending the process mid-step: training stops at the end of
    the step, which last.ckpt holds. Against a real cluster: tests/test_slurm.py."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(-1)

    monkeypatch.setenv("SLURM_JOB_ID", "1")
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SIGTERMException):
            _train(tmp_path, "checkpoint.every_n_steps=4",
                   "+callbacks.warn._target_=probes.SignalAt", "+callbacks.warn.step=6",
                   "+callbacks.warn.name=SIGUSR2", steps=10)
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored after fit
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == 6 and _finite(last)


def test_step_checkpoint_message_without_a_checkpoint():
    err = StepCheckpoint(RunDir("/x"), 5)._stop("non-finite train/loss", 3)
    assert str(err).startswith("non-finite train/loss at step 3: training stopped; no checkpoint")


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow
@pytest.mark.parametrize("override,key,pinned", [
    ("model.n_head=3", "model.n_head=3", False),
    ("model.n_head=3", "model.n_head=3", True),
    ("curriculum.window=4", "curriculum.window=4", False),
    ("trainer.precision=16-mixed", "trainer.precision=16-mixed", True),
    ("optimizer.lr=0", "optimizer.lr=0", False),
    ("ckpt_path=last", "ckpt_path=last", True),
    ("model.n_layer=abc", "model.n_layer='abc'", False),
    ("experiment=quickstart model.n_layer=abc", "model.n_layer='abc' must be an integer", True),
    ("+optimizer.lrr=1", "unknown key optimizer.lrr; allowed: lr, weight_decay", False),
    ("task=decision_tree task.depth=null", "task.depth=null", True),
    ("experiment=quickstart curriculum.loops_jitter=0 eval.at_end=true eval.baselines=[lasso]",
     "eval.baselines", False),
])
def test_command_line_rejects_with_one_line_and_no_run_dir(override, key, pinned, tmp_path):
    # not pinned: Hydra makes logs/runs/<timestamp> under the working directory before run();
    # it is removed, and so are logs/runs and logs, which hold nothing else
    pin = [f"run_dir={tmp_path / 'run'}"] if pinned else []
    proc = run_cmd(train_cmd(*override.split(), "trainer.max_steps=2", *pin), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [], left  # no run directory, nothing at all


@pytest.mark.slow
@pytest.mark.parametrize("script,override,message", [
    ("train.py", "model=mlp", "model=mlp is not an option of the model group; choose one of "
                              "looped, ssm, tied, transformer"),
    ("train.py", "experiment=quickstart,nope", "experiment=nope is not an option"),
    ("train.py", "hydra/launcher=nope", "hydra/launcher=nope is not an option of the "
                                        "hydra/launcher group; choose one of basic, joblib"),
    ("sweep.py", "study=nope", "study=nope is not an option of the study group"),
    ("sweep.py", "overrides=[trainer.max_steps=100]", "an override cannot be read"),
])
def test_command_line_unknown_group_option_is_one_line(script, override, message, tmp_path):
    proc = run_cmd([sys.executable, str(ROOT / script), override], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_refused_command_keeps_an_existing_empty_run_directory(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    proc = run_cmd(train_cmd("optimizer.lr=0", f"run_dir={run_dir}"), cwd=tmp_path)
    assert proc.returncode == 2 and "optimizer.lr=0" in proc.stderr, proc.stderr
    assert run_dir.is_dir()  # it was there before the command: it stays
    proc = run_cmd(train_cmd("optimizer.lr=0", f"run_dir={tmp_path / 'new' / 'run'}"),
                   cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "new").exists()  # made by it: removed


@pytest.mark.slow
def test_command_line_refuses_other_shape_and_crafted_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cmd(train_cmd("trainer.max_steps=2", f"run_dir={run_dir}")).returncode == 0
    before = _snapshot(run_dir)
    proc = run_cmd(train_cmd("model.n_embd=32", "ckpt_path=last", f"run_dir={run_dir}"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "model.n_embd: checkpoint 16 vs now 32" in proc.stderr
    assert _snapshot(run_dir) == before

    marker = tmp_path / "pwned"
    evil = craft_checkpoint(tmp_path / "evil.ckpt", marker)
    proc = run_cmd(train_cmd(f"ckpt_path={evil}", f"run_dir={tmp_path / 'other'}"))
    assert proc.returncode == 2 and "was refused" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    proc = run_cmd([sys.executable, "-m", "loopformer.evaluate", f"run={run_dir}",
                    f"ckpt={evil}"])
    assert proc.returncode == 2 and "was refused" in proc.stderr
    assert not marker.exists() and not (tmp_path / "other").exists()


@pytest.mark.slow
def test_command_line_divergence_exits_with_the_step(tmp_path):
    # Adam at lr=10 blows the TINY model up within a few steps
    proc = run_cmd(train_cmd("optimizer.lr=10", "trainer.max_steps=30", f"run_dir={tmp_path}/run"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert re.match(r"error: non-finite (train/loss|weights) at step \d+: training stopped; "
                    r"the last good checkpoint .* \(step \d+\) was kept", lines[-1]), proc.stderr
    assert "Traceback" not in proc.stderr
    stopped = int(lines[-1].split(" at step ")[1].split(":")[0])
    kept = int(lines[-1].split("(step ")[1].split(")")[0])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == kept <= stopped < 30 and _finite(last)


def _final_state(run_dir: Path):
    state = safe_load(run_dir / "checkpoints" / "last.ckpt")
    return state["global_step"], state["state_dict"], state["optimizer_states"]


def _assert_same_state(a, b) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k
    opt_a, opt_b = a[2][0]["state"], b[2][0]["state"]
    assert opt_a.keys() == opt_b.keys()
    for i in opt_a:
        for k in opt_a[i]:
            assert torch.equal(torch.as_tensor(opt_a[i][k]), torch.as_tensor(opt_b[i][k])), (i, k)


@pytest.mark.slow
def test_sigkill_at_three_moments_then_resume_equals_uninterrupted(tmp_path):
    common = ["trainer.max_steps=12", "checkpoint.every_n_steps=3", "test.every_n_steps=3"]
    probe = [sys.executable, str(ROOT / "tests" / "probes.py"), *TINY, *common]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_cmd(probe + [f"run_dir={straight}"]).returncode == 0
    ckdir = crashed / "checkpoints"

    def step_of_last():
        return safe_load(ckdir / "last.ckpt")["global_step"]

    # 1. mid-step (after backward, before the update) at global step 5
    proc = run_cmd(probe + [f"run_dir={crashed}"], env={"LF_KILL": "step:5"})
    assert proc.returncode == -signal.SIGKILL and step_of_last() == 3
    # 2. half-way through writing the checkpoint of step 9 (the 2nd write of this process)
    proc = run_cmd(probe + [f"run_dir={crashed}", "ckpt_path=last"], env={"LF_KILL": "save:2"})
    assert proc.returncode == -signal.SIGKILL
    torn = list(ckdir.glob(".last.ckpt.*.tmp"))
    assert len(torn) == 1 and step_of_last() == 6  # the old checkpoint survived intact
    with pytest.raises(ConfigError):
        safe_load(torn[0])
    # 3. during the fixed-test-set evaluation of step 12, before its checkpoint
    proc = run_cmd(probe + [f"run_dir={crashed}", "ckpt_path=last"], env={"LF_KILL": "test:2"})
    assert proc.returncode == -signal.SIGKILL and step_of_last() == 9
    assert not list(ckdir.glob("*.tmp"))  # the torn file was dropped on resume
    # 4. resume to the end
    proc = run_cmd(probe + [f"run_dir={crashed}", "ckpt_path=last"])
    assert proc.returncode == 0, proc.stderr

    _assert_same_state(_final_state(straight), _final_state(crashed))
    assert _final_state(crashed)[0] == 12
    assert read_metrics(straight / "metrics.csv") == read_metrics(crashed / "metrics.csv")


@pytest.mark.slow
def test_submitit_local_multirun_runs_both_jobs(tmp_path):
    cmd = train_cmd("hydra/launcher=submitit_local", "seed=1,2", "trainer.max_steps=2",
                    "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}")
    proc = run_cmd([*cmd[:2], "-m", *cmd[2:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if (p / "checkpoints" / "last.ckpt").exists())
    assert [p.name for p in runs] == ["0", "1"]
    seeds = [safe_load(p / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]["seed"]
             for p in runs]
    assert seeds == [1, 2]
    assert all(safe_load(p / "checkpoints" / "last.ckpt")["global_step"] == 2 for p in runs)
    assert (tmp_path / ".submitit").is_dir()  # the jobs did go through submitit
