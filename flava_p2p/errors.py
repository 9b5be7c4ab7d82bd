"""Errors a user can cause. Their message names the thing that was wrong and how to fix it."""


class FlavaError(Exception):
    """Base for user-facing errors: the CLI prints the message (no traceback) and exits 2."""
