"""Errors that describe a user mistake. The CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad config, bad data, a path that does not exist.

    The message must say what is wrong and what to do about it.
    """


class ConfigError(UserError):
    """The YAML config or a command-line override is invalid."""


class DataError(UserError):
    """A data file or one of its rows cannot be used."""


class RunDirError(UserError):
    """The run directory cannot be used as asked (exists, missing, not a run)."""


class RowError(ValueError):
    """A row does not fit its format; the message names the field. The data pipeline adds the row's location
    and turns it into a `DataError` (or counts the row, with `data.on_error: skip`)."""
