"""The errors the command line turns into one line: a user's mistake (exit 2), a stop (SIGTERM:
exit 143, as a shell reports it)."""


class UsageError(Exception):
    """Bad input from the user (a missing folder, an empty noise dir, a bad flag…)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop or preemption), raised where the program is, like Ctrl-C's
    KeyboardInterrupt: clean-ups (``finally``, ``with``) run, then one line and exit status 143.
    Raised too where a child (torchrun) reports that it was stopped so."""
