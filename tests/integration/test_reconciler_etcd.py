"""The reconciler against real etcd and real daemons (issue 8 "Periodic reconciler"; field case B19). The network
namespace a runtime passes is a path; here regular files stand in for them (the daemon judges by whether the
path still exists, and only for a path it could see at ADD), so the tests need no root. ``ipamctl gc --dry-run``
prints what would go and why; ``ipamctl gc`` runs a pass now."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from harness import cni_config, run_cni
from harness import daemon_ipamctl as ipamctl
from harness import handle_ids as handles

from ipamd.embedded import free_port


def test_ipamctl_gc_dry_run_then_release(daemons, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pod's namespace is gone but no DEL came: ``ipamctl gc --dry-run`` names it and why, without releasing;
    ``ipamctl gc`` notes it, and after the grace period the next one releases it; the others stay."""
    d = daemons("A", extra_args=["--reconcile-interval", "0", "--reconcile-grace", "1"])
    conf = cni_config("rec", subnet="10.61.0.0/24")
    for cid in ("keep", "lose"):
        (tmp_path / cid).touch()
        assert run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns=str(tmp_path / cid)).rc == 0
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="placeholder").rc == 0  # netns never seen
    (tmp_path / "lose").unlink()
    dry = ipamctl(d, "gc", "--dry-run")
    assert dry.returncode == 0, dry
    assert "handles/rec/lose/eth0: netns %s is gone" % (tmp_path / "lose") in dry.stdout, dry.stdout
    assert "would release" not in dry.stdout and handles(d) == {"keep", "lose", "placeholder"}
    first = ipamctl(d, "gc")
    assert first.returncode == 0 and "waiting" in first.stdout and handles(d) == {"keep", "lose", "placeholder"}
    time.sleep(1.2)
    assert "would release handles/rec/lose/eth0" in ipamctl(d, "gc", "--dry-run").stdout
    done = ipamctl(d, "gc")
    assert "released handles/rec/lose/eth0: netns" in done.stdout, done
    assert handles(d) == {"keep", "placeholder"}
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="new").ips == ["10.61.0.3/24"]  # lose's


def test_b19_pod_deleted_while_the_daemon_was_down(daemons, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """B19: the daemon is stopped, a pod goes away (its namespace removed, the runtime's DEL failed); after the
    daemon is back, its reconciler releases the address by itself and counts it."""
    port = free_port()
    conf = cni_config("b19", subnet="10.62.0.0/24")
    first = daemons("A")
    (tmp_path / "pod").touch()
    assert run_cni("ADD", conf, socket=first.cni_socket, container_id="pod", netns=str(tmp_path / "pod")).rc == 0
    first.stop()
    (tmp_path / "pod").unlink()
    down = run_cni("DEL", conf, socket=first.cni_socket, container_id="pod")
    assert down.code == 11, down  # the runtime's DEL fails while the daemon is down
    again = daemons("A", extra_args=["--reconcile-interval", "1", "--reconcile-grace", "1", "--metrics-address",
                                     "127.0.0.1:%d" % port])
    deadline = time.monotonic() + 30
    while "pod" in handles(again):
        assert time.monotonic() < deadline, again.log()
        time.sleep(0.3)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        assert 'ipamd_reconcile_released_total{reason="netns"} 1.0' in resp.read().decode()
