"""Field case B05 measured: ADD latency with 4,000 addresses held in one block, etcd at ``--max-request-bytes=65536``
(not a test; the figures go to docs/benchmarks.md "B05"; the deterministic proof is
tests/integration/test_field_limits.py).

    .venv/bin/python bench/b05.py [--held 4000] [--rounds 100]

One etcd member (loopback, data on tmpfs) started with ``--max-request-bytes=65536``, one daemon, network ``b05`` on
10.41.0.0/16 with blockSize 20 (4,096 addresses per block), and an empty network ``empty`` of the same shape.
Requests are framed CNI requests on the daemon's socket (no plugin process per call, whose start-up would dominate).

1. The first ``--rounds`` ADDs into the fresh network, one at a time: their latencies.
2. Fill to ``--held`` - ``--rounds`` addresses, 16 in flight.
3. The last ``--rounds`` ADDs (up to the ``--held``-th), one at a time, each alternated with an ADD+DEL on the empty
   network (bench/core.py's probe idea: both series see the same etcd and machine at the same moments).

Reported: p50/p90/p99 of each series, the ratio of the last hundred's median to the first hundred's and to the
empty network's, the largest value under the prefix, etcd Txn RPCs per ADD. Exits 1 when an ADD fails or etcd
refuses a request as too large; never on a time. Everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Daemon, Etcd, cni_call, cni_frame, machine, network_config, summary_ms, tmpdir

from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore

PREFIX = "/bench-b05/"


def timed_adds(daemon: Daemon, conf: bytes, ids: list[str], empty: bytes | None = None) -> tuple[list[float],
                                                                                                 list[float]]:
    """ADD each id one at a time (and, with ``empty``, an ADD+DEL on the empty network after each); latencies."""
    held, blank = [], []
    for cid in ids:
        t0 = time.perf_counter()
        status, out = cni_call(daemon.cni_socket, cni_frame("ADD", cid, conf))
        held.append(time.perf_counter() - t0)
        if status != 0:
            raise SystemExit("ADD %s failed: %s" % (cid, out.decode()))
        if empty is not None:
            t0 = time.perf_counter()
            status, out = cni_call(daemon.cni_socket, cni_frame("ADD", "e-" + cid, empty))
            blank.append(time.perf_counter() - t0)
            cni_call(daemon.cni_socket, cni_frame("DEL", "e-" + cid, empty))
            if status != 0:
                raise SystemExit("ADD on the empty network failed: %s" % out.decode())
    return held, blank


def fill(daemon: Daemon, conf: bytes, ids: list[str], threads: int = 16) -> None:
    errors: list[str] = []

    def worker(chunk: list[str]) -> None:
        for cid in chunk:
            status, out = cni_call(daemon.cni_socket, cni_frame("ADD", cid, conf))
            if status != 0:
                errors.append(out.decode())

    ts = [threading.Thread(target=worker, args=(ids[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit("%d ADDs failed, first: %s" % (len(errors), errors[0]))


def largest_value(endpoints: str) -> tuple[int, int]:
    """(number of keys, largest value in bytes) under the bench's prefix."""
    store = EtcdStore(endpoints, PREFIX)
    try:
        sizes = [len(kv.value) for kind in ("pools/", "blocks/", "ips/", "handles/", "nodes/")
                 for kv in store.read(kind, prefix_end(kind), 60)[0]]
    finally:
        store.close()
    return len(sizes), max(sizes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    print("machine:", machine())
    work = tmpdir("ipamd-bench-b05-")
    etcd = Etcd(1, flags=("--max-request-bytes=65536",))
    daemon = Daemon(etcd.endpoints, PREFIX, "A", work, log_level="WARNING")
    try:
        daemon.wait_ready()
        conf = network_config("b05", "10.41.0.0/16", 20)
        empty = network_config("empty", "10.42.0.0/16", 20)
        txn0 = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
        first, _ = timed_adds(daemon, conf, ["c%05d" % i for i in range(args.rounds)])
        txn1 = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
        fill(daemon, conf, ["c%05d" % i for i in range(args.rounds, args.held - args.rounds)])
        txn2 = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
        last, blank = timed_adds(daemon, conf, ["c%05d" % i for i in range(args.held - args.rounds, args.held)],
                                 empty)
        txn3 = etcd.metric("grpc_server_handled_total", {"grpc_method": "Txn"})
        keys, largest = largest_value(etcd.endpoints)
        too_large = "too large" in Path(daemon.log_path).read_text()
        print("first %d ADDs (empty block)          %s" % (args.rounds, summary_ms(first)))
        print("last %d ADDs (up to #%d held)      %s" % (args.rounds, args.held, summary_ms(last)))
        print("empty network, alternated with last  %s" % summary_ms(blank))
        p50 = statistics.median
        print("ratio last/first (p50) %.2f   last/empty (p50) %.2f" % (p50(last) / p50(first), p50(last) / p50(blank)))
        print("etcd Txn per ADD: first %.2f, last (incl. the empty network's ADD+DEL) %.2f, fill %.2f"
              % ((txn1 - txn0) / args.rounds, (txn3 - txn2) / args.rounds,
                 (txn2 - txn1) / max(1, args.held - 2 * args.rounds)))
        print("keys under the prefix %d, largest value %d bytes (limit 65536); 'too large' in the log: %s"
              % (keys, largest, too_large))
        return 1 if too_large or largest >= 65536 else 0
    finally:
        daemon.stop()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
