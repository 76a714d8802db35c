"""User-facing errors: raised for bad input (files, rows, config keys); the CLI prints them as one line."""


class UserError(Exception):
    """A mistake in what the user gave us; the message names the file/row/key, what was found and what was expected."""


class ConfigError(UserError, ValueError):
    """An experiment config that is invalid; raised before Ray starts."""


class DataError(UserError, ValueError):
    """A catalog, manifest or image set that cannot be used as given."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or model directory that cannot be loaded (missing files, pickle, wrong shapes)."""


class RenamedSettingWarning(FutureWarning):
    """An old name the user wrote still works but will not forever; the CLI prints it as one `warning:` line."""


class StorageError(UserError, OSError):
    """A location that cannot be used: a bad URI, a missing bucket, missing credentials, access denied."""
