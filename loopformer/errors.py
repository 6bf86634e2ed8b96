"""The one exception type for bad configuration: its message names the key to change."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the config key and the allowed
    values, so the command line can print it as one line without a traceback."""
