"""Automatic removal of nodes deleted from the Kubernetes API (ipamd/noderemoval.py, issue 8 item 5): real daemons in
Kubernetes mode (``--kubernetes --kubeconfig``) against the fake API server (tests/fakekube.py) through the real
client, real etcd, the real CNI plugin, and ``ipamctl check`` at the end.

A node is removed only when the API deletion was seen at least ``--kube-node-removal-grace`` ago *and* its lease
record ``nodes/<node>`` has expired. A paused node (lease expired, still in the API) keeps everything
(docs/etcd-layout.md invariant 5); two daemons removing the same node at once release each attachment once. The
decision branch by branch: tests/unit/test_noderemoval.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from fakekube import FakeKube, write_kubeconfig
from harness import Daemon, cni_config, run_cni, wait_for
from prometheus_client.parser import text_string_to_metric_families

from ipamd.domain.model import HandleRecord, decode_block_record
from ipamd.embedded import free_port
from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore

GRACE = 2          # --kube-node-removal-grace, seconds
LEASE_TTL = 2      # --node-lease-ttl, seconds (with --etcd-timeout 1)
CONF = cni_config("nr", subnet="10.58.0.0/24", blockSize=28)


@pytest.fixture
def kube_args(fake: FakeKube, workdir: str) -> list[str]:
    kubeconfig = write_kubeconfig(os.path.join(workdir, "kubeconfig"), fake.url, fake.token)
    return ["--kubernetes", "--kubeconfig", kubeconfig, "--kube-node-removal-grace", str(GRACE),
            "--etcd-timeout", "1", "--node-lease-ttl", str(LEASE_TTL)]


def etcd_state(d: Daemon) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """``(handle container id -> node, block key -> owner, nodes with a lease record)`` under ``d``'s prefix."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        owners = {kv.key.split("/")[2]: HandleRecord.decode(kv.value).node
                  for kv in store.read("handles/", prefix_end("handles/"), 5)[0]}
        blocks = {kv.key: decode_block_record(kv.value) for kv in store.read("blocks/", prefix_end("blocks/"), 5)[0]}
        nodes = {kv.key.split("/", 1)[1] for kv in store.read("nodes/", prefix_end("nodes/"), 5)[0]}
    finally:
        store.close()
    return owners, blocks, nodes


def full_log(d: Daemon) -> str:
    """The daemon's whole log (``Daemon.log()`` keeps only its end)."""
    return Path(d.log_path).read_text()


def ipamctl_check(d: Daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d.endpoints,
                           "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                         if not k.startswith("IPAMD_")})


def counter(port: int, name: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError("%s not exported" % name)


def allocate(d: Daemon, prefix: str, count: int) -> list[str]:
    out = []
    for i in range(count):
        res = run_cni("ADD", CONF, socket=d.cni_socket, container_id="%s%d" % (prefix, i))
        assert res.code is None, res
        out.extend(res.ips)
    return out


def test_deleted_node_is_removed_after_the_grace_period_once_its_lease_expired(
        daemons: Callable[..., Daemon], fake: FakeKube, kube_args: list[str]) -> None:
    """B is deleted from the API while its daemon still runs: nothing goes (its lease is alive). B's daemon is then
    SIGKILLed: once its lease has expired, A releases B's attachments and deletes B's blocks; A's own stay, and
    ``ipamctl check`` is clean (no leaked block of a departed node)."""
    fake.add_node("a")
    fake.add_node("b")
    port = free_port()
    a = daemons("a", extra_args=[*kube_args, "--metrics-address", "127.0.0.1:%d" % port])
    b = daemons("b", extra_args=kube_args)
    allocate(a, "a", 2)
    b_ips = allocate(b, "b", 18)  # B owns two /28 blocks
    owners, blocks, nodes = etcd_state(a)
    assert sorted(set(blocks.values())) == ["a", "b"] and sum(o == "b" for o in blocks.values()) == 2
    assert nodes == {"a", "b"}

    fake.delete_node("b")  # deleted from the API, but B's daemon keeps its lease alive
    wait_for(lambda: "node b deleted from the Kubernetes API" in full_log(a), "A's node view to see b deleted")
    time.sleep(GRACE + 2)
    assert etcd_state(a)[0] == owners, "removed while its lease was alive"
    assert "node b not removed" in full_log(a) and "its lease nodes/b is alive" in full_log(a)

    b.kill()  # SIGKILL: no revoke, the lease expires after its TTL
    wait_for(lambda: set(etcd_state(a)[0].values()) == {"a"}, "A to release B's attachments", timeout=30)
    owners, blocks, nodes = etcd_state(a)
    assert sorted(owners) == ["a0", "a1"] and set(blocks.values()) == {"a"} and nodes == {"a"}
    line = [ln for ln in full_log(a).splitlines() if "node b removed" in ln]
    assert len(line) == 1, full_log(a)
    assert "released 18 attachment(s)" in line[0] and "deleted 2 block(s)" in line[0], line
    assert "nr/b0/eth0=%s" % b_ips[0] in line[0], line
    assert counter(port, "ipamd_node_removals_total") == 1
    assert counter(port, "ipamd_node_removal_released_total") == 18
    assert counter(port, "ipamd_node_removal_blocks_deleted_total") == 2
    check = ipamctl_check(a)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
    # B's blocks are free again: once A's block (.0/28: .2-.15) is full, A claims .16/28, the lowest one B held
    assert allocate(a, "later", 13)[-2:] == ["10.58.0.15/24", "10.58.0.16/24"]
    for cid in ["a0", "a1", *("later%d" % i for i in range(13))]:
        assert run_cni("DEL", CONF, socket=a.cni_socket, container_id=cid).rc == 0


def test_paused_node_still_in_the_api_keeps_everything(daemons: Callable[..., Daemon], fake: FakeKube,
                                                       kube_args: list[str]) -> None:
    """Invariant 5: B's daemon is paused (SIGSTOP) until its lease expires, while B stays in the API: long past the
    grace period, nothing of B's is released and no block of B's is deleted. Resumed, B renews its record and
    serves its attachments as before."""
    fake.add_node("a")
    fake.add_node("b")
    a = daemons("a", extra_args=kube_args)
    b = daemons("b", extra_args=kube_args)
    allocate(b, "b", 3)
    before = etcd_state(a)
    assert before[2] == {"a", "b"}
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: etcd_state(a)[2] == {"a"}, "B's lease to expire", timeout=20)
        time.sleep(GRACE * 2 + 2)  # several removal rounds past the grace period
        owners, blocks, _ = etcd_state(a)
        assert (owners, blocks) == before[:2]
        assert "node b removed" not in full_log(a)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    wait_for(lambda: etcd_state(a)[2] == {"a", "b"}, "B to renew its lease record")
    for i in range(3):
        assert run_cni("DEL", CONF, socket=b.cni_socket, container_id="b%d" % i).rc == 0
    check = ipamctl_check(a)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr


def test_two_daemons_removing_the_same_node_release_each_attachment_once(
        daemons: Callable[..., Daemon], fake: FakeKube, kube_args: list[str]) -> None:
    """A and C both see B deleted and both remove it: each reads B's records, then pauses 3 s (failpoint
    ``noderemoval.after_plan``) so both carry out plans read before either removed anything. Every attachment of B
    is released exactly once across the two (their counters add up to B's count), every block deleted once, the
    loser logs what it skipped, and ``ipamctl check`` is clean."""
    for name in ("a", "b", "c"):
        fake.add_node(name)
    ports = {"a": free_port(), "c": free_port()}
    race = {"IPAMD_FAILPOINTS": "noderemoval.after_plan=pause:3:1"}
    a = daemons("a", env=race, extra_args=[*kube_args, "--metrics-address", "127.0.0.1:%d" % ports["a"]])
    c = daemons("c", env=race, extra_args=[*kube_args, "--metrics-address", "127.0.0.1:%d" % ports["c"]])
    b = daemons("b", extra_args=kube_args)
    allocate(b, "b", 40)  # three blocks of B; more than one release batch would hold at the transaction level
    b.kill()
    wait_for(lambda: "b" not in etcd_state(a)[2], "B's lease to expire", timeout=20)
    fake.delete_node("b")
    wait_for(lambda: not etcd_state(a)[0], "B's attachments to be released", timeout=30)
    owners, blocks, nodes = etcd_state(a)
    assert owners == {} and blocks == {} and nodes == {"a", "c"}
    # both daemons have finished their round once each logged its removal, or found nothing left
    # both planned before either removed anything, so both log a removal (the loser's with what it skipped)
    wait_for(lambda: all("node b removed" in full_log(d) for d in (a, c)), "both daemons to carry out their plan")
    assert all("failpoint noderemoval.after_plan" in full_log(d) for d in (a, c))
    released = [counter(ports[n], "ipamd_node_removal_released_total") for n in ("a", "c")]
    deleted = [counter(ports[n], "ipamd_node_removal_blocks_deleted_total") for n in ("a", "c")]
    assert sum(released) == 40, released
    assert sum(deleted) == 3, deleted
    assert any("changed under it" in full_log(d) for d in (a, c))
    check = ipamctl_check(a)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
