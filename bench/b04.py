"""Field case B04 at full size, and large IPv6 pools (not a test; figures in docs/benchmarks.md).

    .venv/bin/python bench/b04.py [--quick] [--only b04,v6] [--no-del]

Sections:

1. ``b04``: 16 daemons on a three-member etcd (loopback, data on tmpfs), one network on ``10.40.0.0/16`` with
   blockSize 26, 2,048 attachments: 512 containers with 4 interfaces each (eth0, net1-net3, all in the same
   network: one range, the hot spot of whereabouts #313), 32 containers per daemon, up to 32 in flight per daemon.
   Each client thread is a pod worker, as a runtime's: it ADDs the pod's interfaces one after the other. Requests
   are framed CNI requests on each daemon's CNI socket from client processes (no plugin process per call). Then
   the DELs (unless ``--no-del``). Reported: cluster-wide ADDs (and DELs) per second, ADD latency percentiles,
   etcd Txn RPCs per ADD (etcd's own ``grpc_server_handled_total`` over every member) and the daemons' own
   transactions, round trips, conflicts and retries per ADD; raw etcd compare-and-swap rate at the same concurrency
   on the same cluster, measured before and after with bench/core.py's ``drive("raw", ...)``.
2. ``v6``: one daemon on a single etcd member; an IPv6 /64 pool with /120 blocks, one with /122 blocks, and a /48
   with /122 blocks: ADD p50 (one client, ADD+DEL probes alternating with an empty network of the same shape,
   bench/core.py's ``_probe``) and the daemon's RSS at 0, 5k and 20k addresses held on the node.

Every address handed out is checked distinct (the ADD answers, and the handles in etcd agree with them), and
``ipamctl check`` must be clean at the end of each section; the bench exits 1 otherwise, or when an ADD or DEL
fails. It never fails on a time. Everything started here is stopped by PID; its /dev/shm directories are removed.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Daemon, Etcd, cni_call, cni_frame, machine, metric_sum, network_config, percentile, tmpdir
from core import _probe, drive

from ipamd.domain.model import HandleRecord, IpRecord, ip_key
from ipamd.domain.netconf import parse_netconf
from ipamd.store.base import Put, prefix_end
from ipamd.store.etcd import EtcdStore

SHIM_TIMEOUT = 30.0  # client/ipamd_cni.py DEFAULT_TIMEOUT: a runtime's plugin gives up after this
BUDGET_P99 = 1.0  # field case B04: p99 ADD latency under 1 s
IFNAMES = ("eth0", "net1", "net2", "net3")


class Failed(Exception):
    """A broken promise (duplicate, failed call, check not clean): the bench exits 1."""


def ms(x: float) -> str:
    return "%.1f ms" % (1e3 * x)


def percentiles(lat: list[float]) -> str:
    if not lat:
        return "no samples"
    return "p50 %s  p90 %s  p99 %s  max %s (n=%d)" % (
        ms(statistics.median(lat)), ms(percentile(lat, 0.9)), ms(percentile(lat, 0.99)), ms(max(lat)), len(lat))


def address_problems(answers: list[str], in_etcd: list[str], expected: int) -> list[str]:
    """What is wrong with the addresses handed out: ``answers`` from the ADD replies, ``in_etcd`` from the handle
    records read afterwards; both must hold ``expected`` addresses, all distinct, and be the same set."""
    problems = []
    for what, addrs in (("ADD answers", answers), ("handles in etcd", in_etcd)):
        if len(addrs) != expected:
            problems.append("%s: %d addresses, expected %d" % (what, len(addrs), expected))
        dups = sorted(a for a, n in collections.Counter(addrs).items() if n > 1)
        if dups:
            problems.append("%s: %d addresses handed out twice, e.g. %s" % (what, len(dups), dups[:5]))
    if set(answers) != set(in_etcd):
        problems.append("ADD answers and handles in etcd differ: %d only answered, %d only in etcd"
                        % (len(set(answers) - set(in_etcd)), len(set(in_etcd) - set(answers))))
    return problems


def handle_addresses(endpoints: str, prefix: str, network: str) -> list[str]:
    """Every address the handles of ``network`` hold, read from etcd at one revision."""
    store = EtcdStore(endpoints, prefix)
    try:
        start = "handles/%s/" % network
        kvs, _ = store.read(start, prefix_end(start), 60)
        return [a.cidr for kv in kvs for a in HandleRecord.decode(kv.value).allocations]
    finally:
        store.close()


def ipamctl_check(endpoints: str, prefix: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", endpoints, "--etcd-prefix",
                        prefix], capture_output=True, text=True, timeout=600)
    lines = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return p.returncode, lines[-1] if lines else ""


def write_ghost(endpoints: str, prefix: str, network: str, subnet: str, node: str) -> None:
    """``--inject check``: an address record whose handle does not exist (field case B52), so the check must fail."""
    nc = parse_netconf({"name": network, "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]]}}, network)
    pool = nc.range_sets[0][0]
    store = EtcdStore(endpoints, prefix)
    try:
        value = pool.range.last - 1
        store.txn([], [Put(ip_key(network, 4, value), IpRecord("%s/ghost/eth0" % network, node, pool.id).encode())],
                  [], 10)
    finally:
        store.close()


# -- B04 -----------------------------------------------------------------------------------------------------------

def _pod_worker(sock: str, conf: bytes, pods: list[str], threads: int, do_del: bool, barrier: Any, out: Any) -> None:
    """Pod workers of one node: each thread ADDs the interfaces of its pods one after the other; barrier; then DELs
    them (last interface first). Puts (add latencies, pod latencies, addresses, add span, del latencies, del span,
    failures)."""
    add_lat: list[float] = []
    pod_lat: list[float] = []
    del_lat: list[float] = []
    addrs: list[str] = []
    failures: list[str] = []
    chunks = [pods[i::threads] for i in range(threads)]

    def adds(chunk: list[str]) -> None:
        for pod in chunk:
            p0 = time.perf_counter()
            for ifname in IFNAMES:
                frame = cni_frame("ADD", pod, conf, ifname)
                t0 = time.perf_counter()
                try:
                    status, reply = cni_call(sock, frame, timeout=120)
                except Exception as exc:
                    status, reply = -1, repr(exc).encode()
                add_lat.append(time.perf_counter() - t0)
                if status != 0:
                    failures.append("ADD %s/%s: %s %s" % (pod, ifname, status, reply[:200].decode(errors="replace")))
                    continue
                addrs.extend(ip["address"] for ip in json.loads(reply)["ips"])
            pod_lat.append(time.perf_counter() - p0)

    def dels(chunk: list[str]) -> None:
        for pod in chunk:
            for ifname in reversed(IFNAMES):
                t0 = time.perf_counter()
                try:
                    status, reply = cni_call(sock, cni_frame("DEL", pod, conf, ifname), timeout=120)
                except Exception as exc:
                    status, reply = -1, repr(exc).encode()
                del_lat.append(time.perf_counter() - t0)
                if status != 0:
                    failures.append("DEL %s/%s: %s %s" % (pod, ifname, status, reply[:200].decode(errors="replace")))

    def phase(fn: Any) -> tuple[float, float]:
        barrier.wait()  # the start; before the DELs, the parent has read the counters and checked etcd
        start = time.monotonic()
        ts = [threading.Thread(target=fn, args=(c,)) for c in chunks if c]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return start, time.monotonic()

    add_span = phase(adds)
    out.put(("added", len(add_lat)))
    del_span = phase(dels) if do_del else (0.0, 0.0)
    out.put((add_lat, pod_lat, addrs, add_span, del_lat, del_span, failures))


def _counters(etcd: Etcd, daemons: list[Daemon]) -> dict[str, float]:
    c = {"etcd_txn": etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"}),
         "etcd_range": etcd.metric("grpc_server_handled_total", {"grpc_method": "Range"})}
    for name in ("ipamd_etcd_txn_total", "ipamd_etcd_txn_round_trips_total", "ipamd_cas_conflicts_total",
                 "ipamd_request_retries_total", "ipamd_block_claims_total", "ipamd_addresses_borrowed_total",
                 "ipamd_requests_total"):
        c[name] = 0.0
    for d in daemons:
        text = d.metrics()
        for name in list(c):
            if name.startswith("ipamd_"):
                c[name] += metric_sum(text, name, {"outcome": "error"} if name == "ipamd_requests_total" else None)
    return c


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def _print_counters(verb: str, d: dict[str, float], n: int) -> None:
    print("  per %s (%d): etcd Txn RPCs %.3f, Range RPCs %.3f | daemons: transactions %.3f, Txn round trips %.3f, "
          "CAS conflicts %.3f, retries %.3f, block claims %d, borrowed %d, error answers %d"
          % (verb, n, d["etcd_txn"] / n, d["etcd_range"] / n, d["ipamd_etcd_txn_total"] / n,
             d["ipamd_etcd_txn_round_trips_total"] / n, d["ipamd_cas_conflicts_total"] / n,
             d["ipamd_request_retries_total"] / n, d["ipamd_block_claims_total"], d["ipamd_addresses_borrowed_total"],
             d["ipamd_requests_total"]))


def section_b04(args: argparse.Namespace, work: str) -> list[str]:
    n_pods = args.attachments // len(IFNAMES)
    per_node = n_pods // args.daemons
    total = per_node * args.daemons * len(IFNAMES)
    clients = args.daemons * args.in_flight
    print("\n== [1] B04: %d daemons, three-member etcd, 10.40.0.0/16 blockSize 26, %d attachments (%d pods x %d "
          "interfaces, %d pods per daemon), up to %d in flight per daemon (%d clients)"
          % (args.daemons, total, per_node * args.daemons, len(IFNAMES), per_node, args.in_flight, clients))
    problems: list[str] = []
    prefix = "/bench-b04/"
    etcd = Etcd(3)
    daemons: list[Daemon] = []
    procs: list[Any] = []
    try:
        daemons = [Daemon(etcd.endpoints, prefix, "n%02d" % i, work, log_level=args.log_level)
                   for i in range(args.daemons)]
        for d in daemons:
            d.wait_ready()
        conf = network_config("b04", "10.40.0.0/16", 26)
        raw_keys = total  # the same shape: as many keys as ADDs, over as many clients
        raw_before = drive("raw", (etcd.endpoints, "/bench-b04-raw1/"), ["k/%d" % i for i in range(raw_keys)],
                           clients)
        print("  raw CAS before, %d clients, %d keys: put-if-absent %.0f/s (%s), compare-and-delete %.0f/s"
              % (clients, raw_keys, raw_before["rate1"], percentiles(raw_before["lat1"]), raw_before["rate2"]))
        load0 = os.getloadavg()[0]
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        barrier = ctx.Barrier(len(daemons) + 1)
        procs = [ctx.Process(target=_pod_worker, args=(d.cni_socket, conf, ["%s-p%d" % (d.node, i)
                                                                            for i in range(per_node)],
                                                       args.in_flight, not args.no_del, barrier, out))
                 for d in daemons]
        for p in procs:
            p.start()
        c0 = _counters(etcd, daemons)
        cpu0 = [d.cpu_seconds() for d in daemons]
        barrier.wait()
        results: list[Any] = []  # without DELs a worker's results may come before another's "added"
        added = 0
        while added < len(procs):
            msg = out.get(timeout=1800)
            added += msg[0] == "added"
            results += [] if msg[0] == "added" else [msg]
        c1 = _counters(etcd, daemons)
        cpu1 = [d.cpu_seconds() for d in daemons]
        in_etcd = handle_addresses(etcd.endpoints, prefix, "b04")
        rc, line = ipamctl_check(etcd.endpoints, prefix)
        if not args.no_del:
            barrier.wait()
        results += [out.get(timeout=1800) for _ in range(len(procs) - len(results))]
        for p in procs:
            p.join()
        c2 = _counters(etcd, daemons)
        add_lat = [x for r in results for x in r[0]]
        pod_lat = [x for r in results for x in r[1]]
        answers = [a for r in results for a in r[2]]
        failures = [f for r in results for f in r[6]]
        add_span = max(r[3][1] for r in results) - min(r[3][0] for r in results)
        if "duplicate" in args.inject and answers:
            answers.append(answers[0])
        problems += address_problems(answers, in_etcd, total)
        problems += ["%d failed calls, e.g. %s" % (len(failures), failures[:3])] if failures else []
        outside = [a for a in answers if ipaddress.ip_interface(a).ip not in ipaddress.ip_network("10.40.0.0/16")]
        problems += ["%d addresses outside the pool" % len(outside)] if outside else []
        if rc != 0:
            problems.append("ipamctl check after the ADDs: exit %d: %s" % (rc, line))
        rate = len(add_lat) / add_span
        print("  ADD: %d in %.2f s = %.0f ADD/s cluster-wide; %s" % (len(add_lat), add_span, rate,
                                                                     percentiles(add_lat)))
        print("  pod (%d ADDs in a row): %s; ADDs over the %.0f s shim timeout: %d; p99 %s the %.1f s budget"
              % (len(IFNAMES), percentiles(pod_lat), SHIM_TIMEOUT, sum(x > SHIM_TIMEOUT for x in add_lat),
                 "within" if add_lat and percentile(add_lat, 0.99) < BUDGET_P99 else "OVER", BUDGET_P99))
        _print_counters("ADD", _diff(c1, c0), max(len(add_lat), 1))
        print("  daemon CPU per ADD %.0f us (all daemons); distinct addresses %d (answers) / %d (etcd); ipamctl "
              "check: exit %d: %s" % (1e6 * (sum(cpu1) - sum(cpu0)) / max(len(add_lat), 1), len(set(answers)),
                                      len(set(in_etcd)), rc, line))
        del_rate = 0.0
        if not args.no_del:
            del_lat = [x for r in results for x in r[4]]
            del_span = max(r[5][1] for r in results) - min(r[5][0] for r in results)
            del_rate = len(del_lat) / del_span
            print("  DEL: %d in %.2f s = %.0f DEL/s cluster-wide; %s" % (len(del_lat), del_span, del_rate,
                                                                         percentiles(del_lat)))
            _print_counters("DEL", _diff(c2, c1), max(len(del_lat), 1))
        raw_after = drive("raw", (etcd.endpoints, "/bench-b04-raw2/"), ["k/%d" % i for i in range(raw_keys)],
                          clients)
        print("  raw CAS after: put-if-absent %.0f/s (%s), compare-and-delete %.0f/s"
              % (raw_after["rate1"], percentiles(raw_after["lat1"]), raw_after["rate2"]))
        raw_put = (raw_before["rate1"] + raw_after["rate1"]) / 2
        raw_del = (raw_before["rate2"] + raw_after["rate2"]) / 2
        print("  ratio to raw CAS at %d clients (mean of before and after): ADD %.2fx (%.2f / %.2f)%s; load %.2f "
              "at the start of the ADDs" % (clients, rate / raw_put, rate / raw_before["rate1"],
                                            rate / raw_after["rate1"],
                                            "; DEL %.2fx" % (del_rate / raw_del) if del_rate else "", load0))
        if "check" in args.inject:
            write_ghost(etcd.endpoints, prefix, "b04", "10.40.0.0/16", daemons[0].node)
        rc, line = ipamctl_check(etcd.endpoints, prefix)
        left = handle_addresses(etcd.endpoints, prefix, "b04")
        print("  at the end: %d handles left; ipamctl check: exit %d: %s" % (len(left), rc, line))
        if rc != 0:
            problems.append("ipamctl check at the end: exit %d: %s" % (rc, line))
        if not args.no_del and left:
            problems.append("%d attachments left after the DELs" % len(left))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for d in daemons:
            d.stop()
        etcd.stop()
    return problems


# -- large IPv6 pools -----------------------------------------------------------------------------------------------

def v6_config(name: str, subnet: str, block: int) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge",
                       "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]], "blockSize6": block,
                                "routes": [{"dst": "::/0"}]}}).encode()


def _fill(daemon: Daemon, conf: bytes, tag: str, start: int, count: int, addrs: list[str]) -> list[str]:
    """ADD ``count`` attachments with 16 in flight; appends the addresses; returns the failures."""
    failures: list[str] = []

    def run(chunk: list[str]) -> None:
        for cid in chunk:
            status, reply = cni_call(daemon.cni_socket, cni_frame("ADD", cid, conf), timeout=120)
            if status != 0:
                failures.append("%s: %s" % (cid, reply[:200].decode(errors="replace")))
            else:
                addrs.extend(ip["address"] for ip in json.loads(reply)["ips"])
    ids = ["%s%d" % (tag, i) for i in range(start, start + count)]
    ts = [threading.Thread(target=run, args=(ids[i::16],)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures


def section_v6(args: argparse.Namespace, work: str) -> list[str]:
    print("\n== [2] large IPv6 pools: one daemon, ADD latency (one client, ADD+DEL probes alternating with an empty "
          "network of the same shape, %d rounds) and RSS by addresses held on the node" % args.rounds)
    problems: list[str] = []
    cases = [("/64, /120 blocks", "fd00:40::/64", "fd00:50::/64", 120),
             ("/64, /122 blocks", "fd00:41::/64", "fd00:51::/64", 122),
             ("/48, /122 blocks", "fd00:42::/48", "fd00:52::/48", 122)]
    etcd = Etcd(1)
    try:
        print("  %-17s %6s %10s %10s %10s %7s %9s %8s" % ("pool", "held", "ADD p50", "ADD p99", "empty p50",
                                                          "ratio", "RSS MiB", "fill/s"))
        for n, (label, subnet, empty_subnet, block) in enumerate(cases):
            prefix = "/bench-v6-%d/" % n
            daemon = Daemon(etcd.endpoints, prefix, "A", work, log_level="WARNING")
            try:
                daemon.wait_ready()
                held_conf = v6_config("v6held", subnet, block)
                empty_conf = v6_config("v6empty", empty_subnet, block)
                addrs: list[str] = []
                held = 0
                for target in args.v6_held:
                    t0 = time.perf_counter()
                    failures = _fill(daemon, held_conf, "fill", held, target - held, addrs)
                    fill_rate = (target - held) / (time.perf_counter() - t0) if target > held else 0.0
                    held = target
                    problems += ["%s: %d failed ADDs, e.g. %s" % (label, len(failures), failures[:3])] if failures \
                        else []
                    full, blank, errors = _probe(daemon, held_conf, empty_conf, args.rounds, "probe%d-" % target)
                    problems += ["%s: %d failed probes" % (label, errors)] if errors else []
                    ratio = statistics.median(full) / statistics.median(blank)
                    print("  %-17s %6d %10s %10s %10s %6.2fx %9.1f %8s" % (
                        label, target, ms(statistics.median(full)), ms(percentile(full, 0.99)),
                        ms(statistics.median(blank)), ratio, daemon.rss_bytes() / 2**20,
                        "%.0f" % fill_rate if fill_rate else "-"), flush=True)
                problems += ["%s: %s" % (label, p) for p in
                             address_problems(addrs, handle_addresses(etcd.endpoints, prefix, "v6held"), held)]
                outside = [a for a in addrs if ipaddress.ip_interface(a).ip not in ipaddress.ip_network(subnet)]
                problems += ["%s: %d addresses outside the pool" % (label, len(outside))] if outside else []
                rc, line = ipamctl_check(etcd.endpoints, prefix)
                if rc != 0:
                    problems.append("%s: ipamctl check: exit %d: %s" % (label, rc, line))
                print("  %-17s %d distinct of %d handed out; ipamctl check: exit %d: %s"
                      % ("", len(set(addrs)), len(addrs), rc, line))
            finally:
                daemon.stop()
    finally:
        etcd.stop()
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="b04,v6", help="comma-separated sections: b04, v6")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (~18 s on 2 cores)")
    p.add_argument("--daemons", type=int, default=16)
    p.add_argument("--attachments", type=int, default=2048, help="ADDs in [1] (4 interfaces per pod)")
    p.add_argument("--in-flight", type=int, default=32, help="pods in flight per daemon in [1]")
    p.add_argument("--no-del", action="store_true", help="[1] without the DELs")
    p.add_argument("--v6-held", default="0,5000,20000", help="addresses held at each point of [2]")
    p.add_argument("--rounds", type=int, default=300, help="ADD+DEL probes per point of [2]")
    p.add_argument("--log-level", default="WARNING", help="the daemons' in [1] (with IPAMD_BENCH_KEEP=1 the logs "
                   "stay in the working directory)")
    p.add_argument("--inject", choices=["duplicate", "check"], action="append", default=[],
                   help="make [1]'s checks fail (the bench's own test): count an address twice, or write an address "
                   "record without its handle before the last ipamctl check; may be given twice")
    args = p.parse_args()
    if args.quick:
        args.daemons, args.attachments, args.in_flight, args.v6_held, args.rounds = 3, 96, 4, "0,200", 20
    args.v6_held = [int(x) for x in args.v6_held.split(",")]
    print("bench/b04.py %s; %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), machine()), flush=True)
    work = tmpdir("ipamd-bench-b04-")
    problems: list[str] = []
    t0 = time.monotonic()
    try:
        for name in args.only.split(","):
            problems += {"b04": section_b04, "v6": section_v6}[name](args, work)
    finally:
        if os.environ.get("IPAMD_BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept %s" % work)
    print("\n%.0f s; load average at the end: %s" % (time.monotonic() - t0, machine()["load"]))
    for line in problems:
        print("PROBLEM %s" % line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
