"""The one exception type for bad configuration (its message names the key to change), and the
type check that raises it for typed settings."""

import contextlib


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the config key and the allowed
    values, so the command line can print it as one line without a traceback."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights. The message names the step
    and the last good checkpoint, which is kept."""


def check_type(key: str, value, kind: type):
    """``value`` for the setting ``key`` declared as ``kind``: an int (an integral float is
    converted), a float (any number, or a numeric string such as YAML's ``1e-4``) or a bool;
    other kinds are left to the setting's own checks. Anything else is a ConfigError."""
    shown = "null" if value is None else repr(value)  # as written in the YAML
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={shown} must be true or false")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={shown} must be an integer")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
        raise ConfigError(f"{key}={shown} must be a number")
    return value
