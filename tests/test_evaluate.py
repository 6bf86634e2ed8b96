"""End-to-end evaluation of a trained run, and studies through sweep.py."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch
from conftest import ROOT, compose_cfg

from loopformer.evaluate import evaluate, evaluate_run, load_settings, main
from loopformer.models import build_model
from loopformer.scoring import load_model
from loopformer.training import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import TINY

    run_dir = tmp_path_factory.mktemp("eval") / "run"
    run(compose_cfg(*TINY, "trainer.max_steps=4", run_dir=run_dir))
    return run_dir


def test_evaluate_writes_every_field_and_both_plots(trained_run):
    main([f"run={trained_run}", "n_prompts=64", "extra_loops=[6]", "n_resamples=200"])
    out = trained_run / "eval"
    res = json.loads((out / "results.json").read_text())
    for key in ("task", "active_dims", "normalizer", "n_prompts", "seed", "curves",
                "loop_curve", "trained_loops"):
        assert key in res, key
    assert res["n_prompts"] == 64 and res["task"] == "linear_regression"
    assert res["normalizer"] == res["active_dims"] == 4
    n = 9  # TINY: 9-point prompts
    for name in ("model", "model@6", "least_squares", "nearest_neighbors_3", "averaging"):
        c = res["curves"][name]
        assert len(c["mean"]) == len(c["low"]) == len(c["high"]) == n
        assert all(lo <= m <= hi for lo, m, hi in zip(c["low"], c["mean"], c["high"], strict=True))
    assert res["loop_curve"]["loops"] == list(range(1, 7))
    # least squares is exact once k >= d, whatever the model learned
    assert max(res["curves"]["least_squares"]["mean"][4:]) < 1e-6
    _valid_png(out / "error_vs_examples.png")
    _valid_png(out / "error_vs_loops.png")
    _valid_png(out / "training_curve.png")  # from the run's metrics.csv


def test_model_curve_matches_the_runs_trained_loop_count(trained_run):
    res = evaluate_run(trained_run, n_prompts=32, extra_loops=[3], baselines=[],
                       n_resamples=100)
    # TINY trains at b = 3 loops, so the extra count equal to it adds no new curve
    assert res["trained_loops"] == 3 and set(res["curves"]) == {"model"}


def test_results_count_the_lasso_fits_that_did_not_converge(trained_run):
    res = evaluate_run(trained_run, n_prompts=8, extra_loops=[3], n_resamples=20, baselines=[
        {"name": "lasso", "alpha": 0.001, "max_iter": 2, "n_jobs": 1},
        {"name": "lasso", "alpha": 0.1, "n_jobs": 1}])
    cut, full = res["curves"]["lasso_0.001"], res["curves"]["lasso_0.1"]
    assert cut["fits"] == full["fits"] == 8 * 8  # 8 prompts, prefixes 1..8 of 9 points
    assert 0 < cut["unconverged_fits"] <= 64 and full["unconverged_fits"] == 0


def test_model_curves_equal_predict_at_each_loop_count(trained_run, monkeypatch):
    """``model``, ``model@N`` and the loop curve against ``model.predict(n_loops=N)`` on the
    prompts the evaluation drew (recorded from the task), batch by batch or not."""
    spec = load_settings(trained_run, n_prompts=40, extra_loops=[1, 5], baselines=[],
                     n_resamples=20, batch_size=16)
    model = load_model(trained_run, spec)
    drawn, sample = [], spec.function.sample

    def recorded(*args, **kwargs):
        drawn.append(sample(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(spec.function, "sample", recorded)
    res = evaluate(model, spec)
    (xs, ys), = drawn
    norm = res["normalizer"]

    def errors(n_loops):  # (P, n) normalised squared errors of an independent forward
        return (model.predict(xs, ys, n_loops=n_loops) - ys).square() / norm

    assert res["trained_loops"] == 3 and set(res["curves"]) == {"model", "model@1", "model@5"}
    for name, n_loops in (("model", 3), ("model@1", 1), ("model@5", 5)):
        torch.testing.assert_close(torch.tensor(res["curves"][name]["mean"]),
                                   errors(n_loops).mean(0), rtol=1e-5, atol=1e-7)
    last = [errors(n)[:, -1].mean().item() for n in range(1, 6)]
    torch.testing.assert_close(torch.tensor(res["loop_curve"]["mean"]), torch.tensor(last),
                               rtol=1e-5, atol=1e-7)


def test_evaluate_ckpt_step_scores_that_kept_checkpoint(tmp_path):
    """``ckpt=step=2`` scores checkpoints/step=2.ckpt: the same curves as those weights loaded
    here by hand, and not those of the run's last weights (step 4)."""
    from conftest import TINY

    run_dir = tmp_path / "run"
    run(compose_cfg(*TINY, "trainer.max_steps=4", "checkpoint.keep_every_n_steps=2",
                    run_dir=run_dir))
    opts = {"n_prompts": 32, "extra_loops": [4], "baselines": [], "n_resamples": 20}
    scored = {}
    for ckpt in ("step=2", "last"):
        assert main([f"run={run_dir}", f"ckpt={ckpt}",
                     *(f"{k}={v}" for k, v in opts.items())]) == 0
        scored[ckpt] = json.loads((run_dir / "eval" / "results.json").read_text())
    assert scored["step=2"]["checkpoint"] == "step=2"

    spec = load_settings(run_dir, **opts)
    state = torch.load(run_dir / "checkpoints" / "step=2.ckpt", weights_only=True)
    assert state["global_step"] == 2
    model = build_model(spec.model)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    by_hand = evaluate(model, spec)
    for name in ("model", "model@4"):
        assert scored["step=2"]["curves"][name] == by_hand["curves"][name]
        assert scored["step=2"]["curves"][name] != scored["last"]["curves"][name]


@pytest.mark.parametrize("device,message", [
    ("gpu0", "device='gpu0' is not a torch device"),
    *([] if torch.cuda.is_available() else [("cuda", "no CUDA device is visible")]),
])
def test_bad_device_is_a_clear_error(trained_run, device, message, capsys):
    assert main([f"run={trained_run}", f"device={device}"]) == 2
    assert message in capsys.readouterr().err


def test_unknown_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main([f"run={tmp_path / 'nope'}"]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_micro_study_through_sweep(tmp_path):
    from conftest import TINY

    base = [*TINY, "trainer.max_steps=3", "eval.at_end=true", "eval.n_prompts=32",
            "eval.extra_loops=[4]"]
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    study = {"name": "micro", "base": base, "seeds": [1, 2], "examples": [2, 4],
             "variants": {"plain": [], "skip": ["model.skip_connection=true"]}}
    (conf / "micro.yaml").write_text(json.dumps(study))  # JSON is YAML
    args = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "study=micro",
            f"study_dir={tmp_path / 'micro'}"]
    proc = subprocess.run([sys.executable, "sweep.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "micro" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for variant in ("plain", "skip"):
        row = next(r for r in rows if r.startswith(f"| {variant} | "))
        assert row.split(" | ")[2] == "2"  # seeds; [1] is the parameter count
        assert row.count("[") == 4  # mean [min, max]: 2 columns at b loops and at 4 loops
    _valid_png(tmp_path / "micro" / "error_vs_examples.png")
    # the report's numbers are the seeds' own results
    runs = tmp_path / "micro" / "runs" / "plain"
    means = [json.loads((runs / f"seed={s}" / "eval" / "results.json").read_text())
             ["curves"]["model"]["mean"][2] for s in (1, 2)]
    assert f"{sum(means) / 2:.4f} [{min(means):.4f}, {max(means):.4f}]" in report
    # finished runs are skipped: a second sweep only aggregates
    proc = subprocess.run([sys.executable, "sweep.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "4 finished, 0 to run" in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "sweep.py", *args, "aggregate_only=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (tmp_path / "micro" / "report.md").read_text() == report


def _micro_study(tmp_path, name, steps):
    from conftest import TINY

    base = [*TINY, f"trainer.max_steps={steps}", "checkpoint.every_n_steps=1", "eval.at_end=true",
            "eval.n_prompts=32", "eval.extra_loops=[4]"]
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True, exist_ok=True)
    study = {"name": name, "base": base, "seeds": [1], "examples": [2, 4],
             "variants": {"first": [], "second": ["model.skip_connection=true"]},
             "groups": {"both": ["first", "second"]}}
    (conf / f"{name}.yaml").write_text(json.dumps(study))
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"study={name}",
            f"study_dir={tmp_path / name}"]


@pytest.mark.slow
def test_study_killed_after_its_first_run_resumes_and_runs_each_once(tmp_path):
    import os
    import signal
    import threading
    import time

    args = _micro_study(tmp_path, "micro", steps=200)
    runs = tmp_path / "micro" / "runs"
    first, second = runs / "first" / "seed=1", runs / "second" / "seed=1"
    proc = subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    # killed once the first run is finished (and reported) and the second has a checkpoint
    while not ("1/2 runs done" in "".join(lines)
               and (second / "checkpoints" / "last.ckpt").is_file()):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (second / "eval" / "results.json").exists()
    first_results = (first / "eval" / "results.json").read_bytes()
    first_mtime = (first / "eval" / "results.json").stat().st_mtime_ns
    killed_at = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < killed_at < 200

    proc = subprocess.run([sys.executable, "sweep.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "2 runs, 1 finished, 1 to run (1 resume from a checkpoint)" in log
    assert "2/2 runs done" in log
    # the finished run was not run again
    assert (first / "eval" / "results.json").read_bytes() == first_results
    assert (first / "eval" / "results.json").stat().st_mtime_ns == first_mtime
    # the interrupted run continued to the end, and equals a run that was never interrupted
    assert torch.load(second / "checkpoints" / "last.ckpt",
                      weights_only=False)["global_step"] == 200
    ref_args = _micro_study(tmp_path, "reference", steps=200)
    ref = subprocess.run([sys.executable, "sweep.py", *ref_args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
    resumed = json.loads((second / "eval" / "results.json").read_text())["curves"]
    uninterrupted = json.loads((tmp_path / "reference" / "runs" / "second" / "seed=1" / "eval"
                                / "results.json").read_text())["curves"]
    assert resumed == uninterrupted
    report = (tmp_path / "micro" / "report.md").read_text()
    for variant in ("first", "second"):
        row = next(r for r in report.splitlines() if r.startswith(f"| {variant} | "))
        assert row.split(" | ")[2] == "1"
    for png in ("error_vs_examples.png", "error_vs_loops.png", "error_vs_examples_both.png",
                "error_vs_loops_both.png"):
        _valid_png(tmp_path / "micro" / png)


def test_concurrent_study_runs_share_the_cores():
    from loopformer.errors import ConfigError
    from loopformer.study import launcher_overrides

    assert launcher_overrides(None, None, ()) == []
    assert launcher_overrides("submitit_local", None, ()) == ["hydra/launcher=submitit_local"]
    assert launcher_overrides(None, 2, (), cpus=2) == [
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "perf.threads=1",
        "trainer.enable_progress_bar=false"]
    assert launcher_overrides("joblib", 4, ("perf.threads=3",), cpus=16) == [
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "trainer.enable_progress_bar=false"]
    with pytest.raises(ConfigError, match="launcher=joblib"):
        launcher_overrides("slurm", 2, ())
    with pytest.raises(ConfigError, match="n_jobs"):
        launcher_overrides(None, 0, ())


def test_a_bad_n_jobs_is_refused_before_any_run(tmp_path):
    from loopformer.errors import ConfigError
    from loopformer.study import Study, launch

    study = Study("s", (), {"a": ()}, (1,), (), launcher="joblib", n_jobs=2)
    with pytest.raises(ConfigError, match="n_jobs=0 must be an integer >= 1"):
        launch(study, tmp_path / "s", n_jobs=0)  # not replaced by the study's own 2
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_stopping_a_concurrent_study_stops_all_its_runs(tmp_path):
    """SIGTERM to sweep.py alone (not its process group) stops the joblib workers too: none
    goes on to train or start its next queued run."""
    import signal
    import time

    from loopformer.study import _descendants

    args = _micro_study(tmp_path, "micro", steps=100000)
    (tmp_path / "conf" / "study" / "micro.yaml").write_text(
        (tmp_path / "conf" / "study" / "micro.yaml").read_text()[:-1]
        + ', "launcher": "joblib", "n_jobs": 2}')
    proc = subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    runs = tmp_path / "micro" / "runs"
    ckpts = [runs / v / "seed=1" / "checkpoints" / "last.ckpt" for v in ("first", "second")]
    deadline = time.monotonic() + 300
    while not all(c.is_file() for c in ckpts):  # both runs training at once
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    workers = _descendants(proc.pid)
    assert len(workers) >= 3  # the multirun and its two workers
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "Run the same command again to resume" in out
    time.sleep(1)
    alive = [p for p in workers if (Path(f"/proc/{p}").exists()
                                    and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2])]
    assert not alive
    sizes = [c.stat().st_mtime_ns for c in ckpts]
    time.sleep(2)
    assert [c.stat().st_mtime_ns for c in ckpts] == sizes  # nobody trains on


def test_a_run_saved_before_the_task_yamls_held_the_suite_still_evaluates(trained_run, tmp_path):
    # the eval block as runs saved it before: no suite, batch_size, n_resamples, device or
    # ckpt, and extra_loops null for the task's own count
    import shutil

    from omegaconf import OmegaConf

    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    cfg = OmegaConf.load(old / "config.yaml")
    cfg.eval = {"at_end": True, "n_prompts": 32, "seed": 0, "extra_loops": None,
                "baselines": "default"}
    OmegaConf.save(cfg, old / "config.yaml")
    res = evaluate_run(old, n_resamples=20)
    assert set(res["curves"]) == {"model", "model@500", "least_squares",
                                  "nearest_neighbors_3", "averaging"}


def test_a_study_aggregates_results_written_before_curves_had_a_kind(tmp_path):
    from loopformer.results.aggregate import load_results
    from loopformer.study import Job

    path = tmp_path / "eval" / "results.json"
    path.parent.mkdir()
    curve = {"mean": [1.0], "low": [1.0], "high": [1.0]}
    path.write_text(json.dumps({"curves": {"model": curve, "model@60": curve,
                                           "least_squares": curve}}))
    job = Job(id="j000", variant="v", seed=1, run_dir=tmp_path)
    kinds = {k: c["kind"] for k, c in load_results(job)["curves"].items()}
    assert kinds == {"model": "model", "model@60": "model", "least_squares": "baseline"}
