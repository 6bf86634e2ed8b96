"""Bad inputs, each refused: one line naming the key, exit 2, no traceback, nothing written.

    python benchmarks/bad_inputs.py [--filter TEXT]

Runs every case below as its own command (``train.py``, ``python -m loopformer.evaluate``,
``sweep.py``) in a fresh working directory, and prints a Markdown table: the command, the
line it was refused with, and the time to the refusal (Python's start included): wall clock,
and the CPU time of the command (user + system), which a busy machine does not inflate. A case
fails when the exit status is not 2, stderr is not one ``error:`` line naming the key, a
traceback shows, or a file was added, changed or removed. Exit status: the failures.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QS = "experiment=quickstart"

# (group, arguments, what the refusal must name); {run} is a trained-looking run directory
# (config.yaml only), {held} a run directory holding a checkpoint
TRAIN = [
    ("top level", "+foo=1", "unknown key foo"),
    ("top level", "seed=-1", "seed=-1"),
    ("top level", "seed=4294967296", "seed=4294967296"),
    ("top level", "seed=abc", "seed='abc'"),
    ("top level", "name=${nosuch}", "name"),
    ("model", "model.n_embd=250", "model.n_head=4"),
    ("model", "model.dropout=1.5", "model.dropout=1.5"),
    ("model", "model.keep_tokens=nan", "model.keep_tokens=nan"),
    ("model", "model.family=mlp", "model.family='mlp'"),
    ("model", "+model.foo=1", "unknown key model.foo"),
    ("task", "task.name=quadratic", "task.name='quadratic'"),
    ("task", "+task.depth=2", "task.depth"),
    ("task", "task=noisy_linear_regression task.noise_std=nan", "task.noise_std=nan"),
    ("task", "task=sparse_linear_regression task.sparsity=0", "task.sparsity"),
    ("curriculum", "curriculum.loops_jitter=100", "curriculum.loops_jitter=100"),
    ("curriculum", "curriculum.loops_jitter=-1", "curriculum.loops_jitter=-1"),
    ("curriculum", "curriculum.window=0", "curriculum.window=0"),
    ("curriculum", "curriculum.points.end=50", "curriculum.points.end=50"),
    ("curriculum", "curriculum.loops.interval=0", "curriculum.loops.interval=0"),
    ("data", "data.batch_size=0", "data.batch_size=0"),
    ("data", "data.batch_size=1.5", "data.batch_size=1.5"),
    ("optimizer", "optimizer.lr=nan", "optimizer.lr=nan"),
    ("optimizer", "optimizer.lr=-1", "optimizer.lr=-1"),
    ("optimizer", "optimizer.weight_decay=inf", "optimizer.weight_decay=inf"),
    ("optimizer", "optimizer.betas=[0.9,1.5]", "optimizer.betas[1]=1.5"),
    ("optimizer", "optimizer.schedule=step", "optimizer.schedule='step'"),
    ("optimizer", "optimizer.min_lr_ratio=2", "optimizer.min_lr_ratio=2"),
    ("optimizer", "optimizer.warmup_steps=-5", "optimizer.warmup_steps=-5"),
    ("test", "test.size=0", "test.size=0"),
    ("test", "test.seed=-3", "test.seed=-3"),
    ("checkpoint", "checkpoint.every_n_steps=0", "checkpoint.every_n_steps=0"),
    ("checkpoint", "checkpoint.keep_every_n_steps=-1", "checkpoint.keep_every_n_steps=-1"),
    ("trainer", "trainer.max_steps=0", "trainer.max_steps=0"),
    ("trainer", "trainer.max_time=abc", "trainer.max_time='abc'"),
    ("trainer", "trainer.accelerator=tpu", "trainer.accelerator='tpu'"),
    ("trainer", "trainer.precision=8", "trainer.precision='8'"),
    ("trainer", "trainer.precision=16-mixed", "trainer.precision=16-mixed"),
    ("trainer", "trainer.devices=0", "trainer.devices=0"),
    ("trainer", "trainer.gradient_clip_val=nan", "trainer.gradient_clip_val=nan"),
    ("trainer", "+trainer.logger=true", "trainer.logger"),
    ("trainer", "+trainer.foo=1", "trainer: "),  # Lightning's own words, from its Trainer
    ("trainer", "trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1"),
    ("logger", "logger=wandb logger.wandb.mode=live", "logger.wandb.mode='live'"),
    ("logger", "+logger.foo=1", "unknown key logger.foo"),
    ("callbacks", "+callbacks.extra=1", "callbacks.extra"),
    ("perf", "perf.threads=0", "perf.threads=0"),
    ("perf", "perf.compile_mode=fast", "perf.compile_mode='fast'"),
    ("eval", "eval.device=gpu", "eval.device='gpu'"),
    ("eval", "eval.n_prompts=0", "eval.n_prompts=0"),
    ("eval", "eval.extra_loops=[0]", "eval.extra_loops=0"),
    ("eval", "eval.baselines=[lsq]", "eval.baselines"),
    ("eval", "eval.seed=-1", "eval.seed=-1"),
    ("run dir", "ckpt_path=last", "ckpt_path=last"),
    ("run dir", "ckpt_path=last run_dir=nosuch", "ckpt_path=last"),
    ("run dir", "ckpt_path=nosuch.ckpt", "ckpt_path=nosuch.ckpt"),
    ("run dir", "run_dir={held}", "already holds a run"),
]
if not __import__("torch").cuda.is_available():  # refused on a machine without a GPU
    TRAIN += [("trainer", "trainer.accelerator=gpu", "trainer.accelerator=gpu"),
              ("eval", "eval.device=cuda", "eval.device=cuda"),
              ("perf", "perf.cuda_graph=true", "perf.cuda_graph=true")]
EVALUATE = [
    ("", "run=RUN_DIR"),
    ("run=nosuch", "run=nosuch"),
    ("run={run} n_prompt=5", "unknown option n_prompt"),
    ("run={run} nprompts", "nprompts"),
    ("run={run} device=gpu", "eval.device='gpu'"),
    ("run={run} n_prompts=0", "eval.n_prompts=0"),
    ("run={run} extra_loops=[abc]", "eval.extra_loops[0]"),
    ("run={run} baselines=[lsq]", "eval.baselines"),
    ("run={run} seed=-1", "eval.seed=-1"),
]
SWEEP = [
    ("+foo=1", "unknown key foo"),
    ("n_jobs=0", "n_jobs=0"),
    ("aggregate_only=maybe", "aggregate_only='maybe'"),
    ("overrides=[abc]", "study override 'abc'"),
    ("+study.foo=1", "study has unknown keys ['foo']"),
    ("study_dir=out aggregate_only=true", "no finished runs"),
]


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _fixtures(root: Path) -> None:
    """{run}: config.yaml of a quickstart run; {held}: a directory holding last.ckpt."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from loopformer.config import Settings

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[QS])
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text(OmegaConf.to_yaml(Settings.from_config(cfg)
                                                                .to_dict()))
    (root / "held" / "checkpoints").mkdir(parents=True)
    (root / "held" / "checkpoints" / "last.ckpt").write_bytes(b"")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(cmd: list[str], key: str) -> tuple[bool, str, float, float]:
    """Run ``cmd`` in a fresh directory: (passed, its refusal line, wall s, CPU s)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fixtures(root)
        for name in ("run", "held"):
            cmd = [c.replace("{" + name + "}", str(root / name)) for c in cmd]
        before = _snapshot(root)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
        start, cpu = time.perf_counter(), _cpu_seconds()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        lines = proc.stderr.strip().splitlines()
        line = lines[0] if lines else ""
        ok = (proc.returncode == 2 and len(lines) == 1 and line.startswith("error: ")
              and key in line and "Traceback" not in proc.stdout + proc.stderr
              and _snapshot(root) == before)
        if not ok:
            line = f"FAILED (exit {proc.returncode}): {proc.stderr.strip()[-300:]!r}"
        return ok, line.replace(str(root), "TMP"), seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="", help="only the cases whose command contains this")
    args = ap.parse_args()
    py = sys.executable
    cases = [(g, [py, str(ROOT / "train.py"), QS, *a.split()], f"train.py {QS} {a}", k)
             for g, a, k in TRAIN]
    cases += [("evaluate", [py, "-m", "loopformer.evaluate", *a.split()],
               f"python -m loopformer.evaluate {a}", k) for a, k in EVALUATE]
    cases += [("sweep.py", [py, str(ROOT / "sweep.py"), "study=paper_cpu", *a.split()],
               f"sweep.py study=paper_cpu {a}", k) for a, k in SWEEP]
    cases = [c for c in cases if args.filter in c[2]]
    print("| # | group | command | refused with | wall s | CPU s |\n|---|---|---|---|---|---|")
    failures, times, cpus = 0, [], []
    for i, (group, cmd, shown, key) in enumerate(cases, 1):
        ok, line, seconds, cpu = check(cmd, key)
        failures += not ok
        times.append(seconds)
        cpus.append(cpu)
        shown = shown.replace("{run}", "RUN").replace("{held}", "HELD")
        print(f"| {i} | {group} | `{shown}` | {line.replace('|', '/')} | {seconds:.1f} | "
              f"{cpu:.1f} |", flush=True)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"\n{len(cases) - failures}/{len(cases)} refused as they should; time to refusal: "
          f"wall {min(times):.1f}-{max(times):.1f} s (median {median(times):.1f}), CPU "
          f"{min(cpus):.1f}-{max(cpus):.1f} s (median {median(cpus):.1f})")
    return failures


if __name__ == "__main__":
    sys.exit(main())
