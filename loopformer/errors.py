"""The one exception type for bad configuration: its message names the key to change."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the config key and the allowed
    values, so the command line can print it as one line without a traceback."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights. The message names the step
    and the last good checkpoint, which is kept."""
