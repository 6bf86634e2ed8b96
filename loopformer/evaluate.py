"""Evaluate a trained run against baselines (Garg et al. / Yang et al. protocol).

``python -m loopformer.evaluate run=RUN_DIR [option=value ...]``: each option replaces that key
of the run's ``eval`` block (its ``config.yaml``); ``--help`` lists them. Writes
``RUN_DIR/eval/results.json``, ``error_vs_examples.png``, ``error_vs_loops.png`` (looped
models) and logs a table of normalised error per number of in-context examples; for a
classification task, accuracy (and cross-entropy) instead: ``accuracy_vs_position.png``,
``accuracy_vs_loops.png`` and a table of accuracy per position; for real tables
(``task.name=openml``) per number of in-context examples on each held-out dataset, against
classifiers fitted per prompt on the same prompts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from loopformer.cli import option
from loopformer.cli import run as run_tool
from loopformer.config import EvalConfig, Settings, check_device
from loopformer.dial import format_dial, score_dial
from loopformer.errors import ConfigError
from loopformer.models import InContextModel, count_parameters
from loopformer.ood import evaluate_ood, format_ood_table
from loopformer.results.plots import (
    plot_accuracy_vs_loops,
    plot_accuracy_vs_position,
    plot_dial,
    plot_error_vs_examples,
    plot_error_vs_loops,
    plot_ood_of_run,
    plot_training_accuracy,
    plot_training_curve,
)
from loopformer.rundir import RunDir
from loopformer.scoring import load_model, model_answers, model_errors
from loopformer.stats import bootstrap_band

log = logging.getLogger(__name__)


def evaluate(model: InContextModel, spec: Settings, ev: EvalConfig | None = None,
             device=None) -> dict:
    """Score ``model`` and the baselines on fresh prompts at the final shape, as ``ev`` (by
    default the run's ``eval`` settings) says. Each curve says whether it is a ``model`` or a
    ``baseline`` (its ``kind``)."""
    from loopformer.data import generator  # imports lightning: after the checks

    ev = ev or spec.eval
    device = torch.device(device or next(model.parameters()).device)
    model = model.to(device).eval()
    if spec.function.n_classes:
        return evaluate_classes(model, spec, ev, device)
    shape = spec.curriculum.final
    xs, ys = spec.function.sample(ev.n_prompts, shape.n_points, shape.n_dims,
                              generator(device, ev.seed, 0))
    norm = spec.function.normalizer(shape.n_dims)
    loops = [shape.n_loops]
    if spec.looped:
        loops += [n for n in ev.extra_loops if n != shape.n_loops]
    errors = model_errors(model, xs, ys, norm, spec, loops, ev.batch_size,
                          settle_tol=ev.settle_tol)
    kinds = dict.fromkeys(errors, "model")

    xs_cpu, ys_cpu = xs.cpu(), ys.cpu()
    notes: dict[str, dict[str, int]] = {}
    for p in ev.predictors:
        log.info("baseline %s", p.name)
        errors[p.name] = (p(xs_cpu, ys_cpu) - ys_cpu).square() / norm
        kinds[p.name], notes[p.name] = "baseline", dict(p.diagnostics)

    band = lambda e: bootstrap_band(e.cpu(), n_resamples=ev.n_resamples, seed=ev.seed).to_dict()
    loop_curve = errors.pop("loop_curve", None)
    results = {
        "task": spec.function.name, "task_params": spec.task_params, "family": spec.model.family,
        "parameters": count_parameters(model),
        "active_dims": shape.n_dims, "n_points": shape.n_points, "normalizer": norm,
        "n_prompts": ev.n_prompts, "seed": ev.seed, "torch": torch.__version__,
        "trained_loops": shape.n_loops if spec.looped else None,
        "extra_loops": loops[1:],
        "settle_tol": ev.settle_tol,
        "curves": {name: {"kind": kinds[name], **band(e), **notes.get(name, {})}
                   for name, e in errors.items()},
    }
    if loop_curve is not None:
        results["loop_curve"] = {"loops": list(range(1, loop_curve.shape[1] + 1)),
                                 **band(loop_curve)}
    if ev.shifts:
        results["ood"] = evaluate_ood(model, spec, ev, device, loops)
    return results


def evaluate_classes(model: InContextModel, spec: Settings, ev: EvalConfig, device) -> dict:
    """A classification task's evaluation: accuracy per position (the mean over the prompts
    whose target there asks something) with its bootstrap band, of the model at the trained
    loop count and at ``eval.extra_loops`` and of the baselines (classifiers fitted per prompt
    on the same prompts); the mean cross-entropy; a looped model's accuracy at the last
    position after each loop. A task with several prompt sets (held-out datasets) is scored
    on each, under ``datasets``; the top level pools them."""
    from loopformer.data import generator  # imports lightning: after the checks

    shape = spec.curriculum.final
    sets = spec.function.eval_sets(ev.n_prompts, shape, generator(device, ev.seed, 0))
    loops = [shape.n_loops]
    if spec.looped:
        loops += [n for n in ev.extra_loops if n != shape.n_loops]
    scored = {name: _class_scores(model, spec, ev, batch, loops) for name, batch in sets.items()}
    pooled = {key: torch.cat([s[key] for s in scored.values()])
              for key in next(iter(scored.values())) if key != "notes"}
    notes = next(iter(scored.values()))["notes"]
    results = {
        "task": spec.function.name, "task_params": spec.task_params, "family": spec.model.family,
        "parameters": count_parameters(model), "metric": "accuracy",
        "n_classes": spec.function.n_classes, "chance": 1 / spec.function.n_classes,
        "n_points": shape.n_points, "n_hops": shape.n_hops,
        "position": "token" if spec.function.vocab else "in-context examples",
        "seed": ev.seed, "torch": torch.__version__,
        "trained_loops": shape.n_loops if spec.looped else None, "extra_loops": loops[1:],
        "settle_tol": ev.settle_tol,
        **_class_block(pooled, notes, ev),
    }
    if list(sets) != [spec.function.name]:  # held-out datasets: each its own block
        results["datasets"] = {name: _class_block(s, s["notes"], ev)
                               for name, s in scored.items()}
    if ev.dial.factor:
        results["dial"] = score_dial(model, spec, device, ev.n_resamples, ev.seed,
                                     ev.batch_size)
    return results


def _class_scores(model, spec: Settings, ev: EvalConfig, batch, loops) -> dict:
    """Per prompt and position, right (1) or wrong (0) for the model at each loop count and
    for each baseline, the model's cross-entropy, the asked positions, and the loop curve."""
    xs, ys = batch
    scores = model_answers(model, xs, ys, spec, loops, ev.batch_size, settle_tol=ev.settle_tol)
    kinds = dict.fromkeys((k for k in scores if k.startswith("model")), "model")
    xs_cpu, ys_cpu = xs.cpu(), ys.cpu()
    notes: dict[str, dict[str, int]] = {}
    for p in ev.predictors:  # classifiers (the settings refuse any other for classes)
        log.info("baseline %s on %d prompts", p.name, len(ys_cpu))
        scores[p.name] = (p(xs_cpu, ys_cpu) == ys_cpu).float()
        kinds[p.name], notes[p.name] = "baseline", dict(p.diagnostics)
    return {**scores, "notes": {"kinds": kinds, "diagnostics": notes}}


def _class_block(scores: dict, notes: dict, ev: EvalConfig) -> dict:
    """Accuracies, the cross-entropy and bootstrap bands of one prompt set's scores."""
    scores = dict(scores)
    mask, loss = scores.pop("asked"), scores.pop("loss")
    loop_curve = scores.pop("loop_curve", None)
    scores.pop("notes", None)
    mask_cpu = mask.cpu()

    def band(e, m=None):
        return bootstrap_band(e.cpu(), n_resamples=ev.n_resamples, seed=ev.seed,
                              mask=m).to_dict()

    n_asked = mask.sum().clamp_min(1)
    block = {
        "n_prompts": len(mask),
        "accuracy": {name: float((right.to(mask.device) * mask).sum() / n_asked)
                     for name, right in scores.items()},
        "loss": float((loss * mask).sum() / n_asked),
        "curves": {name: {"kind": notes["kinds"][name], **band(right, mask_cpu),
                          **notes["diagnostics"].get(name, {})}
                   for name, right in scores.items()},
    }
    if loop_curve is not None:  # the last position asks something in every prompt
        block["loop_curve"] = {"loops": list(range(1, loop_curve.shape[1] + 1)),
                               **band(loop_curve)}
    return block


def format_table(results: dict, columns: list[int] | None = None) -> str:
    """Normalised error (mean) per curve at chosen numbers of in-context examples (accuracy
    per position for a classification task)."""
    if results.get("metric") == "accuracy":
        return format_accuracy_table(results, columns)
    n = results["n_points"]
    if columns is None:
        d = results["active_dims"]
        columns = list(range(n)) if n <= 12 else sorted({0, 1, d // 2, d, 2 * d, n - 1} &
                                                         set(range(n)))
    names = list(results["curves"])
    width = max(12, *(len(s) for s in names))
    lines = [f"normalised error by number of in-context examples ({results['task']}, "
             f"d={results['active_dims']}, {results['n_prompts']} prompts)",
             f"{'':<{width}}" + "".join(f"{k:>10d}" for k in columns)]
    for name in names:
        mean = results["curves"][name]["mean"]
        lines.append(f"{name:<{width}}" + "".join(f"{mean[k]:>10.4f}" for k in columns))
    return "\n".join(lines)


def format_accuracy_table(results: dict, columns: list[int] | None = None) -> str:
    """Accuracy per curve over all asked positions and at chosen positions (nan: the
    position asks nothing); one table per held-out dataset, and the pooled one where there
    are several."""
    blocks = results.get("datasets") or {"": results}
    if len(blocks) > 1:
        blocks = {**blocks, "all held-out datasets": results}
    return "\n".join(_accuracy_table(results, block, name, columns)
                     for name, block in blocks.items())


def _accuracy_table(results: dict, block: dict, dataset: str,
                    columns: list[int] | None) -> str:
    n, by = results["n_points"], results.get("position", "token")
    if columns is None and n <= 12:
        columns = list(range(n))
    elif columns is None:  # tokens: spread over the sequence; examples: the first few too
        columns = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1} if by == "token"
                         else {0, 1, 2, 4, 8, 16, n // 2, n - 1} & set(range(n)))
    names = list(block["curves"])
    width = max(12, *(len(s) for s in names))
    what = f"{n} tokens" if by == "token" else f"{dataset}, {n} points"
    lines = [f"accuracy by {by} ({results['task']}, {what}, {block['n_prompts']} prompts, "
             f"chance {results['chance']:.3g}, cross-entropy {block['loss']:.4f})",
             f"{'':<{width}}{'all':>10}" + "".join(f"{k:>10d}" for k in columns)]
    for name in names:
        mean = block["curves"][name]["mean"]
        lines.append(f"{name:<{width}}{block['accuracy'][name]:>10.4f}"
                     + "".join(f"{mean[k]:>10.4f}" for k in columns))
    if results.get("dial"):
        lines.append(format_dial(results["dial"]))
    return "\n".join(lines)


def write_results(results: dict, run: RunDir) -> None:
    out_dir = run.eval
    out_dir.mkdir(parents=True, exist_ok=True)
    run.results.write_text(json.dumps(results, indent=1))
    if results.get("metric") == "accuracy":
        by = results.get("position", "token")
        title = f"{results['task']} ({results['n_points']} tokens)"
        if results.get("datasets"):
            title = f"{results['task']}: held out {', '.join(results['datasets'])}"
        plot_accuracy_vs_position(results["curves"], out_dir / "accuracy_vs_position.png",
                                  results["chance"], title=title, xlabel=by)
        if len(results.get("datasets") or ()) > 1:
            for name, block in results["datasets"].items():
                plot_accuracy_vs_position(block["curves"],
                                          out_dir / f"accuracy_vs_position_{name}.png",
                                          results["chance"], xlabel=by,
                                          title=f"{results['task']}: held out {name}")
        if "loop_curve" in results:
            plot_accuracy_vs_loops(results["loop_curve"], results["trained_loops"],
                                   results["chance"], out_dir / "accuracy_vs_loops.png",
                                   title=title)
        if results.get("dial"):
            plot_dial(results["dial"], results["chance"], out_dir / "accuracy_vs_dial.png",
                      title=f"{results['task']}: beyond the trained {results['dial']['of']}")
        return
    title = f"{results['task']} (d={results['active_dims']})"
    plot_error_vs_examples(results["curves"], out_dir / "error_vs_examples.png", title=title)
    if "loop_curve" in results:
        plot_error_vs_loops(results["loop_curve"], results["trained_loops"],
                            out_dir / "error_vs_loops.png")
    if results.get("ood"):
        plot_ood_of_run(results, out_dir)


CONF = Path(__file__).resolve().parents[1] / "conf"


def _with_eval_defaults(cfg):
    """A run's config with the ``eval`` keys it predates filled in: runs saved before the task
    YAMLs carried their baselines (``eval.suite``) and extra loop counts, where
    ``eval.extra_loops: null`` meant the task's own, get those of ``conf/task/<task>.yaml``,
    and any other missing key gets ``conf/config.yaml``'s default."""
    ev = cfg.get("eval") or OmegaConf.create({})
    if "suite" not in ev:
        task_file = CONF / "task" / f"{cfg.task.name}.yaml"
        if task_file.is_file():
            task_eval = OmegaConf.load(task_file).get("eval") or {}
            ev.suite = task_eval.get("suite")
            if ev.get("extra_loops") is None:
                ev.extra_loops = task_eval.get("extra_loops")
    if "ood_suite" not in ev:
        task_file = CONF / "task" / f"{cfg.task.name}.yaml"
        if task_file.is_file():
            ev.ood_suite = (OmegaConf.load(task_file).get("eval") or {}).get("ood_suite")
    defaults = OmegaConf.load(CONF / "config.yaml").eval
    for key, value in defaults.items():
        if key not in ev:
            ev[key] = value
    cfg.eval = ev
    return cfg


# the options of `python -m loopformer.evaluate`: run, and the keys of the run's eval block
@dataclass
class EvaluateOptions:
    """``python -m loopformer.evaluate``'s options: the run, and keys of its ``eval`` block
    to replace (null: the run's own value, from its config.yaml)."""

    run: str = option(help="the run directory")
    ckpt: str | None = option(None, "eval.ckpt: last | step=N | a checkpoint path")
    n_prompts: int | None = option(None, "eval.n_prompts: fresh prompts at the final shape")
    seed: int | None = option(None, "eval.seed: the prompts' and the bootstrap's seed")
    extra_loops: Any = option(None, "eval.extra_loops: loop counts beyond the trained one")
    baselines: Any = option(None, "eval.baselines: default, or a list of names and entries")
    batch_size: int | None = option(None, "eval.batch_size: prompts per model forward")
    n_resamples: int | None = option(None, "eval.n_resamples: bootstrap resamples")
    device: str | None = option(None, "eval.device: cpu | cuda")
    ood: Any = option(None, "eval.ood: none | default | a list of shifts")
    settle_tol: float | None = option(None, "eval.settle_tol: stop computing a prompt whose "
                                            "relative state change stayed below it")
    dial: Any = option(None, "eval.dial: {factor: F, n_prompts: N}: a token task's hops "
                             "(length) up to F x the trained ones")

    def overrides(self) -> dict[str, Any]:
        """The ``eval`` keys given on the command line."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "run" and getattr(self, f.name) is not None}


def load_settings(run_dir: Path, **overrides) -> Settings:
    """The settings of the run in ``run_dir`` (its ``config.yaml``), ``overrides`` replacing
    keys of its ``eval`` block."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"run={run_dir} has no config.yaml; is it a loopformer run "
                          f"directory?")
    allowed = [f.name for f in dataclasses.fields(EvaluateOptions) if f.name != "run"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown evaluation options {unknown}; allowed: {allowed} and run")
    cfg = _with_eval_defaults(OmegaConf.load(path))
    for key, value in overrides.items():
        cfg.eval[key] = value
    return Settings.from_config(cfg)


def evaluate_run(run_dir: str | Path, settings: Settings | None = None,
                 model: InContextModel | None = None, **overrides) -> dict:
    """Evaluate a run directory (its checkpoint ``eval.ckpt``, or ``model`` if given) and
    write ``RUN_DIR/eval``. Without ``settings``, the run's settings are read from its
    ``config.yaml``, ``overrides`` replacing keys of its ``eval`` block."""
    run_dir = Path(run_dir)
    if settings is None:
        settings = load_settings(run_dir, **overrides)
    elif overrides:
        raise ValueError("overrides apply to a run's config.yaml; pass settings or overrides")
    spec, ev = settings, settings.eval
    device = ev.device and check_device("eval.device", ev.device)
    if model is None:
        model = load_model(run_dir, spec, ev.ckpt)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device is not None:
        model = model.to(device)
    results = evaluate(model, spec, ev, device)
    results["run_dir"] = str(run_dir)
    results["checkpoint"] = ev.ckpt
    run = RunDir(run_dir)
    write_results(results, run)
    if run.metrics.is_file():
        from loopformer.csvlog import read_metrics  # imports lightning

        rows, title = read_metrics(run.metrics), f"{spec.name}: {spec.function.name}"
        if spec.function.n_classes:
            plot_training_accuracy(rows, 1 / spec.function.n_classes,
                                   run.eval / "training_curve.png", title=title)
        else:
            plot_training_curve(rows, spec.function.normalizer, run.eval / "training_curve.png",
                                title=title)
    table = format_table(results)
    if results.get("ood"):
        table += "\n" + format_ood_table(results)
    log.info("%s\nwrote %s", table, run.eval)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m loopformer.evaluate run=RUN_DIR [option=value ...]``."""
    return run_tool(EvaluateOptions, lambda o: evaluate_run(o.run, **o.overrides()), argv,
                    "python -m loopformer.evaluate", __doc__)


if __name__ == "__main__":
    sys.exit(main())
