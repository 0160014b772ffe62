"""torchrun, quiet: ``python -m serwild.processes.torchrun_agent [torchrun's arguments] -m MODULE …``,
the same elastic agent as ``python -m torch.distributed.run``, run by
:func:`serwild.processes.torchrun.launch`. It changes only what it prints and leaves behind: a stop by
SIGTERM/SIGINT is status 128 + signal, not a traceback; a rank's one-line failure (status 2, a
user's mistake, or 3) is passed on as it is; any other failed rank has said why itself (a
signal gets one line), so torchrun's own traceback and failure report are never printed
(status 1); its PID is in the ranks' environment (``AGENT_ENV``), so a rank can tell its agent
died (:func:`serwild.processes.torchrun.follow_agent`).
"""

from __future__ import annotations

import logging
import os
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from serwild.processes.torchrun import AGENT_ENV, SAID_EXIT, USAGE_EXIT, exit_now

SAID = (USAGE_EXIT, SAID_EXIT)  # a rank exiting with one of these has said what went wrong
EXIT_LOGGER = "torch.distributed.elastic.multiprocessing.api"  # where torchrun logs each rank's exit
AGENT_LOGGER = "torch.distributed.elastic.agent.server.api"  # where it logs a signal it received


class HoldExits(logging.Filter):
    """torchrun's per-rank exit lines, held back until we know why it stopped: after a
    failure they only repeat what the rank said; after a success they are let through."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if "failed (exitcode" in text or "closing signal" in text:
            self.held.append(record)
            return False
        return True


def failure_status(e: ChildFailedError) -> tuple[int, list[str]]:
    """The exit status for torchrun's failure ``e`` and the lines to print (at most one per rank).

    Ranks the agent stopped itself (SIGTERM, after the first failure) are among the failures
    too: name those killed by another signal (the OOM killer's SIGKILL), or, when SIGTERMs are
    all there is, the first. A rank that said its error (or that it stopped for another's) has
    said everything: whichever rank's exit the agent saw first, nothing is added."""
    failed = sorted(e.failures.items())
    said = sorted({f.exitcode for f in e.failures.values()} & set(SAID))
    killed = [(r, f) for r, f in failed if f.exitcode < 0 and f.signal_name() != "SIGTERM"]
    if not said and not killed and all(f.exitcode < 0 for _, f in failed):
        killed = [e.get_first_failure()]
    lines = [f"torchrun: error: rank {rank} (PID {f.pid}) was killed by {f.signal_name()}" for rank, f in killed]
    return (said[0] if said and not killed else 1), lines


class DropDeathSignal(logging.Filter):
    """The agent's "Received 15 death signal, shutting down workers": the launcher says the
    stop in its own one line (``stopped by SIGTERM``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "death signal" not in str(record.msg)


def main(argv: list[str] | None = None) -> int:
    hold = HoldExits()
    exits = logging.getLogger(EXIT_LOGGER)
    exits.addFilter(hold)
    logging.getLogger(AGENT_LOGGER).addFilter(DropDeathSignal())
    # This program is the agent: what it sets here, torchrun hands to every rank it starts.
    os.environ[AGENT_ENV] = str(os.getpid())
    try:
        torchrun.main(sys.argv[1:] if argv is None else argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        status, lines = failure_status(e)
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        return status
    exits.removeFilter(hold)
    for record in hold.held:
        exits.handle(record)
    return 0


if __name__ == "__main__":
    status = main()
    if "--standalone" in sys.argv:  # its store served only its own ranks, all gone: end as they do
        exit_now(status)
    raise SystemExit(status)  # other nodes may still be closing the rendezvous in this agent's store
