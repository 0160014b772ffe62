"""A Ray cluster of separate nodes on this machine, for the cluster tests and the benchmark:

    python -m tests.cluster.raycluster PORT WORKERS

Ray's own :class:`ray.cluster_utils.Cluster` in this process: a head node whose GCS listens on
127.0.0.1:PORT and WORKERS worker nodes, each node its own raylet (and agents) with one CPU,
every node's IP 127.0.0.1. The same nodes as `ray start --head --node-ip-address=… --port=PORT
--num-cpus=1` and `ray start --address=… --node-ip-address=… --num-cpus=1` on separate hosts
(docs/building.md, "Running on many cores and many machines"); `ray start` itself cannot make them on one
machine: it rewrites 127.0.0.1 to the machine's network address.

The environment decides the rest: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH (token
authentication, the cluster's token), RAY_TMPDIR (Ray's session folder: not the shared /tmp/ray),
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (whatever Ray resolves in these processes stays 127.0.0.1).

Prints one JSON line, ``{"address": "127.0.0.1:PORT", "nodes": [{"id", "raylet", "head"}, …]}``
(raylet: the node's raylet PID), then waits until its stdin closes. Whoever started it ends it,
and every process of its session, by PID.
"""

from __future__ import annotations

import json
import sys

from ray._private import ray_constants
from ray.cluster_utils import Cluster

NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1,
        "dashboard_agent_listen_port": None}  # None: a free port (Ray's default, 52365, may be taken)


def start(port: int, workers: int) -> Cluster:
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False,
                      head_node_args={**NODE, "gcs_server_port": port, "include_dashboard": False})
    for _ in range(workers):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    return cluster


def describe(cluster: Cluster) -> dict:
    return {"address": cluster.address,
            "nodes": [{"id": node.node_id, "head": node is cluster.head_node,
                       "raylet": node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid}
                      for node in cluster.list_all_nodes()]}


if __name__ == "__main__":
    print(json.dumps(describe(start(int(sys.argv[1]), int(sys.argv[2])))), flush=True)
    sys.stdin.read()
