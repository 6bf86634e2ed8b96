"""In-context baselines (Garg et al. 2022), all with one predictor signature
(:class:`~loopformer.baselines.base.Baseline`): closed-form ones in
:mod:`~loopformer.baselines.closed_form`, fitted ones in :mod:`~loopformer.baselines.fitted`;
here, building them from the config.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loopformer.baselines.base import CONFIG_KEY, Baseline
from loopformer.baselines.closed_form import Averaging, LeastSquares, NearestNeighbors, Ridge
from loopformer.baselines.fitted import CpuFitBaseline, DecisionTree, GD2LayerNN, Lasso, XGBoost
from loopformer.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Averaging", "Baseline", "CpuFitBaseline", "DecisionTree", "GD2LayerNN", "Lasso",
           "LeastSquares", "NearestNeighbors", "Ridge", "XGBoost", "build_baselines",
           "default_baselines"]

# --------------------------------------------------------------------------------------
# suites and config
# --------------------------------------------------------------------------------------

LASSO_ALPHAS = (1.0, 0.1, 0.01, 0.001)


def _xgboost_available() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def default_baselines(task_name: str, task_params: Mapping[str, Any] | None = None,
                      n_jobs: int | None = -1) -> list[Baseline]:
    """Garg et al.'s baseline suite for a task (xgboost skipped, with a warning, if absent)."""
    from loopformer.tasks import TASKS, NoisyLinearRegression

    params = dict(task_params or {})
    suite: list[Baseline] = [LeastSquares(), NearestNeighbors(3), Averaging()]
    if task_name == "linear_regression":
        pass
    elif task_name == "noisy_linear_regression":
        noise_std = float(params.get("noise_std", NoisyLinearRegression(1).noise_std))
        if noise_std > 0:
            suite.append(Ridge(noise_std**2))  # Bayes-optimal for w ~ N(0, I)
    elif task_name == "sparse_linear_regression":
        suite += [Lasso(a, n_jobs=n_jobs) for a in LASSO_ALPHAS]
    elif task_name == "relu_2nn_regression":
        suite.append(GD2LayerNN())
    elif task_name == "decision_tree":
        suite.append(DecisionTree(max_depth=4, n_jobs=n_jobs))
        if _xgboost_available():
            suite.append(XGBoost(n_jobs=n_jobs))
        else:
            log.warning("xgboost is not installed; the decision_tree suite skips it")
    else:
        raise ConfigError(f"task.name={task_name!r} has no baseline suite; "
                          f"choose one of {sorted(TASKS)}")
    return suite


# name -> (class, parameter set by the ``_<value>`` suffix, its type, is the suffix required)
_KINDS: dict[str, tuple[type[Baseline], str | None, Callable[[str], Any], bool]] = {
    "least_squares": (LeastSquares, None, str, False),
    "averaging": (Averaging, None, str, False),
    "nearest_neighbors": (NearestNeighbors, "n_neighbors", int, False),
    "ridge": (Ridge, "alpha", float, True),
    "lasso": (Lasso, "alpha", float, True),
    "decision_tree": (DecisionTree, "max_depth", int, False),
    "gd_2layer_nn": (GD2LayerNN, None, str, False),
    "xgboost": (XGBoost, None, str, False),
}
ALLOWED_NAMES = ["default", "least_squares", "averaging", "nearest_neighbors[_<k>]",
                 "ridge_<alpha>", "lasso_<alpha>", "decision_tree[_<max_depth>]",
                 "gd_2layer_nn", "xgboost"]
_NAME_RE = re.compile(r"^(?P<kind>{})(?:_(?P<value>[^_]+))?$".format(
    "|".join(sorted(map(re.escape, _KINDS), key=len, reverse=True))))


def _unknown(spec: Any) -> ConfigError:
    return ConfigError(f"{CONFIG_KEY} has unknown baseline {spec!r}; allowed names: "
                       f"{ALLOWED_NAMES} (or a mapping with 'name' and its hyperparameters)")


def _build_one(spec: str | Mapping[str, Any], n_jobs: int | None) -> Baseline:
    import inspect

    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        kwargs = {str(k): v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise _unknown(spec)
    match = _NAME_RE.match(name)
    if match is None:
        raise _unknown(spec)
    cls, suffix_param, convert, required = _KINDS[match["kind"]]
    if match["value"] is not None:
        if suffix_param is None:
            raise _unknown(spec)
        try:
            kwargs.setdefault(suffix_param, convert(match["value"]))
        except ValueError as e:
            raise _unknown(spec) from e
    if required and suffix_param not in kwargs:
        raise ConfigError(f"{CONFIG_KEY}: {match['kind']!r} needs its {suffix_param}, e.g. "
                          f"'{match['kind']}_0.1' or {{name: {match['kind']}, "
                          f"{suffix_param}: 0.1}}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ConfigError(f"{CONFIG_KEY}: baseline {match['kind']!r} got unknown parameters "
                          f"{extra}; allowed: {allowed}")
    if "n_jobs" in allowed:
        kwargs.setdefault("n_jobs", n_jobs)
    return cls(**kwargs)


def build_baselines(specs: str | Sequence[str | Mapping[str, Any]] | None,
                    task_name: str | None = None,
                    task_params: Mapping[str, Any] | None = None,
                    n_jobs: int | None = -1) -> list[Baseline]:
    """Baselines from config: a list of names (``"lasso_0.1"``, ``"nearest_neighbors_3"``,
    ``"default"`` for the task's suite) and/or mappings (``{name: xgboost, n_estimators: 20}``).
    ``None`` or ``"default"`` alone gives :func:`default_baselines`. Unknown names raise
    :class:`ConfigError` naming ``eval.baselines`` and the allowed names.
    """
    if specs is None or isinstance(specs, str):
        specs = ["default"] if specs is None else [specs]
    out: list[Baseline] = []
    for spec in specs:
        if spec == "default":
            if task_name is None:
                raise ConfigError(f"{CONFIG_KEY}: 'default' needs the task name (task.name)")
            out += default_baselines(task_name, task_params, n_jobs=n_jobs)
        else:
            out.append(_build_one(spec, n_jobs))
    names = [b.name for b in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{CONFIG_KEY} lists baselines {dupes} more than once")
    return out
