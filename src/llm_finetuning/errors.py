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
