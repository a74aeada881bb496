"""Shared parts of the benchmarks: etcd members and ipamd daemons started and stopped by PID, health, metrics,
statistics. bench/ imports nothing from tests/ (the harness there is for tests; these are for measuring)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import ipamd_cni
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ipamd.embedded import etcd_command, free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def tmpdir(prefix: str, parent: str = "/dev/shm") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=parent if os.path.isdir(parent) else None)


def percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary_ms(samples_s: list[float]) -> str:
    if not samples_s:
        return "no samples"
    return "p50 %.2f ms  p90 %.2f  p99 %.2f  max %.2f  (n=%d)" % (
        1e3 * statistics.median(samples_s), 1e3 * percentile(samples_s, 0.9), 1e3 * percentile(samples_s, 0.99),
        1e3 * max(samples_s), len(samples_s))


class Etcd:
    """``size`` etcd members on loopback with data under ``parent`` (tmpfs by default); stopped by PID. ``flags``:
    more etcd flags (``--max-request-bytes=65536`` for B05)."""

    def __init__(self, size: int = 1, parent: str = "/dev/shm", tuned: bool = False,
                 flags: tuple[str, ...] = ()) -> None:
        self.dir = tmpdir("ipamd-bench-etcd-", parent)
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, (_, p) in enumerate(ports))
        extra = ["--log-level", "error", "--quota-backend-bytes", str(8 << 30), *flags]
        if tuned:
            extra += ["--heartbeat-interval", "10", "--election-timeout", "100"]
        self.members = []
        for i, (client, peer) in enumerate(ports):
            cmd = etcd_command("m%d" % i, os.path.join(self.dir, "m%d" % i), client, peer, cluster, True, extra)
            log = open(os.path.join(self.dir, "m%d.log" % i), "ab")
            self.members.append((client, subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)))
            log.close()
        for client, _ in self.members:
            wait_for_port(client, 30)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until a write goes through (the cluster has a leader)."""
        from ipamd.store.etcd import EtcdStore

        deadline = time.monotonic() + timeout
        while True:
            try:
                store = EtcdStore(self.endpoints, "/bench-probe/")
                try:
                    store.txn([], [], [], 2.0)
                    return
                finally:
                    store.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def endpoints(self) -> str:
        return ",".join("http://127.0.0.1:%d" % c for c, _ in self.members)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of a Prometheus metric over every member (etcd's own /metrics), optionally filtered by labels."""
        total = 0.0
        for client, _ in self.members:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % client, timeout=10) as resp:
                text = resp.read().decode()
            total += metric_sum(text, name, labels)
        return total

    def stop(self) -> None:
        for _, proc in self.members:
            stop_process(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in a Prometheus text page whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith((name + " ", name + "{"))):
            continue
        if labels and not all('%s="%s"' % kv in line for kv in labels.items()):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


class Daemon:
    """One ``python -m ipamd`` (from ``src``, default this checkout) with sockets in ``workdir``; stopped by PID."""

    def __init__(self, endpoints: str, prefix: str, node: str, workdir: str, *, src: Path = ROOT,
                 log_level: str = "INFO", extra: list[str] | None = None) -> None:
        self.node = node
        self.cni_socket = os.path.join(workdir, "cni-%s.sock" % node)
        self.grpc_socket = os.path.join(workdir, "grpc-%s.sock" % node)
        self.metrics_port = free_port()
        self.log_path = os.path.join(workdir, "ipamd-%s.log" % node)
        env = dict(os.environ, PYTHONPATH=str(src))
        cmd = [sys.executable, "-m", "ipamd", "--node-name", node, "--etcd-endpoints", endpoints,
               "--etcd-prefix", prefix, "--cni-socket", self.cni_socket, "--grpc-socket", self.grpc_socket,
               "--metrics-address", "127.0.0.1:%d" % self.metrics_port, "--log-level", log_level, *(extra or [])]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=str(src))
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ipamd %s exited %s; log %s" % (self.node, self.proc.returncode, self.log_path))
            try:
                with grpc.insecure_channel("unix:" + self.grpc_socket) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError("ipamd %s not ready; log %s" % (self.node, self.log_path))

    def metrics(self) -> str:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=30) as resp:
            return str(resp.read().decode())

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the daemon process so far (/proc/PID/stat)."""
        fields = Path("/proc/%d/stat" % self.proc.pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        stop_process(self.proc, grace=15)


def cni_frame(command: str, container_id: str, conf: bytes, if_name: str = "eth0") -> bytes:
    """One framed CNI request (docs/cni-socket.md, ``ipamd_cni``'s encoder) as the plugin would send it (GC: no
    container variables)."""
    pairs = [("CNI_COMMAND", command), ("CNI_PATH", "/opt/cni/bin")]
    if command != "GC":
        pairs += [("CNI_CONTAINERID", container_id), ("CNI_IFNAME", if_name), ("CNI_NETNS", "/var/run/netns/bench")]
    env = b"".join(b"%s=%s\0" % (k.encode(), v.encode()) for k, v in pairs)
    return ipamd_cni.encode_request(env, conf, b"")


def cni_call(path: str, frame: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    """Send one framed request; returns (exit status, stdout)."""
    status, out, _ = ipamd_cni.exchange(path.encode(), frame, timeout)
    return status, out


def network_config(name: str, subnet: str, block_size: int = 26) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge",
                       "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]], "blockSize": block_size,
                                "routes": [{"dst": "0.0.0.0/0"}]}}).encode()


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "load": "%.2f %.2f %.2f" % os.getloadavg(), "python": sys.version.split()[0],
            "kernel": os.uname().release}
