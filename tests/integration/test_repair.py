"""Repair and node removal through the real ``ipamctl`` against real etcd and real daemons: field cases B51, B52 and
invariant 5 (docs/etcd-layout.md), issue 8 "Repair" and "Node removal". Each scenario ends with the invariant
check (the ``daemons`` fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import Daemon, EtcdCluster, cni_config, run_cni

from ipamd.domain.addr import Block
from ipamd.domain.model import Allocation, HandleRecord, IpRecord, block_key, encode_block_record, handle_key, ip_key
from ipamd.store.base import Put
from ipamd.store.etcd import EtcdStore


def ipamctl(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", *args, "--etcd-endpoints", d.endpoints,
                           "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                         if not k.startswith("IPAMD_")})


def ip(text: str) -> int:
    import ipaddress

    return int(ipaddress.ip_address(text))


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.2)


def test_b52_repair_removes_exactly_the_broken_records(daemons, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """B52: beside real allocations, an address record naming a handle that does not exist, a handle whose address
    record is missing, and the empty block of a node that no longer exists. ``ipamctl check -o json`` lists each
    with its key and mod revision (exit 1); ``ipamctl repair --from-report`` removes exactly those; check is clean
    again; the ghost's address is allocatable again; the live attachments are untouched."""
    d = daemons("A")
    conf = cni_config("b52", subnet="10.52.0.0/24", blockSize=28)
    live = [run_cni("ADD", conf, socket=d.cni_socket, container_id="live%d" % i).ips[0] for i in range(3)]
    pool_id = "b52/0a340000-24"
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        ghost_key = ip_key("b52", 4, ip("10.52.0.9"))
        hollow = HandleRecord("b52", "hollow", "eth0", "A", (Allocation(pool_id, 4, ip("10.52.0.10"), 24,
                                                                        ip("10.52.0.1")),))
        store.txn([], [Put(ghost_key, IpRecord("b52/ghost/eth0", "A", pool_id).encode()),
                       Put(handle_key(hollow.handle), hollow.encode()),
                       Put(block_key(pool_id, Block(4, ip("10.52.0.128"), 28)), encode_block_record("gone"))], [], 5)
    finally:
        store.close()
    report_file = tmp_path / "report.json"
    check = ipamctl(d, "check", "-o", "json", "--report", str(report_file))
    assert check.returncode == 1, check
    doc = json.loads(report_file.read_text())
    repairable = {f["key"]: f for f in doc["findings"] if f["repair"]}
    assert set(repairable) == {ghost_key, handle_key(hollow.handle), block_key(pool_id, Block(4, ip("10.52.0.128"),
                                                                                                28))}
    assert all(f["mod_revision"] > 0 for f in repairable.values())
    repair = ipamctl(d, "repair", "--from-report", str(report_file))
    assert repair.returncode == 0, repair
    assert "3 repaired, 0 skipped" in repair.stderr
    clean = ipamctl(d, "check")
    assert clean.returncode == 0 and "OK: all invariants hold" in clean.stdout, clean
    out = run_cni("ADD", conf, socket=d.cni_socket, container_id="reuse", args="IP=10.52.0.9")
    assert out.ips == ["10.52.0.9/24"], out
    for i, address in enumerate(live):
        assert run_cni("ADD", conf, socket=d.cni_socket, container_id="live%d" % i).ips == [address]


def test_repair_refuses_an_old_or_foreign_report(daemons, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = daemons("A")
    report_file = tmp_path / "report.json"
    assert ipamctl(d, "check", "--report", str(report_file)).returncode == 0
    old = ipamctl(d, "repair", "--from-report", str(report_file), "--max-age", "0")
    assert old.returncode == 2 and "old" in old.stderr, old
    doc = json.loads(report_file.read_text())
    doc["prefix"] = "/somewhere/else/"
    report_file.write_text(json.dumps(doc))
    foreign = ipamctl(d, "repair", "--from-report", str(report_file))
    assert foreign.returncode == 2 and "prefix" in foreign.stderr, foreign


def test_b51_narrowed_exclude_under_live_pods_is_a_warning(daemons) -> None:  # type: ignore[no-untyped-def]
    """B51: .70 is held; the configuration gains an exclude covering .64/28; new ADDs respect it, the holder keeps
    its address, ``ipamctl check`` lists a warning (exit 0), and once released .70 is never handed out again."""
    d = daemons("A")
    before = cni_config("b51", subnet="10.51.0.0/24")
    holder = run_cni("ADD", before, socket=d.cni_socket, container_id="holder", args="IP=10.51.0.70")
    assert holder.ips == ["10.51.0.70/24"], holder
    after = cni_config("b51", subnet="10.51.0.0/24", exclude=["10.51.0.64/28"])
    adds = [run_cni("ADD", after, socket=d.cni_socket, container_id="n%d" % i).ips[0] for i in range(3)]
    assert all(not 64 <= int(a.split("/")[0].rsplit(".", 1)[1]) <= 79 for a in adds), adds
    check = ipamctl(d, "check")
    assert check.returncode == 0, check
    warns = [line for line in check.stdout.splitlines() if line.startswith("WARN")]
    assert len(warns) == 1 and "b51/holder/eth0" in warns[0] and "(1 warning(s))" in check.stdout, check.stdout
    assert run_cni("DEL", after, socket=d.cni_socket, container_id="holder").rc == 0
    refused = run_cni("ADD", after, socket=d.cni_socket, container_id="again", args="IP=10.51.0.70")
    assert refused.code == 101, refused
    assert ipamctl(d, "check").returncode == 0


def test_node_remove_refused_while_alive_then_releases_everything(daemons) -> None:  # type: ignore[no-untyped-def]
    """Issue 8 item 5: ``ipamctl node remove A`` shows what it will release and refuses while A's lease is alive;
    once the lease expired (A was killed) it releases A's attachments and deletes its blocks; B then gets A's old
    block (the lowest) for a new claim."""
    a = daemons("A", extra_args=["--node-lease-ttl", "2", "--etcd-timeout", "1"])
    b = daemons("B")
    conf = cni_config("nrm", subnet="10.53.0.0/24", blockSize=28)
    for i in range(5):
        assert run_cni("ADD", conf, socket=a.cni_socket, container_id="a%d" % i).rc == 0
    assert run_cni("ADD", conf, socket=b.cni_socket, container_id="b0").ips == ["10.53.0.16/24"]
    a.kill()
    dry = ipamctl(a, "node", "remove", "A", "--dry-run")
    assert dry.returncode == 0 and "the real run would be refused" in dry.stdout, dry
    refused = ipamctl(a, "node", "remove", "A", "--yes")
    assert refused.returncode == 1 and "live lease" in refused.stderr, refused
    assert "5 attachment(s)" in refused.stdout
    store = EtcdStore(a.endpoints, a.prefix)
    try:
        wait_for(lambda: not store.read("nodes/A", None, 2)[0], 30, "A's lease to expire")
    finally:
        store.close()
    unconfirmed = ipamctl(a, "node", "remove", "A")
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    done = ipamctl(a, "node", "remove", "A", "--yes")
    assert done.returncode == 0 and "released 5 attachment(s), deleted 1 block(s)" in done.stdout, done
    assert ipamctl(a, "check").returncode == 0
    for i in range(15):  # B fills its own block .16/28 (.17-.31: 15 more), then claims the lowest free: .0/28
        run_cni("ADD", conf, socket=b.cni_socket, container_id="b%d" % (i + 1))
    assert run_cni("ADD", conf, socket=b.cni_socket, container_id="b-next").ips == ["10.53.0.2/24"]


def test_paused_node_keeps_the_blocks_that_hold_its_pods(daemons, etcd: EtcdCluster,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """Invariant 5: A is paused (SIGSTOP) until its lease expires. A check then calls its empty block a leak, never
    the block holding its pods; repairing removes only the empty one; A resumes, registers again and serves."""
    a = daemons("A", extra_args=["--node-lease-ttl", "2", "--etcd-timeout", "1"])
    conf = cni_config("pause", subnet="10.54.0.0/24", blockSize=28)
    for i in range(3):
        assert run_cni("ADD", conf, socket=a.cni_socket, container_id="p%d" % i).rc == 0
    store = EtcdStore(a.endpoints, a.prefix)
    try:
        pool_id = "pause/0a360000-24"
        store.txn([], [Put(block_key(pool_id, Block(4, ip("10.54.0.64"), 28)), encode_block_record("A"))], [], 5)
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not store.read("nodes/A", None, 2)[0], 30, "A's lease to expire")
            report_file = tmp_path / "report.json"
            assert ipamctl(a, "check", "--report", str(report_file)).returncode == 1
            leaks = [f["key"] for f in json.loads(report_file.read_text())["findings"] if f["severity"] == "leak"]
            assert leaks == [block_key(pool_id, Block(4, ip("10.54.0.64"), 28))]
            assert ipamctl(a, "repair", "--from-report", str(report_file)).returncode == 0
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        wait_for(lambda: bool(store.read("nodes/A", None, 2)[0]), 30, "A to register again")
    finally:
        store.close()
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="p3").ips == ["10.54.0.5/24"]
    assert ipamctl(a, "check").returncode == 0
