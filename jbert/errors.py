"""Errors that mean "this input cannot be used"; the entry points show them as one line.

Everything here names its culprit (file and line, directory, flag or config key), so that the
message alone says what to fix; `jbert.training.cli.usage_errors` turns them into `error: ...` and
exit status 2.
"""


class InputError(ValueError):
    """A file, directory, flag or value given by the user that cannot be used."""


class ConfigError(InputError):
    """A bad config file, override or config value given by the user; names the culprit."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose contents are not what was saved (or no readable checkpoint at all)."""
