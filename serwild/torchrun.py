"""The torchrun command line, for every command that runs several processes (train, evaluate).

``python -m torch.distributed.run --standalone --nproc-per-node N [--max-restarts R] -m MODULE …``:
gloo on CPUs, NCCL on GPUs (chosen inside the ranks). Kept here, once, so the two launchers
cannot drift apart.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import torch


def default_nproc() -> int:
    """One process per visible GPU, or one on a CPU-only machine."""
    return max(1, torch.cuda.device_count())


def command(module: str, args: list[str], nproc: int, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", module, *args]


FORWARDED = (signal.SIGTERM, signal.SIGINT)
USAGE_EXIT = 2  # a rank's one-line user error (see serwild.trainer.__main__)
SAID_EXIT = 3  # a rank's one-line error of its surroundings or its data (a full disk, a non-finite loss)
AGENT_ENV = "SERWILD_TORCHRUN_PID"  # torchrun's agent, as the ranks must see it (see follow_agent)
PR_SET_PDEATHSIG = 1
# torchrun, run as ``python -m torch.distributed.run`` would, with changes to what it prints
# and leaves behind:
# - the SignalException it stops with on SIGTERM/SIGINT (after stopping the ranks) ends it
#   with status 128 + signal instead of a 25-line traceback;
# - when a failed rank exited with status 2 (a user's mistake) or 3 (a full disk, a
#   non-finite loss), which the rank has already said in one line, it exits with that status;
# - any other failed rank has said why itself (its traceback, once) unless a signal killed
#   it: that gets one line; torchrun's own traceback and failure report (which repeat the
#   rank's traceback, or say no more than that line) are never printed, and the status is 1;
# - its PID is in the ranks' environment (AGENT_ENV), so a rank can tell that its agent
#   died before it could ask to die with it.
QUIET_TORCHRUN = f"SAID = {{{USAGE_EXIT}, {SAID_EXIT}}}\nAGENT_ENV = {AGENT_ENV!r}\n" + """
import logging, os, runpy, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

class HoldExits(logging.Filter):  # torchrun's per-rank exit lines, held until we know why it stopped
    def __init__(self):
        super().__init__()
        self.held = []
    def filter(self, record):
        text = str(record.msg)
        if "failed (exitcode" in text or "closing signal" in text:
            self.held.append(record)
            return False
        return True

hold, api = HoldExits(), logging.getLogger("torch.distributed.elastic.multiprocessing.api")
api.addFilter(hold)
os.environ[AGENT_ENV] = str(os.getpid())

try:
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
except SignalException as e:
    sys.exit(128 + int(e.sigval))
except ChildFailedError as e:
    # Ranks the agent stopped itself (SIGTERM, after the first failure) are among the failures
    # too: name those killed by another signal (the OOM killer's SIGKILL), or, when SIGTERMs are
    # all there is, the first. A rank that said its error (or that it stopped for another's) has
    # said everything: whichever rank's exit the agent saw first, nothing is added.
    failed = sorted(e.failures.items())
    said = sorted({f.exitcode for f in e.failures.values()} & SAID)
    killed = [(r, f) for r, f in failed if f.exitcode < 0 and f.signal_name() != "SIGTERM"]
    if not said and not killed and all(f.exitcode < 0 for _, f in failed):
        killed = [e.get_first_failure()]
    for rank, f in killed:
        print(f"torchrun: error: rank {rank} (PID {f.pid}) was killed by {f.signal_name()}", file=sys.stderr)
    sys.exit(said[0] if said and not killed else 1)
api.removeFilter(hold)
for r in hold.held:
    api.handle(r)
"""


def launch(cmd: list[str], nproc: int) -> int:
    """Run ``cmd`` (torchrun); its exit status, or ``128 + signal`` when we were stopped by one.

    SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) sent to us are passed on to
    torchrun, whose agent passes them on to every rank and exits: the ranks stop where they
    are (last.pt is written atomically, so the last complete epoch stays) and the caller sees
    143 (SIGTERM) or 130 (SIGINT). torchrun runs in its own process group, so a Ctrl-C at the
    terminal reaches it once (through us) rather than twice, and it gets SIGTERM if we die
    without passing anything on (kill -9).
    """
    env = dict(os.environ)
    # torchrun would pin every CPU process to one thread; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    main_thread = threading.current_thread() is threading.main_thread()
    scratch = None
    if cmd[1:3] == ["-m", "torch.distributed.run"]:  # the same torchrun, quiet (QUIET_TORCHRUN)
        scratch = None if _logs_to_devnull() else tempfile.mkdtemp(prefix="serwild-torchrun-")
        cmd = [cmd[0], "-c", QUIET_TORCHRUN, f"--log-dir={scratch or os.devnull}", *cmd[3:]]
    try:
        return _run(cmd, env, main_thread)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _logs_to_devnull() -> bool:
    """Whether this torchrun takes ``--log-dir=/dev/null`` as "no log folder" (torch >= 2.3).

    Without --log-dir its agent makes a ``torchelastic_*`` folder in the system's temp folder
    on every launch and leaves it there; an older torchrun gets a temp folder we remove."""
    from torch.distributed.elastic.multiprocessing import api
    return hasattr(api, "DefaultLogsSpecs")


def _run(cmd: list[str], env: dict[str, str], main_thread: bool) -> int:
    proc = subprocess.Popen(cmd, env=env, process_group=0 if main_thread else None,
                            preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None)
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED} if main_thread else {}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # only on an exception in this process: don't leave torchrun behind
            proc.terminate()
            proc.wait()
    if received:
        return 128 + received[0]
    return 128 - code if code < 0 else code  # torchrun itself killed by a signal: the shell's convention


def _die_with(parent: int):
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (Linux prctl).
    libc is opened here, in the parent: the child runs as little as it can between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return set_parent_death_signal


def follow_agent() -> None:
    """In a rank started by torchrun: end (SIGTERM) when torchrun's agent ends, even by SIGKILL.

    The agent stops its ranks when it is stopped; killed outright, it cannot, and its ranks
    would go on training and writing checkpoints that nobody waits for (and that a restarted
    run then competes with). The kernel's parent-death signal (Linux prctl) covers that; the
    agent's PID (AGENT_ENV, set by QUIET_TORCHRUN) tells whether it died before prctl took
    effect. Ranks of a plain ``torchrun`` take their parent at this moment as the agent."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    agent = int(os.environ.get(AGENT_ENV) or os.getppid())
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != agent:
        os.kill(os.getpid(), signal.SIGTERM)
