"""Studies: a named grid of variants x seeds, launched as one Hydra multirun and aggregated.

Each (variant, seed) becomes a job config ``STUDY_DIR/.jobs/job/jNNN.yaml`` holding its
overrides, its seed and its run directory ``STUDY_DIR/runs/<variant>/seed=<seed>``; the study
runs as ``train.py -m +job=j000,j001,...`` with the study's job folder on Hydra's search path,
so any Hydra launcher (basic, joblib, submitit local or SLURM) runs it unchanged. Finished runs
(with ``eval/results.json``) are skipped; interrupted ones resume from ``last.ckpt``. While the
multirun goes on, a monitor logs runs done / total, the elapsed time and an estimate of the rest.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from loopformer.errors import ConfigError, typed
from loopformer.plots import plot_study, plot_study_loops
from loopformer.rundir import RunDir

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def check_n_jobs(key: str, n_jobs):
    """``n_jobs`` if it is null or an integer >= 1, else a ConfigError naming ``key``."""
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)
                               or n_jobs < 1):
        raise ConfigError(f"{key}={n_jobs!r} must be an integer >= 1 (or null)")
    return n_jobs


@dataclass
class SweepConfig:
    """``python sweep.py``'s options (conf/sweep.yaml), typed like a run's settings."""

    study: dict[str, Any]  # the study (conf/study/*.yaml), read by Study.from_config
    study_dir: str  # runs in STUDY_DIR/runs/<variant>/seed=<seed>, report beside
    aggregate_only: bool = False  # only rebuild the report from finished runs
    launcher: str | None = None  # a hydra/launcher option (null: the study's own)
    n_jobs: int | None = None  # runs at once (null: the study's own)
    overrides: list[str] = field(default_factory=list)  # extra overrides for every run

    def __post_init__(self):
        check_n_jobs("n_jobs", self.n_jobs)
        for o in self.overrides:
            _split(o)


@dataclass
class StudyConfig:
    """A study as its YAML writes it (``conf/study/*.yaml``), typed."""

    name: str
    seeds: list[int]  # every variant runs every seed
    base: list[str] = field(default_factory=list)  # overrides of every run
    variants: dict[str, list[str]] | None = None  # name -> its overrides
    variants_from: str | None = None  # or: the variants of conf/study/NAME.yaml
    only: list[str] | None = None  # run these of the variants (the same run directories)
    examples: list[int] = field(default_factory=list)  # report columns
    groups: dict[str, list[str]] = field(default_factory=dict)  # plot -> variants drawn
    launcher: str | None = None  # hydra/launcher option the study runs with by default
    n_jobs: int | None = None  # concurrent runs (joblib launcher); threads split among them

    def __post_init__(self):
        if not self.name or not self.seeds:
            raise ConfigError(f"study {'seeds' if self.name else 'name'} is missing; a study "
                              f"names variants and seeds")
        check_n_jobs("study.n_jobs", self.n_jobs)


@dataclass(frozen=True)
class Study:
    name: str
    base: tuple[str, ...]  # overrides of every run
    variants: dict  # name -> tuple of overrides
    seeds: tuple[int, ...]
    examples: tuple[int, ...]  # report columns
    groups: dict = field(default_factory=dict)  # plot name -> variants drawn together
    launcher: str | None = None  # hydra/launcher option the study runs with by default
    n_jobs: int | None = None  # concurrent runs (joblib launcher); threads split among them

    @classmethod
    def from_config(cls, cfg: DictConfig | dict) -> Study:
        d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        if isinstance(d.get("only"), str):  # study.only=looped: one variant
            d["only"] = [d["only"]]
        c = typed(StudyConfig, d, key="study")
        variants = _variants_from(c) if c.variants_from else c.variants
        if not variants:
            raise ConfigError("study is missing ['variants']; a study names variants and seeds")
        groups = {g: tuple(members) for g, members in c.groups.items()}
        for g, members in groups.items():
            bad = [v for v in members if v not in variants]
            if bad:
                raise ConfigError(f"study.groups.{g} names unknown variants {bad}; allowed: "
                                  f"{list(variants)}")
        if c.only is not None:
            variants = _only(variants, c.only)
            groups = {g: tuple(v for v in members if v in variants)
                      for g, members in groups.items()}
            groups = {g: members for g, members in groups.items() if len(members) > 1}
        return cls(c.name, tuple(c.base), {k: tuple(v) for k, v in variants.items()},
                   tuple(c.seeds), tuple(c.examples), groups, c.launcher, c.n_jobs)


def load_study(name: str) -> Study:
    """``conf/study/NAME.yaml`` as ``python sweep.py study=NAME`` composes it (a study may build
    on another through a Hydra defaults list)."""
    from hydra import compose, initialize_config_dir

    allowed = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))
    if name not in allowed:
        raise ConfigError(f"study={name} is not in conf/study; allowed: {allowed}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return Study.from_config(compose("sweep", overrides=[f"study={name}"]).study)


def _only(variants: dict, only: list[str]) -> dict:
    """``study.only=[a,b]``: run these of the study's variants, in the study's order (the same
    run directories, so a later full run resumes from them)."""
    if not only:
        raise ConfigError(f"study.only={only} must be a non-empty list of the study's variants; "
                          f"allowed: {list(variants)}")
    bad = [v for v in only if v not in variants]
    if bad:
        raise ConfigError(f"study.only names unknown variants {bad}; allowed: {list(variants)}")
    return {k: v for k, v in variants.items() if k in only}


def _variants_from(c: StudyConfig) -> dict:
    """``study.variants_from: NAME``: the variants of ``conf/study/NAME.yaml``, so a study at
    another scale runs the same variants without restating them."""
    source = c.variants_from
    allowed = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))
    if c.variants:
        raise ConfigError(f"study sets both study.variants and study.variants_from={source}; "
                          f"keep one")
    if source not in allowed or source == c.name:
        raise ConfigError(f"study.variants_from={source} is not another study; allowed: "
                          f"{[a for a in allowed if a != c.name]}")
    other = OmegaConf.to_container(OmegaConf.load(CONF / "study" / f"{source}.yaml"))
    if other.get("variants_from") is not None or not other.get("variants"):
        raise ConfigError(f"study.variants_from={source}: that study must list its variants "
                          f"itself (variants_from does not chain)")
    return other["variants"]


@dataclass(frozen=True)
class Job:
    id: str
    variant: str
    seed: int
    run_dir: Path

    @property
    def finished(self) -> bool:
        return RunDir(self.run_dir).results.is_file()

    @property
    def started(self) -> bool:
        return RunDir(self.run_dir).last_ckpt.is_file()


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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s")


class Progress:
    """Logs ``runs done / total``, the elapsed time and an estimate of the time left, each
    time a run finishes and every ``every`` seconds, while the study's multirun goes on. The
    estimate is the mean wall time per run finished so far in this launch times the runs
    left (with concurrent runs, per run of the whole pool)."""

    def __init__(self, study: Study, jobs: list[Job], every: float = 60.0, poll: float = 0.5):
        self.study, self.jobs, self.every, self.poll = study, jobs, every, poll
        self.done_before = sum(j.finished for j in jobs)
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def line(self) -> str:
        done = sum(j.finished for j in self.jobs)
        total, elapsed = len(self.jobs), time.monotonic() - self.start
        new = done - self.done_before
        left = (f"about {_duration(elapsed / new * (total - done))} left" if new and done < total
                else "estimating the time left after the first run" if done < total
                else "all done")
        return (f"study {self.study.name}: {done}/{total} runs done, elapsed "
                f"{_duration(elapsed)}, {left}")

    def _watch(self) -> None:
        last_done, last_log = sum(j.finished for j in self.jobs), time.monotonic()
        while not self._stop.wait(self.poll):
            done = sum(j.finished for j in self.jobs)
            if done != last_done or time.monotonic() - last_log >= self.every:
                log.info("%s", self.line())
                last_done, last_log = done, time.monotonic()

    def __enter__(self) -> Progress:
        log.info("%s", self.line())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        log.info("%s", self.line())


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...), read from /proc (Linux;
    elsewhere none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the multirun and every process it started. Its runs stop at once and resume
    from their last checkpoint next time (checkpoints are written atomically). A softer signal
    would not do: Lightning stops a run gracefully on SIGINT/SIGTERM, and a launcher's worker
    then starts its next queued run."""
    for pid in [proc.pid, *_descendants(proc.pid)]:  # listed before any dies and is re-parented
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


class RunsFailed(Exception):
    """A run of the study failed; its own output says why (the study is left to resume)."""


class Interrupted(Exception):
    """The study was stopped (SIGINT or SIGTERM); its runs were stopped with it."""


def _run_multirun(cmd: list[str]) -> int:
    """Run the multirun; on SIGINT/SIGTERM (or any error here) stop it with all its workers."""

    def stop(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    proc = subprocess.Popen(cmd, cwd=ROOT)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers live there only
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    except BaseException:
        _kill_tree(proc)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launcher_overrides(launcher: str | None, n_jobs: int | None, extra: tuple[str, ...],
                       cpus: int | None = None) -> list[str]:
    """Hydra overrides that pick the launcher and, for ``n_jobs`` concurrent runs, give each
    run an equal share of the CPU threads and no progress bar (unless ``perf.threads`` or
    ``trainer.enable_progress_bar`` are set explicitly)."""
    out = []
    if check_n_jobs("n_jobs", n_jobs) and n_jobs > 1:
        launcher = launcher or "joblib"
        if launcher != "joblib":
            raise ConfigError(f"n_jobs={n_jobs} runs jobs concurrently through the joblib "
                              f"launcher; got launcher={launcher}. Use launcher=joblib, or "
                              f"n_jobs=null with {launcher}'s own settings")
        out.append(f"hydra.launcher.n_jobs={n_jobs}")
        keys = {o.split("=", 1)[0].lstrip("+~") for o in extra}
        if "perf.threads" not in keys:
            out.append(f"perf.threads={max(1, (cpus or os.cpu_count() or 1) // n_jobs)}")
        if "trainer.enable_progress_bar" not in keys:
            # concurrent bars garble one another; the study's progress line replaces them
            out.append("trainer.enable_progress_bar=false")
    if launcher:
        out.insert(0, f"hydra/launcher={launcher}")
    return out


def launch(study: Study, study_dir: Path, launcher: str | None = None,
           extra: tuple[str, ...] = (), n_jobs: int | None = None,
           progress_every: float = 60.0) -> list[Job]:
    """Run every unfinished job of the study as one Hydra multirun of ``train.py``.

    ``launcher`` and ``n_jobs`` default to the study's own; a run that had started resumes
    from its ``last.ckpt``."""
    launcher = launcher or study.launcher
    n_jobs = study.n_jobs if n_jobs is None else n_jobs
    hydra_launch = launcher_overrides(launcher, n_jobs, extra)
    jobs = plan(study, study_dir)
    pending = [j for j in jobs if not j.finished]
    log.info("study %s: %d runs, %d finished, %d to run (%d resume from a checkpoint)",
             study.name, len(jobs), len(jobs) - len(pending), len(pending),
             sum(j.started for j in pending))
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
           "+job=" + ",".join(j.id for j in pending), *extra, *hydra_launch]
    log.info("launching: %s", " ".join(cmd))
    with Progress(study, jobs, every=progress_every):
        returncode = _run_multirun(cmd)
    if returncode:
        raise RunsFailed(f"the study's multirun exited with code {returncode}")
    return jobs


def _load_results(job: Job) -> dict | None:
    path = RunDir(job.run_dir).results
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    curves = res.get("curves", {})
    if curves and not any("kind" in c for c in curves.values()):
        # written before curves carried their kind: the model's were named model, model@N
        for name, c in curves.items():
            c["kind"] = "model" if name == "model" or name.startswith("model@") else "baseline"
    return res


def _band(rows: list[list[float]]) -> dict:
    """Mean and min..max over seeds of per-seed curves."""
    m = torch.tensor(rows, dtype=torch.float64)  # (seeds, n)
    return {"mean": m.mean(0).tolist(), "low": m.min(0).values.tolist(),
            "high": m.max(0).values.tolist()}


def aggregate(study: Study, study_dir: Path) -> dict:
    """Mean and band (min..max over seeds) of each variant's curves at the trained loop count,
    at the extra loop counts of the evaluation, and of its error-vs-loops curve; writes
    ``report.md``, ``report.json``, ``error_vs_examples.png``, ``error_vs_loops.png`` and, for
    each of the study's groups, ``error_vs_examples_<group>.png`` and
    ``error_vs_loops_<group>.png`` in ``study_dir``."""
    per_key: dict[str, dict[str, list]] = {}  # curve key ("model", "model@60") -> variant -> rows
    loops: dict[str, list] = {}
    loop_x: dict[str, list] = {}
    baseline, seeds_done, trained, params = None, {}, {}, {}
    jobs = plan(study, study_dir)
    for variant in study.variants:
        for job in (j for j in jobs if j.variant == variant):
            res = _load_results(job)
            if res is None:
                continue
            seeds_done[variant] = seeds_done.get(variant, 0) + 1
            trained[variant] = res.get("trained_loops")
            params[variant] = res.get("parameters")
            for key, c in res["curves"].items():
                if c.get("kind") == "model":
                    per_key.setdefault(key, {}).setdefault(variant, []).append(c["mean"])
            if res.get("loop_curve"):
                loops.setdefault(variant, []).append(res["loop_curve"]["mean"])
                loop_x[variant] = res["loop_curve"]["loops"]
            baseline = baseline or res
    if not seeds_done:
        raise ConfigError(f"no finished runs under {study_dir / 'runs'}; run the study first "
                          f"(without aggregate_only=true)")
    if "model" not in per_key:
        raise ConfigError(f"the results.json files under {study_dir / 'runs'} mark no curve as "
                          f"a model (kind); they predate it: evaluate the runs again with "
                          f"python -m loopformer.evaluate run=RUN_DIR")
    curves = {v: _band(rows) for v, rows in per_key.get("model", {}).items()}
    extra = {key.removeprefix("model@"): {v: _band(rows) for v, rows in by_variant.items()
                                          if len(rows) == seeds_done[v]}
             for key, by_variant in per_key.items() if key != "model"}
    loop_curves = {v: {"loops": loop_x[v], **_band(rows)} for v, rows in loops.items()
                   if len(rows) == seeds_done[v]}
    if baseline is not None and "least_squares" in baseline["curves"]:
        curves["least_squares (baseline)"] = baseline["curves"]["least_squares"]
    report = {"study": study.name, "seeds": seeds_done, "curves": curves,
              "curves_at_loops": extra, "trained_loops": trained, "parameters": params,
              "loop_curves": loop_curves,
              "examples": list(study.examples), "groups": {k: list(v) for k, v in
                                                          study.groups.items()}}
    ood = aggregate_ood(study, jobs)
    if ood:
        report["ood"] = ood
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "report.json").write_text(json.dumps(report, indent=1))
    (study_dir / "report.md").write_text(format_report(report, baseline) +
                                         (format_ood_report(ood) if ood else ""))
    _plots(study, study_dir, report)
    from loopformer.report import write_study_data  # data.json: per run, for results pages

    write_study_data(study, study_dir)
    return report


def aggregate_ood(study: Study, jobs: list[Job]) -> dict:
    """The out-of-distribution blocks (``results["ood"]``) over seeds: per variant, shift
    and model curve (each loop count), the error at the shift's summary position (``k = 2d``
    or its last scored one): mean and min..max over the seeds that scored it."""
    values: dict = {}  # variant -> shift -> curve -> [per-seed error]
    ks: dict = {}
    for job in jobs:
        res = _load_results(job)
        for shift, block in ((res or {}).get("ood") or {}).items():
            k = block["summary_k"]
            ks[shift] = k
            for name, c in block["curves"].items():
                if c.get("kind") == "model":
                    values.setdefault(job.variant, {}).setdefault(shift, {}).setdefault(
                        name, []).append(c["mean"][k])
    return {v: {s: {name: {"k": ks[s], "seeds": len(e), **{
        key: val[0] for key, val in _band([[x] for x in e]).items()}}
        for name, e in by_curve.items()} for s, by_curve in by_shift.items()}
        for v, by_shift in values.items() if v in study.variants}


def format_ood_report(ood: dict) -> str:
    """A markdown table: variant x shift x loop count, mean [min, max] over seeds."""
    lines = ["", "## Out of distribution", "",
             "Normalised error at k = 2d examples (or the shift's last scored k, given), "
             "mean [min, max] over seeds.", "",
             "| variant | shift | k | curve | error |", "|---|---|---|---|---|"]
    for v, by_shift in ood.items():
        for s, by_curve in by_shift.items():
            for name, c in by_curve.items():
                lines.append(f"| {v} | {s} | {c['k']} | {name} | {c['mean']:.4f} "
                             f"[{c['low']:.4f}, {c['high']:.4f}] |")
    return "\n".join(lines) + "\n"


def _plots(study: Study, study_dir: Path, report: dict) -> None:
    curves, loop_curves = report["curves"], report["loop_curves"]
    baselines = {k: v for k, v in curves.items() if k not in study.variants}
    b = sorted({t for t in report["trained_loops"].values() if t})
    trained = b[0] if len(b) == 1 else None
    band = "mean over seeds, band min..max"
    plot_study(curves, study_dir / "error_vs_examples.png",
               title=f"{study.name}: normalised error ({band})")
    if loop_curves:
        plot_study_loops(loop_curves, trained, study_dir / "error_vs_loops.png",
                         title=f"{study.name}: error at the last position ({band})")
    for group, members in study.groups.items():
        sel = {v: curves[v] for v in members if v in curves}
        if sel:
            plot_study({**sel, **baselines}, study_dir / f"error_vs_examples_{group}.png",
                       title=f"{study.name}, {group}: normalised error ({band})")
        sel = {v: loop_curves[v] for v in members if v in loop_curves}
        if sel:
            plot_study_loops(sel, trained, study_dir / f"error_vs_loops_{group}.png",
                             title=f"{study.name}, {group}: error at the last position "
                                   f"({band})")


def _cell(c: dict, k: int) -> str:
    return f"{c['mean'][k]:.4f} [{c['low'][k]:.4f}, {c['high'][k]:.4f}]"


def format_report(report: dict, sample: dict | None) -> str:
    curves = report["curves"]
    n = len(next(iter(curves.values()))["mean"])
    cols = [k for k in report["examples"] if k < n] or [n - 1]
    b = sorted({t for t in report.get("trained_loops", {}).values() if t})
    at = [("", curves)] + [(f" @{key}", c) for key, c in report.get("curves_at_loops",
                                                                    {}).items()]
    params = report.get("parameters", {})
    head = "| variant | parameters | seeds | " + " | ".join(
        f"k={k}{suffix}" for suffix, _ in at for k in cols) + " |"
    lines = [f"# Study `{report['study']}`", ""]
    if sample:
        loops = (f" Columns `k=N` use the trained loop count (b = {', '.join(map(str, b))}); "
                 f"`k=N @L` use L loop iterations." if b else "")
        lines += [f"Task `{sample['task']}`, d={sample['active_dims']}, "
                  f"{sample['n_prompts']} prompts per run. Normalised squared error at k "
                  f"in-context examples: mean over seeds [min, max].{loops}", ""]
    lines += [head, "|" + "---|" * (len(cols) * len(at) + 3)]
    for name, c in curves.items():
        cells = [_cell(c, k) for k in cols]
        for _, by_variant in at[1:]:
            cells += [_cell(by_variant[name], k) if name in by_variant else "-" for k in cols]
        n_params = f"{params[name]:,}" if params.get(name) else "-"
        lines.append(f"| {name} | {n_params} | {report['seeds'].get(name, '-')} | "
                     + " | ".join(cells) + " |")
    lines += ["", "![error vs examples](error_vs_examples.png)", ""]
    if report.get("loop_curves"):
        lines += ["![error vs loops](error_vs_loops.png)", ""]
    for group in report.get("groups", {}):
        lines += [f"![{group}: error vs examples](error_vs_examples_{group}.png)"]
    return "\n".join(lines) + "\n"
