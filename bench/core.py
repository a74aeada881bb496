"""Benchmark of the allocation core (not a test): docs/benchmarks.md budgets, figures side by side in one run.

    .venv/bin/python bench/core.py [--quick] [--src DIR] [--only rates,held,herd,check]

Sections (docs/benchmarks.md "Allocation core" has the figures and how to read them):

1. ``rates``: one daemon's ADD and DEL rate through its CNI socket against raw etcd compare-and-swap transactions
   from Python (put-if-absent, then compare-and-delete) on the same etcd, at 1, 4, 16 and 64 clients, interleaved;
   the daemon's CPU seconds and RSS per ADD from /proc.
2. ``held``: ADD p50 (one client, sequential) with 0, 5k and 50k addresses held on the node itself, and held by
   another node in the same pool (the cluster); the daemon's RSS at each point.
3. ``herd``: field case B49: four daemons on a three-member etcd, a fresh /16 with blockSize 26, 400 ADDs each at
   8 in flight: etcd Txn RPCs per ADD (from etcd's own metrics) and ADD latency percentiles.
4. ``check``: ``ipamctl check`` and CNI GC (empty keep-list) at 10k and 100k attachments (records written straight
   into etcd with the model's encoders, then released by the daemon).

Everything started here is stopped here by PID. ``--src DIR`` runs the daemon and ipamctl from another checkout
(e.g. a ``git worktree`` of an older commit) for before/after figures. It never fails on a time; exit status 1 only
when the set-up fails.
"""

from __future__ import annotations

import argparse
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

from common import ROOT, Daemon, Etcd, cni_call, cni_frame, machine, metric_sum, network_config, summary_ms, tmpdir

from ipamd.domain.addr import Block
from ipamd.domain.model import (
    Allocation,
    HandleRecord,
    IpRecord,
    PoolRecord,
    block_key,
    encode_block_record,
    handle_key,
    ip_key,
    pool_key,
)
from ipamd.domain.netconf import parse_netconf
from ipamd.store.base import Compare, Delete, Put, prefix_end
from ipamd.store.etcd import EtcdStore

BUDGET_RATE_RATIO = 0.5
BUDGET_HELD_RATIO = 1.2
BUDGET_HERD_TXN = 1.1


# -- load generators (run in forked worker processes) -------------------------------------------------------------

def _cni_worker(sock: str, conf: bytes, ids: list[str], threads: int, barrier: Any, out: Any) -> None:
    """ADD every id, barrier, then DEL every id; puts (add latencies, del latencies, add span, del span, errors)."""
    def phase(command: str) -> tuple[list[float], tuple[float, float], int]:
        lat: list[float] = []
        errors = [0]
        chunks = [ids[i::threads] for i in range(threads)]

        def run(chunk: list[str]) -> None:
            for cid in chunk:
                frame = cni_frame(command, cid, conf)
                t0 = time.perf_counter()
                status, _ = cni_call(sock, frame)
                lat.append(time.perf_counter() - t0)
                if status != 0:
                    errors[0] += 1
        barrier.wait()
        start = time.monotonic()
        ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return lat, (start, time.monotonic()), errors[0]
    add = phase("ADD")
    dele = phase("DEL")
    out.put((add[0], dele[0], add[1], dele[1], add[2] + dele[2]))


def _raw_worker(endpoints: str, prefix: str, ids: list[str], threads: int, barrier: Any, out: Any) -> None:
    """The same shape with raw CAS transactions: put-if-absent every key, barrier, compare-and-delete every key."""
    store = EtcdStore(endpoints, prefix)
    value = b'{"handle":"bench/c/eth0","node":"A","pool":"bench/0a000000-8"}'
    revisions: dict[str, int] = {}

    def phase(kind: str) -> tuple[list[float], tuple[float, float], int]:
        lat: list[float] = []
        chunks = [ids[i::threads] for i in range(threads)]

        def run(chunk: list[str]) -> None:
            for key in chunk:
                t0 = time.perf_counter()
                if kind == "put":
                    res = store.txn([Compare(key, "version", "==", 0)], [Put(key, value)], [], 5.0)
                    revisions[key] = res.revision
                else:
                    store.txn([Compare(key, "mod", "==", revisions[key])], [Delete(key)], [], 5.0)
                lat.append(time.perf_counter() - t0)
        barrier.wait()
        start = time.monotonic()
        ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return lat, (start, time.monotonic()), 0
    put = phase("put")
    dele = phase("del")
    store.close()
    out.put((put[0], dele[0], put[1], dele[1], 0))


def drive(kind: str, target: tuple[str, ...], ids: list[str], clients: int) -> dict[str, Any]:
    """Run ``clients`` concurrent clients (threads over up to 4 processes) through both phases; rates in ops/s."""
    ctx = multiprocessing.get_context("fork")
    procs = min(clients, 4)
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    per_proc = [ids[i::procs] for i in range(procs)]
    threads = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    fn = _cni_worker if kind == "cni" else _raw_worker
    workers = [ctx.Process(target=fn, args=(*target, per_proc[i], threads[i], barrier, out)) for i in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    first = [lat for r in results for lat in r[0]]
    second = [lat for r in results for lat in r[1]]
    span1 = max(r[2][1] for r in results) - min(r[2][0] for r in results)
    span2 = max(r[3][1] for r in results) - min(r[3][0] for r in results)
    return {"rate1": len(first) / span1, "rate2": len(second) / span2, "lat1": first, "lat2": second,
            "errors": sum(r[4] for r in results)}


# -- sections ------------------------------------------------------------------------------------------------------

def section_rates(args: argparse.Namespace, work: str) -> None:
    print("\n== [1] one daemon's ADD/DEL rate vs raw etcd CAS, same etcd, same concurrency (%d ops each)" % args.ops)
    etcd = Etcd(1)
    daemon = Daemon(etcd.endpoints, "/bench-rates/", "A", work, src=args.src)
    try:
        daemon.wait_ready()
        conf = network_config("rates", "10.0.0.0/12")
        drive("cni", (daemon.cni_socket, conf), ["warm%d" % i for i in range(200)], 4)
        print("%-8s %12s %12s %12s %12s %8s %8s  %s" % ("clients", "raw put/s", "daemon ADD/s", "raw del/s",
                                                        "daemon DEL/s", "ADD/raw", "DEL/raw", "daemon ADD latency"))
        for clients in args.clients:
            raw = drive("raw", (etcd.endpoints, "/bench-raw-%d/" % clients),
                        ["k/%d/%d" % (clients, i) for i in range(args.ops)], clients)
            cpu0, txn0 = daemon.cpu_seconds(), etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
            cni = drive("cni", (daemon.cni_socket, conf), ["c%d-%d" % (clients, i) for i in range(args.ops)],
                        clients)
            cpu = daemon.cpu_seconds() - cpu0
            txns = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"}) - txn0
            print("%-8d %12.0f %12.0f %12.0f %12.0f %8.2f %8.2f  %s" % (
                clients, raw["rate1"], cni["rate1"], raw["rate2"], cni["rate2"], cni["rate1"] / raw["rate1"],
                cni["rate2"] / raw["rate2"], summary_ms(cni["lat1"])))
            print("         daemon CPU %.0f us per ADD+DEL pair, %.2f etcd Txn per op, RSS %.1f MiB, errors %d%s"
                  % (1e6 * cpu / args.ops, txns / (2 * args.ops), daemon.rss_bytes() / 2**20, cni["errors"],
                     "" if cni["rate1"] / raw["rate1"] >= BUDGET_RATE_RATIO else
                     "   ADD/raw under the %.1fx budget" % BUDGET_RATE_RATIO))
    finally:
        daemon.stop()
        etcd.stop()


def _fill(daemon: Daemon, conf: bytes, tag: str, start: int, count: int) -> int:
    if count <= 0:
        return 0
    ids = ["%s%d" % (tag, i) for i in range(start, start + count)]
    errors = [0]

    def run(chunk: list[str]) -> None:
        for cid in chunk:
            if cni_call(daemon.cni_socket, cni_frame("ADD", cid, conf))[0] != 0:
                errors[0] += 1
    ts = [threading.Thread(target=run, args=(ids[i::16],)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors[0]


def _probe(daemon: Daemon, held: bytes, empty: bytes, rounds: int, tag: str) -> tuple[list[float], list[float], int]:
    """ADD latencies through one daemon, alternating between a network that holds many addresses and one that holds
    none (the issue's "within 1.2x of an empty network of the same daemon"), each ADD followed by its DEL: the
    two series see the same etcd and the same machine at the same moments."""
    full, blank = [], []
    errors = 0
    for i in range(rounds):
        for conf, out in ((held, full), (empty, blank)):
            cid = "%s%d" % (tag, i)
            t0 = time.perf_counter()
            status, _out = cni_call(daemon.cni_socket, cni_frame("ADD", cid, conf))
            out.append(time.perf_counter() - t0)
            errors += status != 0
            cni_call(daemon.cni_socket, cni_frame("DEL", cid, conf))
    return full, blank, errors


def section_held(args: argparse.Namespace, work: str) -> None:
    print("\n== [2] ADD latency by addresses held: one client, one daemon, a network holding N addresses and an empty "
          "one, probed alternately (%d rounds each)" % args.rounds)
    etcd = Etcd(1)
    try:
        for where in ("node", "cluster"):
            prefix = "/bench-held-%s/" % where
            a = Daemon(etcd.endpoints, prefix, "A", work, src=args.src, log_level="WARNING")
            b = Daemon(etcd.endpoints, prefix, "B", work, src=args.src, log_level="WARNING")
            try:
                a.wait_ready()
                b.wait_ready()
                held_conf = network_config("held", "10.16.0.0/12")
                empty_conf = network_config("empty", "10.48.0.0/12")
                filler = a if where == "node" else b
                held = 0
                for target in args.held:
                    errors = _fill(filler, held_conf, "fill", held, target - held)
                    held = target
                    full, blank, probe_errors = _probe(a, held_conf, empty_conf, args.rounds, "probe%d-" % target)
                    ratio = statistics.median(full) / statistics.median(blank)
                    print("  %6d held %-11s ADD %s | empty network: %s | ratio %.2f | RSS(A) %.1f MiB | errors %d/%d%s"
                          % (target, "by " + ("this node" if where == "node" else "another"), summary_ms(full),
                             summary_ms(blank), ratio, a.rss_bytes() / 2**20, errors, probe_errors,
                             "" if ratio <= BUDGET_HELD_RATIO else "   over the 1.2x budget"))
            finally:
                a.stop()
                b.stop()
    finally:
        etcd.stop()


def section_herd(args: argparse.Namespace, work: str) -> None:
    print("\n== [3] herd (B49): 4 daemons, three-member etcd, fresh /16 blockSize 26, %d ADDs each, 8 in flight"
          % args.herd_adds)
    etcd = Etcd(3)
    daemons = [Daemon(etcd.endpoints, "/bench-herd/", n, work, src=args.src, log_level="WARNING") for n in "ABCD"]
    try:
        for d in daemons:
            d.wait_ready()
        conf = network_config("herd", "10.32.0.0/16")
        txn0 = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_herd_worker, args=(d.cni_socket, conf, d.node, args.herd_adds, barrier, out))
                 for d in daemons]
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        txns = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"}) - txn0
        lat = [x for r in results for x in r[0]]
        errors = sum(r[1] for r in results)
        conflicts = sum(metric_sum(d.metrics(), "ipamd_cas_conflicts_total") for d in daemons)
        total = 4 * args.herd_adds
        print("  etcd Txn RPCs per ADD %.3f (%d for %d ADDs)%s; daemon conflicts %d; errors %d"
              % (txns / total, txns, total, "" if txns / total <= BUDGET_HERD_TXN else "   over the 1.1 budget",
                 conflicts, errors))
        print("  ADD %s" % summary_ms(lat))
    finally:
        for d in daemons:
            d.stop()
        etcd.stop()


def _herd_worker(sock: str, conf: bytes, node: str, adds: int, barrier: Any, out: Any) -> None:
    lat: list[float] = []
    errors = [0]

    def run(chunk: list[str]) -> None:
        for cid in chunk:
            t0 = time.perf_counter()
            if cni_call(sock, cni_frame("ADD", cid, conf))[0] != 0:
                errors[0] += 1
            lat.append(time.perf_counter() - t0)
    ids = ["%s-%d" % (node, i) for i in range(adds)]
    barrier.wait()
    ts = [threading.Thread(target=run, args=(ids[i::8],)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, errors[0]))


def write_attachments(store: EtcdStore, network: str, subnet: str, node: str, count: int) -> None:
    """``count`` consistent attachments of ``node`` in ``network`` (pool record, owned /26 blocks, one address and
    one handle each), written with the model's encoders, 40 attachments per transaction."""
    nc = parse_netconf({"name": network, "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]],
                                                  "blockSize": 26}}, network)
    pool = nc.range_sets[0][0]
    rng = pool.range
    store.txn([], [Put(pool_key(pool.id), PoolRecord(network, rng, 26).encode())], [], 10)
    value = rng.start
    ops: list[Put] = []
    blocks: set[int] = set()
    for i in range(count):
        while not rng.usable(value):
            value += 1
        first = value - (value - rng.network) % 64
        if first not in blocks:
            blocks.add(first)
            ops.append(Put(block_key(pool.id, Block(4, first, 26)), encode_block_record(node)))
        alloc = Allocation(pool.id, 4, value, rng.prefixlen, rng.gateway)
        rec = HandleRecord(network, "gc%d" % i, "eth0", node, (alloc,))
        ops.append(Put(ip_key(network, 4, value), IpRecord(rec.handle, node, pool.id).encode()))
        ops.append(Put(handle_key(rec.handle), rec.encode()))
        value += 1
        if len(ops) >= 80:
            store.txn([], ops, [], 30)
            ops = []
    if ops:
        store.txn([], ops, [], 30)


def section_check(args: argparse.Namespace, work: str) -> None:
    print("\n== [4] ipamctl check and CNI GC (empty keep-list) by attachments held")
    etcd = Etcd(1)
    try:
        for count in args.check_sizes:
            prefix = "/bench-check-%d/" % count
            store = EtcdStore(etcd.endpoints, prefix)
            write_attachments(store, "gcnet", "10.64.0.0/10", "A", count)
            store.close()
            env = dict(os.environ, PYTHONPATH=str(args.src))
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints",
                                etcd.endpoints, "--etcd-prefix", prefix], capture_output=True, text=True, env=env,
                               cwd=str(args.src), timeout=1800)
            check_s = time.perf_counter() - t0
            daemon = Daemon(etcd.endpoints, prefix, "A", work, src=args.src, log_level="WARNING")
            try:
                daemon.wait_ready()
                conf = json.loads(network_config("gcnet", "10.64.0.0/10"))
                conf["cniVersion"] = "1.1.0"  # GC is a 1.1.0 verb
                conf["cni.dev/valid-attachments"] = []
                frame = cni_frame("GC", "", json.dumps(conf).encode())
                t0 = time.perf_counter()
                calls, answers = 0, []
                while True:
                    status, out = cni_call(daemon.cni_socket, frame, timeout=600)
                    calls += 1
                    code = json.loads(out).get("code") if status else 0
                    answers.append(code)
                    if status == 0 or code != 11 or time.perf_counter() - t0 > 1200:
                        break
                gc_s = time.perf_counter() - t0
            finally:
                daemon.stop()
            print("  %7d attachments: ipamctl check %.2f s (exit %d); GC %.2f s in %d call(s), answers %s"
                  % (count, check_s, p.returncode, gc_s, calls, answers[:6]))
    finally:
        etcd.stop()


def _cpu_per_call(fn: Any, n: int) -> float:
    """CPU microseconds per call of ``fn(i)`` in this process (all threads), after 50 warm-up calls."""
    for i in range(50):
        fn(-1 - i)
    t0 = time.process_time()
    for i in range(n):
        fn(i)
    return 1e6 * (time.process_time() - t0) / n


def _writer(endpoints: str, prefix: str, n: int) -> None:
    store = EtcdStore(endpoints, prefix)
    for i in range(n):
        store.txn([], [Put("w/%d" % i, b'{"handle":"x","node":"B","pool":"p"}')], [], 5)
    store.close()


def section_breakdown(args: argparse.Namespace, work: str) -> None:
    """Where an ADD's CPU goes, part by part, each measured alone in one thread (docs/benchmarks.md)."""
    import logging
    from logging.handlers import QueueHandler, QueueListener

    from ipamd.cniserver import handle_cni
    from ipamd.logs import ContextFormatter
    from ipamd.service import IpamService
    from ipamd.store.memory import MemoryStore

    print("\n== [5] where an ADD's CPU goes (one thread, CPU microseconds per call)")
    etcd = Etcd(1)
    store = EtcdStore(etcd.endpoints, "/bench-breakdown/")
    try:
        n = args.ops
        raw = _cpu_per_call(lambda i: store.txn([Compare("r/%d" % i, "version", "==", 0)],
                                                [Put("r/%d" % i, b"x" * 60)], [], 5), n)
        svc = IpamService(store, "A")
        svc.sync()
        svc.set_ready()
        conf = network_config("bd", "10.0.0.0/12")

        def env(cmd: str, i: int) -> dict[str, str]:
            return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c%d" % i, "CNI_IFNAME": "eth0",
                    "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/opt/cni/bin"}
        etcd_add = _cpu_per_call(lambda i: handle_cni(svc, env("ADD", i), conf, None), n)
        etcd_del = _cpu_per_call(lambda i: handle_cni(svc, env("DEL", i), conf, None), n)
        mem = IpamService(MemoryStore(), "A")
        mem.sync()
        mem.set_ready()
        mem_add = _cpu_per_call(lambda i: handle_cni(mem, env("ADD", i), conf, None), n)
        mem_del = _cpu_per_call(lambda i: handle_cni(mem, env("DEL", i), conf, None), n)
        records: Any = __import__("queue").SimpleQueue()
        devnull = open(os.devnull, "w")
        out = logging.StreamHandler(devnull)
        out.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        listener = QueueListener(records, out)
        listener.start()
        lg = logging.getLogger("bench.breakdown")
        lg.addHandler(QueueHandler(records))
        lg.propagate = False
        lg.setLevel(logging.INFO)
        ctx = {"container_id": "c1", "if_name": "eth0", "network": "bd", "addresses": ["10.0.0.2/12"],
               "duration_ms": 1.2, "code": 0}
        log_line = _cpu_per_call(lambda i: lg.info("CNI %s ok", "ADD", extra=ctx), n)
        listener.stop()
        devnull.close()
        watch = store.watch()
        watch.add("w/", prefix_end("w/"), store.read("", None, 5)[1] + 1)
        ctx_mp = multiprocessing.get_context("spawn")
        writer = ctx_mp.Process(target=_writer, args=(etcd.endpoints, "/bench-breakdown/", n))
        t0 = time.process_time()
        writer.start()
        seen = 0
        while seen < n:
            update = watch.next(5.0)
            if update is not None:
                seen += len(update.events)
        event_cpu = 1e6 * (time.process_time() - t0) / n
        writer.join()
        watch.close()
    finally:
        store.close()
        etcd.stop()
    print("  raw CAS transaction from Python (the etcd client's cost)      %6.0f" % raw)
    print("  ADD through handle_cni, real etcd / in-memory store            %6.0f / %4.0f   (ours: %4.0f + etcd client)"
          % (etcd_add, mem_add, mem_add))
    print("  DEL through handle_cni, real etcd / in-memory store            %6.0f / %4.0f" % (etcd_del, mem_del))
    print("  one request log line (queued, written by the listener)         %6.0f" % log_line)
    print("  one watch event received (a writer in another process)         %6.0f" % event_cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=ROOT, help="checkout whose ipamd runs (default: this one)")
    p.add_argument("--only", default="rates,held,herd,check,breakdown", help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="small sizes, for trying the bench out")
    p.add_argument("--ops", type=int, default=3000, help="ADDs (and DELs) per concurrency level in [1]")
    p.add_argument("--held", default="0,5000,50000", help="addresses held at each point of [2]")
    args = p.parse_args()
    args.clients = [1, 4, 16, 64]
    args.held = [int(x) for x in args.held.split(",")]
    args.rounds = 300
    args.herd_adds = 400
    args.check_sizes = [10000, 100000]
    if args.quick:
        args.ops, args.held, args.rounds, args.herd_adds, args.check_sizes = 400, [0, 2000], 50, 100, [2000]
    args.src = args.src.resolve()
    if not (args.src / "ipamd" / "v1").is_dir():
        print("bench: %s has no generated stubs (ipamd/v1); copy them from this checkout" % args.src)
        return 1
    print("bench/core.py %s; src %s; %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), args.src, machine()))
    work = tmpdir("ipamd-bench-")
    try:
        for name in args.only.split(","):
            {"rates": section_rates, "held": section_held, "herd": section_herd, "check": section_check,
             "breakdown": section_breakdown}[name](args, work)
    finally:
        if os.environ.get("IPAMD_BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    print("\nload average at the end: %s" % machine()["load"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
