"""Multi-node torchrun on one machine: two nodes, each a host of its own (:mod:`tests.cluster.hosts`:
a network namespace with its own address, and the names node0 and node1), one torchrun launcher
and one rank each, meet over c10d rendezvous at node0:29500 and train as one world.

Each node runs the documented multi-node command (read from docs/training.md) as it stands, with
``--local-addr`` its own name as the page says; node0 hosts the rendezvous store, and gloo finds
each host's address by its host name, as on real machines. The paper recipe trains the tiny
AlexNet from a weights file, from the feature cache in one folder both nodes use.

- Two nodes of one rank end with weights bit-identical to one node of two ranks (same seed), and
  every cache file is computed once, by one rank; the other run reuses them all, untouched.
- Elastic (``--nnodes=1:2``): one node's launcher is SIGKILLed mid-epoch; its rank ends with it,
  the other node finishes the run from the mid-epoch last.pt at world size 1 (one line says the
  world shrank from 2 to 1) without recomputing the lost node's cache files, and its weights
  equal a plain one-process resume of that same last.pt (a shrunken world is deterministic).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from serwild.data.manifest import Manifest
from serwild.processes.checkpoint import load_checkpoint
from serwild.trainer.features import cache_records
from tests.cluster.hosts import Host, make_hosts, remove_hosts
from tests.faults import procs
from tests.trainer.conftest import weights_file  # noqa: F401 (fixture: the tiny model's weights)
from tests.trainer.test_ddp import children

pytestmark = pytest.mark.slow

TRAINING_DOC = procs.REPO / "docs" / "training.md"  # the page that holds the command
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))  # the venv's torchrun, as the page's `torchrun`
TIMEOUT_S = 300  # a hang fails the test instead of stalling the suite
CACHE_LINE = re.compile(r"feature cache (\S+): (\d+) shard\(s\) computed, (\d+) reused")
SHRANK = "the world shrank from 2 to 1 rank(s)"


def readme_command(nnodes: str, host: Host) -> list[str]:
    """The documented multi-node ``torchrun --nnodes=<nnodes>`` command, run on ``host`` (its
    ``--local-addr`` the host's name, as the page says for node1)."""
    text = TRAINING_DOC.read_text().replace("\\\n", " ")
    found = [x.strip() for x in text.splitlines() if x.strip().startswith(f"torchrun --nnodes={nnodes} ")]
    assert len(found) == 1, f"docs/training.md has {len(found)} torchrun --nnodes={nnodes} commands"
    argv = shlex.split(found[0].replace("--local-addr=node0", f"--local-addr={host.name}"))
    return host.cmd(TORCHRUN, *argv[1:])


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    made = make_hosts(2)
    try:
        yield made
    finally:
        remove_hosts(made)


def write_config(where: Path, build: Path, weights: Path, **train: object) -> Path:
    """``cfg.yaml`` (the documented command's ``--config cfg.yaml``) for a tiny run in ``where``."""
    cfg = {"out": str(build), "cv": {"fold": None},
           "train": {"run_dir": str(where / "runs"), "name": "multi", "arch": "tiny", "pretrained": str(weights),
                     "feature_cache_dir": str(where / "cache"), "batch_size": 4, "samples_per_epoch": 16,
                     "epochs": 2, "num_workers": 0, "shuffle_buffer": 20, "timeout_s": 60, **train}}
    (where / "tmp").mkdir(exist_ok=True)
    (where / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return where / "cfg.yaml"


class Node:
    """One node's launcher (torchrun) in a session of its own, stderr read on a thread."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        # TMPDIR: torchrun without --log-dir leaves a torchelastic_* folder there on every launch.
        env = procs.env(TMPDIR=str(cwd / "tmp"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=env, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait(self) -> int:
        code = self.proc.wait(TIMEOUT_S)
        self.reader.join(30)
        return code


@contextlib.contextmanager
def nodes(*cmds: tuple[list[str], Path]):
    """Start every node at once; on the way out none of their processes is left: the launchers,
    their sessions and their ranks (sessions of their own) are SIGKILLed by PID."""
    started = [Node(cmd, cwd) for cmd, cwd in cmds]
    try:
        yield started
    finally:
        for n in started:
            for pid in children(n.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(30)
            procs.end_session(n.proc.pid)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt").model


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ: {differ}"


def cache_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Each cache file → (inode, mtime ns): a file written again gets a new inode (atomic writes)."""
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(cache.rglob("*")) if p.is_file() and p.suffix != ".json"}


def cache_counts(err: str) -> list[tuple[int, int]]:
    """(computed, reused) from each of rank 0's feature-cache lines in ``err``."""
    return [(int(m.group(2)), int(m.group(3))) for m in CACHE_LINE.finditer(err)]


def test_two_nodes_train_bit_identically_to_one_node_of_two_ranks(tiny_build: Path, tiny_manifest: Manifest,
                                                                  weights_file: Path,  # noqa: F811
                                                                  hosts: list[Host], tmp_path: Path) -> None:
    write_config(tmp_path, tiny_build, weights_file)
    shards = len(cache_records(tiny_manifest, "ahsn"))
    with nodes(*((readme_command("2", h), tmp_path) for h in hosts)) as (a, b):
        codes = [a.wait(), b.wait()]
    assert codes == [0, 0], a.err[-3000:] + b.err[-3000:]
    multi = tmp_path / "runs" / "multi"
    ck = load_checkpoint(multi / "last.pt")
    assert ck.world_size == 2 and ck.epoch == 2
    # The cache was built by both ranks, each its share, every file once (rank 0 sums their counts).
    assert cache_counts(a.err + b.err) == [(shards, 0)], a.err[-3000:] + b.err[-3000:]
    built = cache_files(tmp_path / "cache")
    assert len(built) == shards

    one_node = [TORCHRUN, "--standalone", "--nproc-per-node=2", "--local-addr=127.0.0.1", "-m", "serwild.trainer",
                "--config", "cfg.yaml", "train.name=one-node"]
    with nodes((one_node, tmp_path)) as (one,):
        assert one.wait() == 0, one.err[-3000:]
    assert cache_counts(one.err) == [(0, shards)], one.err[-3000:]
    assert cache_files(tmp_path / "cache") == built  # reused as they were: no file written again
    assert load_checkpoint(tmp_path / "runs" / "one-node" / "last.pt").world_size == 2
    assert_same_weights(weights(multi), weights(tmp_path / "runs" / "one-node"))


def test_a_node_lost_mid_epoch_the_other_finishes_from_last_pt(tiny_build: Path, tiny_manifest: Manifest,
                                                               weights_file: Path,  # noqa: F811
                                                               hosts: list[Host], tmp_path: Path) -> None:
    """Many short steps, so that the epoch is still under way when the kill lands."""
    write_config(tmp_path, tiny_build, weights_file, epochs=1, samples_per_epoch=1000, checkpoint_every=50)
    shards = len(cache_records(tiny_manifest, "ahsn"))
    run = tmp_path / "runs" / "multi"
    with nodes(*((readme_command("1:2", h), tmp_path) for h in hosts)) as pair:
        procs.wait_for(lambda: any("checkpoint: epoch 1 batch " in n.err for n in pair), pair[0].proc, TIMEOUT_S,
                       "a mid-epoch checkpoint")
        # node0 hosts the rendezvous store (its loss ends the job): node1 is lost, its launcher killed.
        survivor, lost = pair
        (lost_rank,) = children(lost.proc.pid)
        (old_rank,) = children(survivor.proc.pid)
        os.kill(lost.proc.pid, signal.SIGKILL)
        assert procs._wait_empty(lambda: [lost_rank] if alive(lost_rank) else [], 10) == [], "a rank outlived its node"
        # The survivor's rank fails at its next collective and its agent restarts it after the
        # rendezvous (seconds): last.pt between the two is what the restarted rank resumes.
        procs._wait_empty(lambda: [old_rank] if old_rank in children(survivor.proc.pid) else [], 60)
        os.link(run / "last.pt", tmp_path / "resumed-from.pt")
        assert survivor.wait() == 0, survivor.err[-3000:]
        lost.wait()
    saved = load_checkpoint(tmp_path / "resumed-from.pt")
    assert saved.world_size == 2 and saved.epoch == 0 and saved.step > 0  # mid-epoch, 2 ranks
    said = [x for x in procs.lines(survivor.err) if "world shrank" in x]
    assert len(said) == 1 and SHRANK in said[0], survivor.err[-3000:]
    assert f"at epoch 1 batch {saved.step} " in survivor.err, survivor.err[-3000:]
    assert load_checkpoint(run / "last.pt").world_size == 1 and load_checkpoint(run / "last.pt").epoch == 1
    # Every cache file was computed once, in the first round; the survivor rebuilt none.
    assert cache_counts(lost.err + survivor.err)[-1] == (0, shards), survivor.err[-3000:]
    assert sum(c for c, _ in cache_counts(lost.err + survivor.err)) == shards

    # The same last.pt resumed by one plain process ends on the same weights.
    again = tmp_path / "runs" / "again"
    again.mkdir()
    os.link(tmp_path / "resumed-from.pt", again / "last.pt")
    plain = subprocess.run([sys.executable, "-m", "serwild.trainer", "--config", "cfg.yaml", "--resume",
                            "train.name=again"], capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT_S,
                           env=procs.env())
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert SHRANK in plain.stderr
    assert_same_weights(weights(run), weights(again))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
