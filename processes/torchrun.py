"""The torchrun command line, for every command that runs several processes (train, evaluate).

``python -m torch.distributed.run --standalone --nproc-per-node N [--max-restarts R] -m MODULE …``:
gloo on CPUs, NCCL on GPUs (chosen inside the ranks). Kept here, once, so the two launchers
cannot drift apart. :func:`launch` runs it as :mod:`serwild.processes.torchrun_agent` (the same torchrun,
quiet), under this process's folder locks (:func:`serwild.processes.lock.child_env`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import NoReturn

from serwild.errors import Terminated
from serwild.processes import lock
from serwild.processes.atomic import pid_alive


def default_nproc() -> int:
    """One process per visible GPU, or one on a CPU-only machine."""
    import torch  # here, when asked: importing this module (as every rank does to end) costs nothing

    return max(1, torch.cuda.device_count())


def command(module: str, args: list[str], nproc: int, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", module, *args]


FORWARDED = (signal.SIGTERM, signal.SIGINT)
USAGE_EXIT = 2  # a rank's one-line user error (see serwild.trainer.__main__)
SAID_EXIT = 3  # a rank's one-line error of its surroundings or its data (a full disk, a non-finite loss)
AGENT_ENV = "SERWILD_TORCHRUN_PID"  # torchrun's agent, as the ranks must see it (see follow_agent)
PR_SET_PDEATHSIG = 1
AGENT_MODULE = "serwild.processes.torchrun_agent"  # torchrun, quiet: what launch() runs in its place


def launch(cmd: list[str], nproc: int) -> int:
    """Run ``cmd`` (torchrun); its exit status.

    SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) sent to us are passed on to
    torchrun, whose agent passes them on to every rank and exits: the ranks stop where they
    are (last.pt is written atomically, so the last complete epoch stays), and once torchrun
    has ended :class:`~serwild.errors.Terminated` (or KeyboardInterrupt) is raised here, which
    the command line turns into its one line and status 143 (or 130). torchrun runs in its own
    process group, so a Ctrl-C at the terminal reaches it once (through us) rather than twice,
    and it gets SIGTERM if we die without passing anything on (kill -9).
    """
    env = {**os.environ, **lock.child_env()}  # the ranks work under our run-folder lock
    # torchrun would pin every CPU process to one thread; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    main_thread = threading.current_thread() is threading.main_thread()
    scratch = scratch_folder()  # removed when torchrun ends
    # torch._dynamo, which every optimiser imports, makes its compile cache folder
    # (torchinductor_<user>) in the system's temp folder as it is imported, and leaves it there;
    # nothing here compiles, so it goes into the scratch folder.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(scratch, "inductor"))
    # The ranks' temp files too: a rank or loader worker stopped by a signal leaves multiprocessing's
    # pymp-* folder behind, inside the scratch folder rather than the system's.
    env["TMPDIR"] = scratch
    if cmd[1:3] == ["-m", "torch.distributed.run"]:  # the same torchrun, quiet (AGENT_MODULE)
        logs = os.devnull if _logs_to_devnull() else scratch
        cmd = [cmd[0], "-m", AGENT_MODULE, f"--log-dir={logs}", *cmd[3:]]
    try:
        return _run(cmd, env, main_thread)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH = "serwild-torchrun-"  # a launch's temp folder: SCRATCH + the launcher's PID + "-" + random


def scratch_folder() -> str:
    """A new temp folder for one launch, named by this process's PID.

    A launcher killed outright (SIGKILL, the OOM killer) cannot remove its folder: any folder of
    ours whose PID no process has any more is removed here first, so they do not pile up."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(SCRATCH):].split("-", 1)[0] if name.startswith(SCRATCH) else ""
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):  # another launch may be removing the same folder
            if pid.isdigit() and not pid_alive(int(pid)) and os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-")


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
    if received:  # we were stopped, and torchrun with us: the command says so in its one line
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()
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


def is_rank() -> bool:
    """Whether this process is a rank that torchrun started (its agent sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def follow_agent() -> None:
    """In a rank started by torchrun: end (SIGTERM) when torchrun's agent ends, even by SIGKILL.

    The agent stops its ranks when it is stopped; killed outright, it cannot, and its ranks
    would go on training and writing checkpoints that nobody waits for (and that a restarted
    run then competes with). The kernel's parent-death signal (Linux prctl) covers that; the
    agent's PID (AGENT_ENV, set by serwild.processes.torchrun_agent) tells whether it died before prctl took
    effect. Ranks of a plain ``torchrun`` take their parent at this moment as the agent."""
    if not sys.platform.startswith("linux") or not is_rank():
        return
    agent = int(os.environ.get(AGENT_ENV) or os.getppid())
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != agent:
        os.kill(os.getpid(), signal.SIGTERM)


def exit_now(code: int) -> NoReturn:
    """End this torchrun process (a rank, or a standalone agent whose ranks are gone) with status
    ``code`` now, without the interpreter's teardown.

    Its work is done and on disk (every file is written atomically and closed, the process
    group destroyed). What teardown would add is the C++ destructors of gloo's and the store's
    threads, which under load sometimes abort a rank whose run succeeded ("terminate called
    without an active exception", SIGABRT, and torchrun reports a failure), and about a second."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
