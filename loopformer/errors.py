"""The one exception type for bad configuration (its message names the key to change), and the
two ways typed settings are read: :func:`typed` for a dataclass schema (OmegaConf structured
config), :func:`check_type` for one value (a task's or a baseline's own parameters)."""

import contextlib
import dataclasses
import math
import types
from typing import TypeVar

from omegaconf import (
    BooleanNode,
    DictConfig,
    FloatNode,
    IntegerNode,
    ListConfig,
    OmegaConf,
    StringNode,
)
from omegaconf.errors import (
    ConfigKeyError,
    ConfigTypeError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the config key and the allowed
    values, so the command line can print it as one line without a traceback."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights. The message names the step
    and the last good checkpoint, which is kept."""


def _shown(value) -> str:
    return "null" if value is None else repr(value)  # as written in the YAML


def check_type(key: str, value, kind: type):
    """``value`` for the setting ``key`` declared as ``kind``: an int (an integral float is
    converted), a float (any number, or a numeric string such as YAML's ``1e-4``) or a bool;
    other kinds are left to the setting's own checks. Anything else is a ConfigError."""
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={_shown(value)} must be true or false")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={_shown(value)} must be an integer")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if not isinstance(value, float):
            raise ConfigError(f"{key}={_shown(value)} must be a number")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be a finite number")
    return value


KINDS = {IntegerNode: "an integer", FloatNode: "a number", BooleanNode: "true or false",
         StringNode: "a string"}


def typed(schema: type[T], values, key: str = "") -> T:
    """``values`` (a dict or config node) as the dataclass ``schema``, through OmegaConf: its
    conversions apply (YAML's ``1e-4`` and an int become floats, ``1`` and ``yes`` true), a
    key left out takes the schema's default, and ``__post_init__`` checks run. A wrong type,
    an unknown key or a missing one is a ConfigError naming the full key (``key`` + the
    schema's own, e.g. ``model.n_layer``), and so is a number that is not finite (nan, inf)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        _check_finite(merged, key)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        if (bug := _constructor_error(e)) is not None:
            # a bug in a schema's checks: its own traceback, no config message
            raise bug.with_traceback(_own_frames(bug.__traceback__)) from None
        raise ConfigError(_message(e, key)) from e


def _own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without OmegaConf's frames (Hydra's error printer cuts a traceback at the first
    one, which would hide where the bug is)."""
    kept = []
    while tb is not None:
        if not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("omegaconf"):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _constructor_error(e: OmegaConfBaseException) -> BaseException | None:
    """The exception a schema's constructor raised, where OmegaConf wrapped it as "Could not
    create instance of ..." (it wraps any TypeError there, a bug's included); None for
    OmegaConf's own findings (a wrong type, an unknown key)."""
    if not isinstance(e, ConfigTypeError) or not str(e.msg).startswith(
            "Could not create instance"):
        return None
    err: BaseException | None = e
    while isinstance(err, OmegaConfBaseException):
        err = err.__context__
    return err


def _check_finite(node, key: str) -> None:
    """Refuse nan and inf anywhere under ``node``: no setting takes them."""
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for k, _ in items:
        child = node._get_node(k)
        full = f"{key}[{k}]" if isinstance(node, ListConfig) else ".".join(
            p for p in (key, str(k)) if p)
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_none() and not child._is_missing():
                _check_finite(child, full)
        elif isinstance(child._value(), float) and not math.isfinite(child._value()):
            raise ConfigError(f"{full}={child._value()} must be a finite number")


def _message(e: OmegaConfBaseException, prefix: str) -> str:
    key = ".".join(k for k in (prefix, str(e.full_key or "")) if k)
    if isinstance(e, ConfigKeyError):  # e.object_type: the dataclass without that key
        allowed = ", ".join(f.name for f in dataclasses.fields(e.object_type))
        return f"unknown key {key}; allowed: {allowed}"
    if isinstance(e, MissingMandatoryValue):
        return f"{key} is missing"
    kind = KINDS.get(type(e.child_node))
    if kind is None:  # a list's element, a scalar for a group: OmegaConf's own words
        return f"{key}: {str(e.msg).strip().splitlines()[0]}"
    return f"{key}={_shown(e.value)} must be {kind}"
