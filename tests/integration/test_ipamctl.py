"""ipamctl against a real daemon and etcd: list/get/release over gRPC, check over etcd (clean and broken)."""

from __future__ import annotations

import subprocess
import sys

from harness import cni_config, run_cni

from ipamd.store.base import Put
from ipamd.store.etcd import EtcdStore


def ipamctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_list_get_release_through_the_daemon(daemons):
    d = daemons("A")
    assert run_cni("ADD", cni_config(), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    out = ipamctl("list", "--socket", d.grpc_socket)  # --socket after the subcommand works too
    assert out.returncode == 0, out.stderr
    assert [line.split()[:3] for line in out.stdout.splitlines()] == [["ATTACHMENT", "ADDRESSES", "NODE"],
                                                                   ["testnet/c1/eth0", "10.1.2.2/24", "A"]]
    got = ipamctl("--socket", d.grpc_socket, "get", "testnet", "c1", "eth0")
    assert got.returncode == 0 and '"10.1.2.2/24"' in got.stdout
    rel = ipamctl("--socket", d.grpc_socket, "release", "testnet", "c1", "eth0")
    assert (rel.returncode, rel.stdout.strip()) == (0, "released 1 address(es)")
    assert ipamctl("--socket", d.grpc_socket, "get", "testnet", "c1", "eth0").returncode == 1
    assert run_cni("CHECK", cni_config(), socket=d.cni_socket).code == 102


def test_check_reports_ok_then_a_planted_violation(daemons, tmp_path):
    d = daemons("A")
    assert run_cni("ADD", cni_config(), socket=d.cni_socket).rc == 0
    conf = tmp_path / "ipamd.toml"
    conf.write_text('etcd_endpoints = ["%s"]\netcd_prefix = "%s"\n' % (d.endpoints, d.prefix))
    ok = ipamctl("check", "--config", str(conf))
    assert ok.returncode == 0 and "OK: all invariants hold" in ok.stdout, ok.stdout + ok.stderr
    # plant an address record whose handle does not exist (invariant 1), then check again, by flags this time
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        key = "ips/testnet/v4/0a010209"
        store.txn([], [Put(key, b'{"handle":"testnet/ghost/eth0","node":"A","pool":"testnet/0a010200-24"}')], [], 5)
        bad = ipamctl("check", "--etcd-endpoints", d.endpoints, "--etcd-prefix", d.prefix)
        assert bad.returncode == 1 and "INV1 " + key in bad.stdout, bad.stdout
    finally:
        from ipamd.store.base import Delete
        store.txn([], [Delete(key)], [], 5)
        store.close()
