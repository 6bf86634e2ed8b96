"""Studies: a named grid of variants x seeds, launched as one Hydra multirun (aggregated by
:mod:`loopformer.results.aggregate`).

Each (variant, seed) becomes a job config ``STUDY_DIR/.jobs/job/jNNN.yaml`` holding its
overrides, its seed and its run directory ``STUDY_DIR/runs/<variant>/seed=<seed>``; the study
runs as ``train.py -m +job=j000,j001,...`` with the study's job folder on Hydra's search path,
so any Hydra launcher (basic, joblib, submitit local or SLURM) runs it unchanged. Finished runs
(with ``eval/results.json``) are skipped; interrupted ones resume from ``last.ckpt``. While the
multirun goes on, a monitor logs runs done / total, the elapsed time and an estimate of the rest.
"""

from __future__ import annotations

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

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from loopformer.errors import ConfigError, typed
from loopformer.exact import CORRECTIONS, SIDES
from loopformer.formatting import duration
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
            _parse(o)


# final_accuracy, test_accuracy, dial_accuracy: a classification study's (accuracy; test_area
# then averages the test accuracy curve)
MEASURES = ("escape_rate", "final_error", "test_error", "test_area", "final_accuracy",
            "test_accuracy", "dial_accuracy")
DESIGNS = ("paired", "unpaired")


@dataclass(frozen=True)
class Comparison:
    """A confirmatory comparison, stated in the study's YAML before its runs are read.

    ``side``: ``greater`` is the claim that a's measure is larger than b's (a escapes more
    often, or has the higher error: worse, or slower for the test curve), ``less`` that it is
    smaller; ``two-sided`` that they differ. With ``margin`` the comparison is an equivalence
    test (TOST): a and b are comparable when |a - b| < margin is shown."""

    id: str  # the row's name on the results page (F4a, ...)
    a: str  # a variant of the study
    b: str  # the variant it is compared with
    measure: str  # escape_rate | final_error | test_error | test_area | final_accuracy |
    # test_accuracy | dial_accuracy (the accuracy at dial value k: hops, or length)
    design: str = "paired"  # paired (by seed) | unpaired
    side: str = "two-sided"  # two-sided | greater (a > b) | less (a < b)
    k: int | None = None  # examples: final_error's (default the study's largest); test_*: the
    # test curve's position, the last (its prompt length - 1)
    step: int | None = None  # test_error: the step read (required); test_area: the last step
    # of the area (default the last test step)
    margin: float | None = None  # equivalence margin (TOST) on the measure's scale
    claim: str = ""  # what the comparison stands for, in words

    def check(self, key: str, variants: list[str]) -> None:
        """A ConfigError naming ``key`` (``study.comparisons[ID]``) for a value that does not
        fit the schema or the study's variants."""
        for name, value, allowed in (("measure", self.measure, MEASURES),
                                     ("design", self.design, DESIGNS),
                                     ("side", self.side, SIDES)):
            if value not in allowed:
                raise ConfigError(f"{key}.{name}={value} is not one of {list(allowed)}")
        for name in ("a", "b"):
            if getattr(self, name) not in variants:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} is not a variant of the "
                                  f"study; allowed: {variants}")
        if self.a == self.b:
            raise ConfigError(f"{key} compares {self.a} with itself; name two variants")
        self._check_values(key)

    def _check_values(self, key: str) -> None:
        if self.margin is not None and self.measure == "escape_rate":
            raise ConfigError(f"{key}.margin={self.margin} needs an equivalence measure "
                              f"(final_error, test_error, test_area), not escape_rate")
        if self.margin is not None and (self.margin <= 0 or self.side != "two-sided"):
            raise ConfigError(f"{key}.margin={self.margin} must be > 0 with side=two-sided "
                              f"(equivalence is two one-sided tests)")
        if self.k is not None and (self.measure == "escape_rate" or self.k < 1):
            raise ConfigError(f"{key}.k={self.k} must be >= 1, for an error measure "
                              f"(escape_rate has no k)")
        if self.measure in ("test_error", "test_accuracy") and self.step is None:
            raise ConfigError(f"{key}.step is missing: {self.measure} is read at a stated step")
        if self.step is not None and (not self.measure.startswith("test_") or self.step < 1):
            raise ConfigError(f"{key}.step={self.step} must be >= 1, for test_error or "
                              f"test_area only")


def check_comparisons(comparisons: list[Comparison], variants: list[str]) -> None:
    """Each comparison fits the schema and names variants of the study; ids are unique."""
    seen = set()
    for i, c in enumerate(comparisons):
        if not c.id or c.id in seen:
            raise ConfigError(f"study.comparisons[{i}].id={c.id!r} must be a unique, non-empty "
                              f"name")
        seen.add(c.id)
        c.check(f"study.comparisons[{c.id}]", variants)


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
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # the confirmatory
    # family, each read as a Comparison
    correction: str = "holm"  # holm | bonferroni | none, over the comparisons
    alpha: float = 0.05  # the family-wise level of the comparisons
    escape_threshold: float | None = None  # the escape rule's threshold on the fixed test
    # set's curve at the last position (null: 0.5 on the error, 0.9 on the accuracy)

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"study.correction={self.correction} is not one of "
                              f"{list(CORRECTIONS)}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"study.alpha={self.alpha} must lie in (0, 1)")
        if not self.name or not self.seeds:
            raise ConfigError(f"study {'seeds' if self.name else 'name'} is missing; a study "
                              f"names variants and seeds")
        check_n_jobs("study.n_jobs", self.n_jobs)
        if self.escape_threshold is not None and not 0 < self.escape_threshold < 1:
            raise ConfigError(f"study.escape_threshold={self.escape_threshold} must lie in "
                              f"(0, 1): an error or an accuracy at the last position")


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
    comparisons: tuple[Comparison, ...] = ()  # the confirmatory family, in the YAML's order
    correction: str = "holm"  # over the comparisons: holm | bonferroni | none
    alpha: float = 0.05  # the family-wise level
    escape_threshold: float | None = None  # the escape rule's (null: the metric's default)

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
        comparisons = [typed(Comparison, d, key=f"study.comparisons[{i}]")
                       for i, d in enumerate(c.comparisons)]
        check_comparisons(comparisons, list(variants))
        return cls(c.name, tuple(c.base), {k: tuple(v) for k, v in variants.items()},
                   tuple(c.seeds), tuple(c.examples), groups, c.launcher, c.n_jobs,
                   tuple(comparisons), c.correction, c.alpha, c.escape_threshold)


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


_PARSER = OverridesParser.create()


def _parse(override: str) -> Override:
    """One override read by Hydra's own grammar (``key={a:1,b:2}`` is a dict, ``key=[]`` a
    list, as on a command line), or a ConfigError naming it."""
    if "=" not in override:
        raise ConfigError(f"study override {override!r} is not of the form key=value")
    try:
        (parsed,) = _PARSER.parse_overrides([override])
    except OverrideParseException as e:
        raise ConfigError(f"study override {override!r} does not parse: "
                          f"{' '.join(str(e).splitlines()[:2])}") from None
    if parsed.is_sweep_override() or parsed.is_delete():
        raise ConfigError(f"study override {override!r} must set one value: a study runs "
                          f"each job with one value per key (list values as variants)")
    return parsed


def _is_hydra(override: str) -> bool:
    """An override of Hydra itself (``hydra.launcher.partition=gpu``, ``hydra/launcher=...``),
    which belongs on the multirun's command line, not in a job's config."""
    key = _parse(override).key_or_group
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def job_config(job: Job, overrides: tuple[str, ...]) -> str:
    """A ``_global_`` config: group choices as defaults overrides, values as a body (a later
    override of the same key replaces an earlier one, as on a command line)."""
    groups, body = {}, OmegaConf.create()
    for o in map(_parse, overrides):
        key = o.key_or_group
        if (CONF / key).is_dir():
            groups.pop(key, None)
            groups[key] = o.value()
        else:
            OmegaConf.update(body, key, o.value(), merge=True, force_add=True)
    body.seed = job.seed
    body.run_dir = str(job.run_dir)
    body.ckpt_path = "last" if job.started else None
    lines = ["# @package _global_"]
    if groups:
        lines += ["defaults:"] + [f"  - override /{k}: {v}" for k, v in groups.items()]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(body)


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
        left = (f"about {duration(elapsed / new * (total - done))} left" if new and done < total
                else "estimating the time left after the first run" if done < total
                else "all done")
        return (f"study {self.study.name}: {done}/{total} runs done, elapsed "
                f"{duration(elapsed)}, {left}")

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
    # the runs' extra overrides go into each job's config, after the study's own: on the
    # multirun's command line Hydra would apply them to the config composed without the job
    # (the base config: task.hops of a p_hop study is not there yet); Hydra's own stay there
    hydra_extra = tuple(o for o in extra if _is_hydra(o))
    run_extra = tuple(o for o in extra if not _is_hydra(o))
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
        overrides = study.base + study.variants[j.variant] + run_extra
        (job_dir / "job" / f"{j.id}.yaml").write_text(job_config(j, overrides))
    cmd = [sys.executable, str(ROOT / "train.py"), "-m",
           f"hydra.searchpath=[file://{job_dir}]",
           f"hydra.sweep.dir={study_dir.resolve() / 'multirun'}",
           "+job=" + ",".join(j.id for j in pending), *hydra_extra, *hydra_launch]
    log.info("launching: %s", " ".join(cmd))
    with Progress(study, jobs, every=progress_every):
        returncode = _run_multirun(cmd)
    if returncode:
        raise RunsFailed(f"the study's multirun exited with code {returncode}")
    return jobs
