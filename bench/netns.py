"""What looking inside pods' namespaces costs (docs/namespace-checks.md "Cost"), measured side by side in one run.

[1] ``ipamd.netns.observe`` in this process: no probes; one echo to a gateway that answers; one to a gateway that
    does not (bounded by ``probe_timeout``).
[2] CNI CHECK through a real daemon (framed requests on its socket): store-only (``checkNetns: false``) against
    deep, on the same attachment, alternated.
[3] The continuous health loop over N attachments for a while: checks per second and daemon CPU per check.
[4] ``Verify`` over gRPC for N attachments: all healthy, then all with a gateway that does not answer.
[5] The reconciler's look (issue 8 item 4): ``Reconcile(dry_run)`` passes over gRPC over the N attachments, each
    looked into once (interface and addresses, no routes, no probes): wall time and daemon CPU per attachment.

Everything runs in namespaces the bench creates (one "gateway" namespace holding a bridge with the gateway address,
one namespace per pod) and one etcd on loopback; all of it is removed at the end. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ipamd_cni
from common import Daemon, Etcd, cni_call, machine, metric_sum, summary_ms, tmpdir
from ipamd_client import IpamClient

from ipamd import netns


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Lab:
    """A gateway namespace (bridge ``br0`` with ``<net>.1/24``) and ``pods`` pod namespaces, each with ``eth0`` on the
    bridge; addresses and routes are put in place by :meth:`configure` from what ipamd allocated."""

    def __init__(self, pods: int, octet: int) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.gw_ns = "ipamdbench-g" + self.tag
        self.pods = ["ipamdbench-%s-%d" % (self.tag, i) for i in range(pods)]
        self.net = "10.251.%d" % octet

    def setup(self) -> Lab:
        ip("netns", "add", self.gw_ns)
        ip("-n", self.gw_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.gw_ns, "addr", "add", self.net + ".1/24", "dev", "br0")
        ip("-n", self.gw_ns, "link", "set", "br0", "up")
        for i, pod in enumerate(self.pods):
            ip("netns", "add", pod)
            ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "g%d" % i, "netns", self.gw_ns)
            ip("-n", self.gw_ns, "link", "set", "g%d" % i, "master", "br0", "up")
            ip("-n", pod, "link", "set", "eth0", "up")
        return self

    def configure(self, pod: str, address: str) -> None:
        ip("-n", pod, "addr", "add", address, "dev", "eth0")
        ip("-n", pod, "route", "add", "default", "via", self.net + ".1")

    def poison(self, pod: str) -> None:
        """The gateway's neighbour entry points at a MAC nobody has: echo requests get no answer."""
        ip("-n", pod, "neigh", "replace", self.net + ".1", "lladdr", "02:00:5e:00:53:01", "dev", "eth0", "nud",
           "permanent")

    def teardown(self) -> None:
        for ns in [*self.pods, self.gw_ns]:
            if os.path.exists("/var/run/netns/" + ns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def frame(command: str, cid: str, netns_path: str, conf: bytes) -> bytes:
    pairs = [("CNI_COMMAND", command), ("CNI_PATH", "/opt/cni/bin"), ("CNI_CONTAINERID", cid), ("CNI_IFNAME", "eth0"),
             ("CNI_NETNS", netns_path)]
    env = b"".join(b"%s=%s\0" % (k.encode(), v.encode()) for k, v in pairs)
    return ipamd_cni.encode_request(env, conf, b"")  # the plugin's own encoder (docs/cni-socket.md)


def conf_bytes(net: str, **ipam: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge",
                       "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": net + ".0/24"}]],
                                "routes": [{"dst": "0.0.0.0/0"}], **ipam}}).encode()


def timed(fn: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=16)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--health-seconds", type=float, default=10.0)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/netns.py needs root (it creates network namespaces)")
        return 1
    print("bench/netns.py %s; %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), machine()))
    work = tmpdir("ipamd-bench-netns-")
    lab = Lab(args.pods, 1 + int(uuid.uuid4().hex[:2], 16) % 250)
    etcd = daemon = None
    try:
        lab.setup()
        etcd = Etcd(1, tuned=True)
        daemon = Daemon(etcd.endpoints, "/bench-netns/", "A", work,
                        extra=["--health-interval", "0.2", "--health-max-per-round", str(args.pods)])
        daemon.wait_ready()
        conf = conf_bytes(lab.net)
        for i, pod in enumerate(lab.pods):
            status, out = cni_call(daemon.cni_socket, frame("ADD", "c%d" % i, "/var/run/netns/" + pod, conf))
            assert status == 0, out
            lab.configure(pod, json.loads(out)["ips"][0]["address"])
        pod0 = "/var/run/netns/" + lab.pods[0]
        gw = int.from_bytes(bytes(int(x) for x in (lab.net + ".1").split(".")), "big")
        silent = gw + 200

        print("\n[1] ipamd.netns.observe in this process, %d rounds each" % args.rounds)
        for label, kw in (("no probes", {}),
                          ("reconciler's look (no routes, all addresses)", {"routes": False, "all_addresses": True}),
                          ("1 echo, gateway answers", {"gateways": [(4, gw)]}),
                          ("1 echo, no answer (probe_timeout 0.05 s)", {"gateways": [(4, silent)],
                                                                         "probe_timeout": 0.05})):
            n = args.rounds if "no answer" not in label else max(20, args.rounds // 10)
            samples = timed(lambda kw=kw: netns.observe(pod0, "eth0", **kw), n)
            print("  %-46s %s" % (label, summary_ms(samples)))

        print("\n[2] CNI CHECK through the daemon, same attachment, alternated (%d each)" % args.rounds)
        prev = json.loads(conf)
        prev["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": lab.net + ".2/24"}]}
        deep = json.dumps(prev).encode()
        prev["ipam"]["checkNetns"] = False
        shallow = json.dumps(prev).encode()
        times: dict[str, list[float]] = {"store-only": [], "deep": []}
        for _ in range(args.rounds):
            for label, body in (("store-only", shallow), ("deep", deep)):
                t = time.perf_counter()
                status, out = cni_call(daemon.cni_socket, frame("CHECK", "c0", pod0, body))
                times[label].append(time.perf_counter() - t)
                assert status == 0, out
        for label, samples in times.items():
            print("  %-42s %s" % (label, summary_ms(samples)))
        print("  deep / store-only (p50)                    %.2f" % (statistics.median(times["deep"])
                                                                     / statistics.median(times["store-only"])))

        print("\n[3] continuous health over %d attachments, interval 0.2 s, %.0f s" % (args.pods, args.health_seconds))
        before = metric_sum(daemon.metrics(), "ipamd_attachment_checks_total")
        cpu0 = daemon.cpu_seconds()
        time.sleep(args.health_seconds)
        checked = metric_sum(daemon.metrics(), "ipamd_attachment_checks_total") - before
        cpu = daemon.cpu_seconds() - cpu0
        unhealthy = metric_sum(daemon.metrics(), "ipamd_attachments_unhealthy")
        print("  checks %d (%.0f/s), unhealthy %d, daemon CPU %.2f s: %.2f ms per check (all daemon CPU in the "
              "period, CNI idle)" % (checked, checked / args.health_seconds, unhealthy, cpu,
                                     1e3 * cpu / max(checked, 1)))

        print("\n[4] Verify over gRPC, %d attachments (8 at once in the daemon)" % args.pods)
        with IpamClient(daemon.grpc_socket, timeout=300) as client:
            t = time.perf_counter()
            _, reports = client.verify(probe_timeout=1.0)
            healthy_s = time.perf_counter() - t
            assert all(r.ok for r in reports) and len(reports) == args.pods, [r.findings for r in reports]
            for pod in lab.pods:
                lab.poison(pod)
            t = time.perf_counter()
            _, reports = client.verify(probe_timeout=1.0)
            silent_s = time.perf_counter() - t
            assert not any(r.ok for r in reports)
        print("  all healthy: %.3f s; every gateway silent (probe_timeout 1 s): %.3f s" % (healthy_s, silent_s))

        passes = max(10, args.rounds // 10)
        print("\n[5] reconciler passes (Reconcile dry_run over gRPC), %d attachments, %d passes" % (args.pods, passes))
        with IpamClient(daemon.grpc_socket, timeout=300) as client:
            cpu0 = daemon.cpu_seconds()
            samples = timed(lambda: client.reconcile(dry_run=True), passes)
            cpu = daemon.cpu_seconds() - cpu0
            released, waiting = client.reconcile(dry_run=True)
            assert released == [] and waiting == [], (released, waiting)  # every pod is alive
        print("  one pass %s" % summary_ms(samples))
        print("  per attachment: %.2f ms wall (p50 / pods), %.2f ms daemon CPU"
              % (1e3 * statistics.median(samples) / args.pods, 1e3 * cpu / (passes * args.pods)))
    finally:
        if daemon is not None:
            daemon.stop()
        if etcd is not None:
            etcd.stop()
        lab.teardown()
        netns.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\nload average at the end: %s" % machine()["load"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
