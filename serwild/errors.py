"""The errors the command line turns into one line: a user's mistake (exit 2), input that
cannot be read though the command was right (exit 1: a dead server, a corrupt shard), a stop
(SIGTERM: exit 143, as a shell reports it)."""


class UsageError(Exception):
    """An error said in one line, by default a user's mistake (a missing folder, an empty noise
    dir, a bad flag…). ``exit_code``: what the command line exits with."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class UnavailableError(UsageError):
    """Input that cannot be read now, though nothing the user typed is wrong (a server that does
    not answer after the retries, a shard that does not match its manifest): exit 1, as for any
    failure that running the same command later may not repeat."""

    exit_code = 1


def one_line(text: str) -> str:
    """An error's message as one line. Re-raised from a DataLoader worker, the message is the
    worker's whole traceback; its last line is the original message."""
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop or preemption), raised where the program is, like Ctrl-C's
    KeyboardInterrupt: clean-ups (``finally``, ``with``) run, then one line and exit status 143.
    Raised too where a child (torchrun) reports that it was stopped so."""
