"""Errors that reach a user as one clear message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad input, missing file, ...).

    The CLI prints the message without a traceback and exits with code 2.
    The message should say what was wrong and what to do about it.
    """

    exit_code = 2


class DivergenceError(UserError):
    """The optimisation diverged (NaN or inf loss or step size)."""


class Interrupted(UserError):
    """The run was stopped by SIGINT or SIGTERM after saving a checkpoint."""

    exit_code = 130
