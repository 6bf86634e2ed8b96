"""Evaluate a trained run against baselines (Garg et al. / Yang et al. protocol).

``python -m loopformer.evaluate run=RUN_DIR [ckpt=last] [n_prompts=1280] [seed=0]
[extra_loops=[500]] [baselines=[least_squares,averaging]] [device=cpu]``

Writes ``RUN_DIR/eval/results.json``, ``error_vs_examples.png``, ``error_vs_loops.png``
(looped models) and logs a table of normalised error per number of in-context examples.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from loopformer.config import EvalConfig, Settings, check_device, cli_options
from loopformer.errors import ConfigError
from loopformer.models import InContextModel, count_parameters
from loopformer.ood import evaluate_ood, format_ood_table
from loopformer.results.plots import (
    plot_error_vs_examples,
    plot_error_vs_loops,
    plot_ood_of_run,
    plot_training_curve,
)
from loopformer.rundir import RunDir
from loopformer.scoring import load_model, model_errors
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
    shape = spec.curriculum.final
    xs, ys = spec.function.sample(ev.n_prompts, shape.n_points, shape.n_dims,
                              generator(device, ev.seed, 0))
    norm = spec.function.normalizer(shape.n_dims)
    loops = [shape.n_loops]
    if spec.looped:
        loops += [n for n in ev.extra_loops if n != shape.n_loops]
    errors = model_errors(model, xs, ys, norm, spec, loops, ev.batch_size)
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
        "curves": {name: {"kind": kinds[name], **band(e), **notes.get(name, {})}
                   for name, e in errors.items()},
    }
    if loop_curve is not None:
        results["loop_curve"] = {"loops": list(range(1, loop_curve.shape[1] + 1)),
                                 **band(loop_curve)}
    if ev.shifts:
        results["ood"] = evaluate_ood(model, spec, ev, device, loops)
    return results


def format_table(results: dict, columns: list[int] | None = None) -> str:
    """Normalised error (mean) per curve at chosen numbers of in-context examples."""
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


def write_results(results: dict, run: RunDir) -> None:
    out_dir = run.eval
    out_dir.mkdir(parents=True, exist_ok=True)
    run.results.write_text(json.dumps(results, indent=1))
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
OPTIONS = {"run": "the run directory", "ckpt": "eval.ckpt", "n_prompts": "eval.n_prompts",
           "seed": "eval.seed", "extra_loops": "eval.extra_loops",
           "baselines": "eval.baselines", "batch_size": "eval.batch_size",
           "n_resamples": "eval.n_resamples", "device": "eval.device", "ood": "eval.ood"}


def load_settings(run_dir: Path, **overrides) -> Settings:
    """The settings of the run in ``run_dir`` (its ``config.yaml``), ``overrides`` replacing
    keys of its ``eval`` block."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"run={run_dir} has no config.yaml; is it a loopformer run "
                          f"directory?")
    allowed = [k for k in OPTIONS if k != "run"]
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

        plot_training_curve(read_metrics(run.metrics), spec.function.normalizer,
                            run.eval / "training_curve.png",
                            title=f"{spec.name}: {spec.function.name}")
    table = format_table(results)
    if results.get("ood"):
        table += "\n" + format_ood_table(results)
    log.info("%s\nwrote %s", table, run.eval)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m loopformer.evaluate run=RUN_DIR [option=value ...]``: 0, or 2 with one
    line naming the option when the command is refused; any other error is a bug and shows
    its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = cli_options(argv if argv is not None else sys.argv[1:], OPTIONS,
                           "python -m loopformer.evaluate")
        run_dir = args.pop("run", None)
        if run_dir is None:
            raise ConfigError("give the run directory: python -m loopformer.evaluate "
                              "run=RUN_DIR")
        evaluate_run(str(run_dir), **args)
    except ConfigError as e:
        log.error("error: %s", " ".join(str(e).split()))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
