"""Studies: a named grid of variants x seeds, launched as one Hydra multirun and aggregated.

Each (variant, seed) becomes a job config ``STUDY_DIR/.jobs/job/jNNN.yaml`` holding its
overrides, its seed and its run directory ``STUDY_DIR/runs/<variant>/seed=<seed>``; the study
runs as ``train.py -m +job=j000,j001,...`` with the study's job folder on Hydra's search path,
so any Hydra launcher (basic, joblib, submitit local or SLURM) runs it unchanged. Finished runs
(with ``eval/results.json``) are skipped; interrupted ones resume from ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from loopformer.errors import ConfigError
from loopformer.plots import plot_study

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@dataclass(frozen=True)
class Study:
    name: str
    base: tuple[str, ...]  # overrides of every run
    variants: dict  # name -> tuple of overrides
    seeds: tuple[int, ...]
    examples: tuple[int, ...]  # report columns

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Study:
        d = OmegaConf.to_container(cfg, resolve=True)
        missing = [k for k in ("name", "variants", "seeds") if not d.get(k)]
        if missing:
            raise ConfigError(f"study is missing {missing}; a study names variants and seeds")
        return cls(d["name"], tuple(d.get("base") or ()),
                   {k: tuple(v or ()) for k, v in d["variants"].items()},
                   tuple(int(s) for s in d["seeds"]), tuple(d.get("examples") or ()))


@dataclass(frozen=True)
class Job:
    id: str
    variant: str
    seed: int
    run_dir: Path

    @property
    def finished(self) -> bool:
        return (self.run_dir / "eval" / "results.json").is_file()

    @property
    def started(self) -> bool:
        return (self.run_dir / "checkpoints" / "last.ckpt").is_file()


def plan(study: Study, study_dir: Path) -> list[Job]:
    jobs, i = [], 0
    for variant in study.variants:
        for seed in study.seeds:
            jobs.append(Job(f"j{i:03d}", variant, seed,
                            (study_dir / "runs" / variant / f"seed={seed}").resolve()))
            i += 1
    return jobs


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ConfigError(f"study override {override!r} is not of the form key=value")
    key, value = override.split("=", 1)
    return key.lstrip("+~"), value


def job_config(job: Job, overrides: tuple[str, ...]) -> str:
    """A ``_global_`` config: group choices as defaults overrides, values as a body."""
    groups, values = [], []
    for o in overrides:
        key, value = _split(o)
        (groups if (CONF / key).is_dir() else values).append((key, value))
    body = OmegaConf.from_dotlist([f"{k}={v}" for k, v in values])
    body.seed = job.seed
    body.run_dir = str(job.run_dir)
    body.ckpt_path = "last" if job.started else None
    lines = ["# @package _global_"]
    if groups:
        lines += ["defaults:"] + [f"  - override /{k}: {v}" for k, v in groups]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(body)


def launch(study: Study, study_dir: Path, launcher: str | None = None,
           extra: tuple[str, ...] = ()) -> list[Job]:
    """Run every unfinished job of the study as one Hydra multirun of ``train.py``."""
    jobs = plan(study, study_dir)
    pending = [j for j in jobs if not j.finished]
    log.info("study %s: %d runs, %d finished, %d to run", study.name, len(jobs),
             len(jobs) - len(pending), len(pending))
    if not pending:
        return jobs
    job_dir = study_dir.resolve() / ".jobs"
    (job_dir / "job").mkdir(parents=True, exist_ok=True)
    for j in pending:
        overrides = study.base + study.variants[j.variant]
        (job_dir / "job" / f"{j.id}.yaml").write_text(job_config(j, overrides))
    cmd = [sys.executable, str(ROOT / "train.py"), "-m",
           f"hydra.searchpath=[file://{job_dir}]",
           f"hydra.sweep.dir={study_dir.resolve() / 'multirun'}",
           "+job=" + ",".join(j.id for j in pending), *extra]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"the study's multirun exited with code {proc.returncode}")
    return jobs


def _load_results(job: Job) -> dict | None:
    path = job.run_dir / "eval" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def aggregate(study: Study, study_dir: Path) -> dict:
    """Mean and band (min..max over seeds) of each variant's model curve; writes
    ``report.md``, ``report.json`` and ``error_vs_examples.png`` in ``study_dir``."""
    curves, baseline, seeds_done = {}, None, {}
    for variant in study.variants:
        means = []
        for job in (j for j in plan(study, study_dir) if j.variant == variant):
            res = _load_results(job)
            if res is None:
                continue
            means.append(torch.tensor(res["curves"]["model"]["mean"]))
            baseline = baseline or res
        if not means:
            continue
        m = torch.stack(means)  # (seeds, n)
        seeds_done[variant] = len(means)
        curves[variant] = {"mean": m.mean(0).tolist(), "low": m.min(0).values.tolist(),
                           "high": m.max(0).values.tolist()}
    if not curves:
        raise ConfigError(f"no finished runs under {study_dir / 'runs'}; run the study first "
                          f"(without aggregate_only=true)")
    if baseline is not None and "least_squares" in baseline["curves"]:
        curves["least_squares (baseline)"] = baseline["curves"]["least_squares"]
    report = {"study": study.name, "seeds": seeds_done, "curves": curves,
              "examples": list(study.examples)}
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "report.json").write_text(json.dumps(report, indent=1))
    (study_dir / "report.md").write_text(format_report(report, baseline))
    plot_study(curves, study_dir / "error_vs_examples.png",
               title=f"{study.name}: normalised error (mean over seeds, band min..max)")
    return report


def format_report(report: dict, sample: dict | None) -> str:
    n = len(next(iter(report["curves"].values()))["mean"])
    cols = [k for k in report["examples"] if k < n] or [n - 1]
    head = "| variant | seeds | " + " | ".join(f"k={k}" for k in cols) + " |"
    lines = [f"# Study `{report['study']}`", ""]
    if sample:
        lines += [f"Task `{sample['task']}`, d={sample['active_dims']}, "
                  f"{sample['n_prompts']} prompts per run. Normalised squared error at k "
                  f"in-context examples: mean over seeds [min, max].", ""]
    lines += [head, "|" + "---|" * (len(cols) + 2)]
    for name, c in report["curves"].items():
        cells = [f"{c['mean'][k]:.4f} [{c['low'][k]:.4f}, {c['high'][k]:.4f}]" for k in cols]
        lines.append(f"| {name} | {report['seeds'].get(name, '-')} | " + " | ".join(cells) + " |")
    lines += ["", "![error vs examples](error_vs_examples.png)", ""]
    return "\n".join(lines)
