"""A Ray cluster of several nodes on this machine for the cluster tests (ray.cluster_utils.Cluster), every node on
127.0.0.1 with no dashboard, and a node killed the way a machine dies: every process of it at once."""

from __future__ import annotations

import os
import signal
import time

from actstream.cluster.raynodes import FAST_FAILURE, LOOPBACK, import_ray


def _children(pid: int) -> list[int]:
    """Every descendant of a process (a raylet's workers), from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(stat[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LoopbackCluster:
    """A head node (no CPUs: the driver and Ray's control plane; nothing is placed there) that this process is
    connected to, and worker nodes added by each test."""

    def __init__(self):
        self.ray = import_ray(local=True)  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is first imported
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, node_ip_address=LOOPBACK, include_dashboard=False, _system_config=FAST_FAILURE))
        self.ray.init(address=self.cluster.address, log_to_driver=False)

    def add_nodes(self, n: int, cpus: int = 1) -> list:
        return [self.cluster.add_node(num_cpus=cpus, node_ip_address=LOOPBACK) for _ in range(n)]

    def node(self, node_id: str):
        return next(n for n in self.cluster.worker_nodes if n.node_id == node_id)

    def kill(self, node) -> float:
        """SIGKILL every process of the node (its raylet, object store, workers) at once; the time it died."""
        from ray._private import ray_constants

        raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []
        for pid in _children(raylets[0].process.pid) if raylets else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        died = time.monotonic()
        self.cluster.remove_node(node, allow_graceful=False)
        return died

    def remove_all(self) -> None:
        for node in list(self.cluster.worker_nodes):
            self.kill(node)

    def pids(self) -> list[int]:
        """Every process of the cluster: each node's (GCS, raylets, ...) and the raylets' workers."""
        pids = []
        for node in [self.cluster.head_node, *self.cluster.worker_nodes]:
            for infos in node.all_processes.values():
                for info in infos:
                    pids.append(info.process.pid)
                    pids += _children(info.process.pid)
        return pids

    def close(self) -> None:
        self.ray.shutdown()
        self.cluster.shutdown()
