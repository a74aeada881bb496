"""What the node check costs (docs/namespace-checks.md "Node check"; issue 10 item 3).

[1] ``ipamd.netns.observe_node()`` in this process's own namespace (the daemon's default: one netlink socket made
    directly, three dumps: links, addresses, main-table routes).
[2] ``ipamd.netns.observe_node(path)`` of a namespace the bench creates, through the helper process
    (``--node-netns``, as the tests run it), with ``--routes`` extra routes and ``--addresses`` extra addresses
    in it so the dumps are not trivially small.
[3] the pure decision (``node_conflicts``) of one pool against what [2] saw.

Prints p50 / p90 / p99 in milliseconds. Needs root for [2] (the namespace is removed at the end).

    .venv/bin/python bench/nodecheck.py [--rounds 500] [--routes 200] [--addresses 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid

from ipamd import netns
from ipamd.domain.addr import Range
from ipamd.domain.nodecheck import node_conflicts


def timed(fn: object, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


def show(what: str, ms: list[float]) -> None:
    q = statistics.quantiles(ms, n=100)
    print("%-58s p50 %7.3f ms  p90 %7.3f ms  p99 %7.3f ms" % (what, q[49], q[89], q[98]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--routes", type=int, default=200)
    ap.add_argument("--addresses", type=int, default=50)
    a = ap.parse_args()
    own = netns.observe_node()
    show("[1] observe_node(), own namespace (%d addr, %d routes)" % (len(own.addresses), len(own.routes)),
         timed(netns.observe_node, a.rounds))
    name = "ipamdbench-" + uuid.uuid4().hex[:5]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        batch = ["link set lo up", "link add uplink0 type veth peer name uplink1", "link set uplink0 up",
                 "link set uplink1 up", "addr add 10.77.0.10/16 dev uplink0"]
        batch += ["addr add 10.80.%d.%d/32 dev uplink1" % (i // 250, i % 250 + 1) for i in range(a.addresses)]
        batch += ["route add 10.90.%d.%d/32 via 10.77.0.1 dev uplink0" % (i // 250, i % 250) for i in range(a.routes)]
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
        path = "/var/run/netns/" + name
        seen = netns.observe_node(path)
        show("[2] observe_node(path), through the helper (%d addr, %d routes)"
             % (len(seen.addresses), len(seen.routes)), timed(lambda: netns.observe_node(path), a.rounds))
        pool = Range.from_config({"subnet": "10.99.3.0/24"}, "bench")
        show("[3] node_conflicts(pool, what [2] saw)", timed(lambda: node_conflicts(pool, seen), a.rounds))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        netns.close()


if __name__ == "__main__":
    main()
