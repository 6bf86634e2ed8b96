"""In-context baselines (Garg et al. 2022), all with one predictor signature
(:class:`~loopformer.baselines.base.Baseline`): closed-form ones in
:mod:`~loopformer.baselines.closed_form`, fitted ones in :mod:`~loopformer.baselines.fitted`,
classifiers (class ids in, class ids out) in :mod:`~loopformer.baselines.classifiers`;
here, building them from the config.

A task's suite is a list in its YAML (``eval.suite`` in ``conf/task/*.yaml``), one entry per
baseline: ``{_target_: <class path>, <hyperparameter>: <value>, ...}``. ``eval.baselines``
picks what runs: ``default`` (the suite) or a list of ``default``, shorthand names
(``lasso_0.1``) and entries like the suite's (or ``{name: <shorthand>, ...}``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from loopformer.baselines.base import Baseline
from loopformer.baselines.classifiers import (
    KNNClassifier,
    LogisticRegression,
    MajorityClass,
    XGBoostClassifier,
)
from loopformer.baselines.closed_form import Averaging, LeastSquares, NearestNeighbors, Ridge
from loopformer.baselines.fitted import CpuFitBaseline, DecisionTree, GD2LayerNN, Lasso, XGBoost
from loopformer.errors import ConfigError, check_type

log = logging.getLogger(__name__)

__all__ = ["Averaging", "Baseline", "CpuFitBaseline", "DecisionTree", "GD2LayerNN",
           "KNNClassifier", "Lasso", "LeastSquares", "LogisticRegression", "MajorityClass",
           "NearestNeighbors", "Ridge", "XGBoost", "XGBoostClassifier", "allowed_names",
           "build_baselines"]

CONFIG_KEY = "eval.baselines"
SUITE_KEY = "eval.suite"


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def allowed_names(classifies: bool | None = None) -> list[str]:
    """The strings ``eval.baselines`` accepts, from the classes that set a shorthand (with
    ``classifies``: only the classifiers, or only the regressors)."""
    out = ["default"]
    for short, cls in Baseline.by_shorthand.items():
        if classifies is not None and cls.classifies != classifies:
            continue
        if cls.suffix is None:
            out.append(short)
        elif _params(cls)[cls.suffix].default is inspect.Parameter.empty:
            out.append(f"{short}_<{cls.suffix}>")
        else:
            out.append(f"{short}[_<{cls.suffix}>]")
    return out


def _unknown(spec: Any) -> ConfigError:
    return ConfigError(f"{CONFIG_KEY} has unknown baseline {spec!r}; allowed names: "
                       f"{allowed_names()} (or a mapping with _target_ and its "
                       f"hyperparameters)")


def _suffix_type(cls: type, param: str) -> type:
    """The type of ``param`` (``int | None`` -> int), to read a ``_<value>`` suffix."""
    hint = typing.get_type_hints(cls.__init__).get(param, str)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _from_shorthand(spec: str | Mapping[str, Any]) -> tuple[type[Baseline], dict[str, Any]]:
    name, kwargs = (spec, {}) if isinstance(spec, str) else (
        spec["name"], {str(k): v for k, v in spec.items() if k != "name"})
    kinds = sorted(map(re.escape, Baseline.by_shorthand), key=len, reverse=True)
    match = re.fullmatch(r"(?P<kind>{})(?:_(?P<value>[^_]+))?".format("|".join(kinds)), name)
    if match is None:
        raise _unknown(spec)
    cls = Baseline.by_shorthand[match["kind"]]
    if match["value"] is not None:
        if cls.suffix is None:
            raise _unknown(spec)
        try:
            kwargs.setdefault(cls.suffix, _suffix_type(cls, cls.suffix)(match["value"]))
        except ValueError as e:
            raise _unknown(spec) from e
    if (cls.suffix is not None and cls.suffix not in kwargs
            and _params(cls)[cls.suffix].default is inspect.Parameter.empty):
        raise ConfigError(f"{CONFIG_KEY}: {match['kind']!r} needs its {cls.suffix}, e.g. "
                          f"'{match['kind']}_0.1' or {{name: {match['kind']}, "
                          f"{cls.suffix}: 0.1}}")
    return cls, kwargs


def _from_target(spec: Mapping[str, Any], key: str) -> tuple[type[Baseline], dict[str, Any]]:
    target = str(spec["_target_"])
    cls = _import_class(target)
    if cls is None:
        raise ConfigError(f"{key}: _target_={target!r} cannot be imported; give the full path "
                          f"of a Baseline class, e.g. loopformer.baselines.LeastSquares")
    if not isinstance(cls, type) or not issubclass(cls, Baseline):
        raise ConfigError(f"{key}: _target_={target!r} is not a Baseline subclass")
    return cls, {str(k): v for k, v in spec.items() if k != "_target_"}


def _import_class(path: str) -> object | None:
    """The object ``package.module.Name`` names; None where no such module or name exists. An
    exception raised while the module runs is a bug in it and propagates."""
    module, _, name = path.rpartition(".")
    try:
        found = module and importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        return None
    return getattr(importlib.import_module(module), name, None)


def _build_one(spec: Any, key: str, n_jobs: int | None, in_suite: bool = False
               ) -> Baseline | None:
    """One baseline, or None where a suite entry's optional module is missing."""
    if isinstance(spec, Mapping) and "_target_" in spec:
        cls, kwargs = _from_target(spec, key)
    elif isinstance(spec, str) or (isinstance(spec, Mapping)
                                   and isinstance(spec.get("name"), str)):
        cls, kwargs = _from_shorthand(spec)
    else:
        raise _unknown(spec)
    allowed = _params(cls)
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise ConfigError(f"{key}: baseline {cls.__name__} got unknown parameters {extra}; "
                          f"allowed: {list(allowed)}")
    if in_suite and (missing := cls.missing_modules()):
        log.warning("%s: %s needs %s, which is not installed; the suite skips it", key,
                    cls.__name__, ", ".join(missing))
        return None
    hints = typing.get_type_hints(cls.__init__)
    kwargs = {k: check_type(f"{key}: {cls.__name__}.{k}", v, hints.get(k))
              for k, v in kwargs.items()}
    if "n_jobs" in allowed:
        kwargs.setdefault("n_jobs", n_jobs)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from e


def build_baselines(specs: str | Sequence[Any] | None,
                    suite: Sequence[Mapping[str, Any]] | None = None,
                    n_jobs: int | None = -1) -> list[Baseline]:
    """Baselines from config: ``specs`` is ``eval.baselines`` (``default``, or a list of
    ``default``, shorthand names and entries), ``suite`` the task's ``eval.suite``. Bad
    entries raise :class:`ConfigError` naming the key and the allowed names."""
    if specs is None or isinstance(specs, str):
        specs = ["default"] if specs is None else [specs]
    out: list[Baseline] = []
    for spec in specs:
        if spec == "default":
            if suite is None:
                raise ConfigError(f"{CONFIG_KEY}=default runs the task's suite, but the task "
                                  f"sets no {SUITE_KEY}; add one to its conf/task/*.yaml or "
                                  f"list the baselines")
            out += [b for b in (_build_one(s, SUITE_KEY, n_jobs, in_suite=True)
                                 for s in suite) if b]
        else:
            out.append(_build_one(spec, CONFIG_KEY, n_jobs))
    names = [b.name for b in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{CONFIG_KEY} lists baselines {dupes} more than once")
    return out
