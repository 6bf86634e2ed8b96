"""The benchmark tools' own logic: which configuration the GPU check trains with, and the
figures the profiler summary and the run-speed report compute."""

import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_pick  # noqa: E402
import profile_step  # noqa: E402
import run_speed  # noqa: E402


def _junit(path, outcomes):
    suite = ET.Element("testsuite")
    for name, ok in outcomes.items():
        case = ET.SubElement(suite, "testcase", name=name)
        if not ok:
            ET.SubElement(case, "failure")
    ET.ElementTree(suite).write(path)


def _bench(path, rows):
    import json

    path.write_text("".join(json.dumps({"shape": "final", "path": "lightning", **r}) + "\n"
                            for r in rows))


GRAPH = "test_gpu_graph_training_matches_eager_training"
BF16 = ["trainer.precision=bf16-mixed"]
COMPILED_GRAPH = [*BF16, "perf.compile=true", "perf.cuda_graph=true"]


@pytest.mark.parametrize("compiled_graph_ok,expected", [(True, COMPILED_GRAPH),
                                                        (False, [*BF16, "perf.cuda_graph=true"])])
def test_the_fastest_configuration_counts_only_if_its_own_gpu_tests_passed(
        tmp_path, compiled_graph_ok, expected):
    _junit(tmp_path / "gpu_tests.xml", {
        "test_bf16_autocast_agrees_with_fp32_on_gpu": True,
        "test_compiled_block_agrees_with_eager_on_gpu[default]": True,
        "test_gpu_smoke_training[default]": True,
        "test_captured_step_graph_replays_the_reference_gradients": True,
        f"{GRAPH}[32-true]": True, f"{GRAPH}[bf16-mixed]": True,
        f"{GRAPH}[bf16-mixed-compiled]": compiled_graph_ok})
    _bench(tmp_path / "bench.jsonl", [
        {"steps_per_s": 20.0, "extra": []},
        {"steps_per_s": 150.0, "extra": [*BF16, "perf.cuda_graph=true"]},
        {"steps_per_s": 190.0, "extra": COMPILED_GRAPH},
        {"steps_per_s": 900.0, "extra": ["perf.cuda_graph=true"], "path": "plain"}])
    assert gpu_pick.pick(tmp_path) == expected


def test_a_configuration_whose_tests_did_not_run_is_not_picked(tmp_path):
    _junit(tmp_path / "gpu_tests.xml", {"test_bf16_autocast_agrees_with_fp32_on_gpu": True})
    _bench(tmp_path / "bench.jsonl", [{"steps_per_s": 20.0, "extra": []},
                                      {"steps_per_s": 90.0, "extra": ["perf.cuda_graph=true"]}])
    assert gpu_pick.pick(tmp_path) == []
    assert gpu_pick.pick(tmp_path / "missing") is None


def test_busy_time_is_the_union_of_intervals():
    assert profile_step.busy_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert profile_step.busy_us([]) == 0


def test_profile_summary_per_step():
    def ev(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        ev("cpu_op", "aten::mm", 0, 5), ev("cpu_op", "aten::add", 6, 2),
        ev("cuda_runtime", "cudaGraphLaunch", 0, 3),
        ev("cuda_runtime", "cudaLaunchKernel", 4, 1),
        ev("cuda_runtime", "cudaStreamSynchronize", 9, 50),
        ev("kernel", "gemm", 10, 300), ev("kernel", "gemm", 400, 300),
        ev("kernel", "layer_norm", 650, 100), ev("gpu_memcpy", "HtoD", 900, 100),
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 0}]}
    s = profile_step.summarise(trace, steps=2, wall_s=0.002)
    assert s["wall_ms_per_step"] == 1.0
    assert s["cpu_ops_per_step"] == 1.0 and s["kernels_per_step"] == 1.5
    # busy: 10-310, 400-750 (two kernels overlap), 900-1000: 750 us of 2000
    assert s["device_busy_ms_per_step"] == pytest.approx(0.375)
    assert s["device_busy_share"] == pytest.approx(0.375)
    assert s["graph_launches_per_step"] == 0.5 and s["launches_per_step"] == 0.5
    assert s["waits_per_step"] == 0.5 and s["waits"] == ["cudaStreamSynchronize"]
    assert s["top_kernels"][0] == ("gemm", 85.7)


def test_run_speed_by_curriculum_stage():
    rows = [
        {"step": 99, "curriculum/n_dims": 5, "curriculum/n_points": 11},
        {"step": 199, "curriculum/n_dims": 5, "curriculum/n_points": 11,
         "time/steps_per_s": 100.0},
        {"step": 200, "test/loss": 1.0},
        {"step": 299, "curriculum/n_dims": 6, "curriculum/n_points": 13,
         "time/steps_per_s": 50.0},
        {"step": 399, "curriculum/n_dims": 6, "curriculum/n_points": 13,
         "time/steps_per_s": 25.0}]
    table, overall = run_speed.speed_by_stage(rows)
    assert table == [((5, 11), 199, 199, 100.0), ((6, 13), 299, 399, 37.5)]
    assert overall == pytest.approx(300 / (1 + 2 + 4))  # 300 steps in 7 s
    with pytest.raises(SystemExit, match="step_rate"):
        run_speed.speed_by_stage(rows[:1])


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the interpreter: logs its arguments; "train.py" writes what FAKE_WRITES lists
echo "$*" >>"$FAKE_LOG"
if [ "$1" = train.py ]; then
    for f in $FAKE_WRITES; do
        mkdir -p "$(dirname "logs/gpu_seed_lr/$f")" && : >"logs/gpu_seed_lr/$f"
    done
    exit "${FAKE_EXIT:-0}"
fi
"""
RUN_FILES = "metrics.csv eval/results.json eval/training_curve.png"


def _train_stage(tmp_path, **env):
    """gpu_check.sh's train stage, from a copy of the script in tmp_path (its logs/ land
    there), with a stand-in interpreter."""
    import os
    import shutil
    import subprocess

    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "benchmarks")
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(tmp_path / "calls"),
           "TRAIN_EXTRA": "", "TRAIN_SECONDS": "60", **env}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "train", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    return proc, calls


def test_gpu_check_train_stage_forces_the_gpu_and_copies_the_run(tmp_path):
    proc, calls = _train_stage(tmp_path, FAKE_WRITES=RUN_FILES)
    assert proc.returncode == 0, proc.stdout
    train_call = next(c for c in calls.splitlines() if c.startswith("train.py"))
    assert "trainer.accelerator=gpu" in train_call.split()
    assert sorted(p.name for p in (tmp_path / "out" / "seed_lr").iterdir()) == [
        "metrics.csv", "results.json", "training_curve.png"]
    assert "benchmarks/run_speed.py logs/gpu_seed_lr" in calls


@pytest.mark.parametrize("env,message", [
    ({"FAKE_WRITES": "metrics.csv"}, "failed (exit 1): cp "),  # no evaluation files
    ({"FAKE_WRITES": RUN_FILES, "FAKE_EXIT": "3"}, "failed (exit 3)"),  # training failed
    ({"RESUME": "1"}, "RESUME=1 but logs/gpu_seed_lr.extra is missing"),
], ids=["missing-copy", "training-fails", "nothing-to-resume"])
def test_gpu_check_train_stage_fails_on_any_failed_step(tmp_path, env, message):
    proc, calls = _train_stage(tmp_path, **env)
    assert proc.returncode != 0
    assert message in proc.stdout  # the stage tees everything it prints to train.log
    assert message in (tmp_path / "out" / "train.log").read_text()
    assert "run_speed.py" not in calls  # nothing ran after the failed step
