"""Separate hosts on this machine, for the cluster tests: each a network namespace of its own with
its own address on one network (``ip netns``, veth pairs to a bridge in the first host's
namespace; root only), and its own ``/etc/hosts`` (``ip netns exec`` reads ``/etc/netns/<ns>/``):
the hosts' names ``node0``, ``node1``, … and this machine's host name resolve as on real
machines, to each host's own address on that host. So a command runs on a host exactly as a user
runs it on a machine (``host.cmd(...)``), and nothing of the machine's own network is used.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # where `ip netns exec` finds a namespace's own /etc files


@dataclass(frozen=True)
class Host:
    ns: str  # the network namespace: this host's network
    ip: str
    name: str  # node0, node1, …: its name on every host

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run on this host."""
        return ["ip", "netns", "exec", self.ns, *argv]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def make_hosts(n: int) -> list[Host]:
    """``n`` hosts on one network (10.231.N.1, .2, …): namespaces ``sw<pid>h<k>``, the first
    holding the bridge. Remove them with :func:`remove_hosts`, whatever happens."""
    net = f"10.231.{random.SystemRandom().randrange(1, 255)}"
    hosts = [Host(f"sw{os.getpid()}h{k}", f"{net}.{k + 1}", f"node{k}") for k in range(n)]
    try:
        _connect(hosts)
    except BaseException:
        remove_hosts(hosts)
        raise
    return hosts


def _connect(hosts: list[Host]) -> None:
    names = "".join(f"{h.ip} {h.name}\n" for h in hosts)
    for h in hosts:
        _ip("netns", "add", h.ns)
        _ip("-n", h.ns, "link", "set", "lo", "up")
        (NETNS_ETC / h.ns).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / h.ns / "hosts").write_text(f"127.0.0.1 localhost\n{names}{h.ip} {socket.gethostname()}\n")
    first = hosts[0]
    _ip("-n", first.ns, "link", "add", "br0", "type", "bridge")
    _ip("-n", first.ns, "addr", "add", f"{first.ip}/24", "dev", "br0")
    _ip("-n", first.ns, "link", "set", "br0", "up")
    for k, h in enumerate(hosts[1:], 1):
        _ip("-n", first.ns, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", h.ns)
        _ip("-n", first.ns, "link", "set", f"v{k}", "master", "br0", "up")
        _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
        _ip("-n", h.ns, "link", "set", "eth0", "up")


def remove_hosts(hosts: list[Host]) -> None:
    """The namespaces and their /etc files (what :func:`make_hosts` made; the veths go with them)."""
    for h in hosts:
        subprocess.run(["ip", "netns", "del", h.ns], check=False, capture_output=True, timeout=30)
        shutil.rmtree(NETNS_ETC / h.ns, ignore_errors=True)
    if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
        NETNS_ETC.rmdir()  # made for these hosts alone
