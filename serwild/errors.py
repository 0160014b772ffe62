"""Errors a user can fix; the CLI prints each as one line and exits with status 2."""


class UsageError(Exception):
    """Bad input from the user (a missing folder, an empty noise dir, a bad flag…)."""
