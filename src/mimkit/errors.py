"""Errors a user can act on.

Every error raised for bad input is a `MimkitError`; the CLI prints its message on one line and
exits non-zero instead of showing a traceback. Messages name the file, field or shape involved
and what was expected.
"""


class MimkitError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(MimkitError):
    """A config file or override has an unknown key, a wrong type or an invalid value."""


class DataError(MimkitError):
    """A data source is missing, unreadable, or holds items of an unexpected shape."""


class CheckpointError(MimkitError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another model."""


class TrainingHalted(MimkitError):
    """Training stopped on purpose, e.g. after too many non-finite losses."""


class RunInterrupted(TrainingHalted):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint to resume from."""
