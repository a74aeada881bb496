"""Field cases B06 and B07 (docs/field-cases.md "Crash, restart, idempotency"): the daemon dies after its ADD
transaction committed and before it replied; the retried ADD must return the address that was committed, never a
second one (B06). The plugin is killed mid-ADD (the runtime's timeout): the address is not leaked (B07).

Real etcd, real ipamd processes (the first one with the failpoint ``add.after_commit=crash``, which makes it
``os._exit`` right after the commit), real ipamd-cni shim processes. The ``daemons`` fixture checks the invariants
after the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from harness import cni_config, cni_env, handle_ids, installed_shim, run_cni, snapshot_counts


def test_b06_crash_after_commit_then_retried_adds_return_the_committed_address(daemons):
    """B06: ``ADD c1 eth0`` on a daemon that crashes after commit -> the shim sees the connection drop -> code 11.
    Restart ipamd A (same node name, no failpoint): ``ADD c1 eth0`` twice -> 10.42.0.2/29 both times;
    ``ADD c1 net1`` -> .3; c2, c3, c4 -> .4, .5, .6 (pool full); ``ADD c1 eth0`` once more -> .2 (not 100);
    ``ADD c5 eth0`` -> code 100. etcd: one handle per attachment, 5 address records.

    The subnet is a /29, so the base config's ``blockSize`` 28 would be shorter than the pool prefix (code 7 by
    decision 4); the pool's default block size is used instead."""
    conf = cni_config("net1", subnet="10.42.0.0/29")
    crashing = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_commit=crash"})

    def add(d, cid, ifname="eth0"):
        return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, if_name=ifname,
                       netns="/var/run/netns/" + cid)

    out = add(crashing, "c1")
    assert out.rc != 0 and out.code == 11, out
    assert crashing.cni_socket in out.json["msg"]
    assert crashing.proc.wait(10) == 137  # the failpoint's os._exit: no cleanup, no reply

    a = daemons("A")
    first, again = add(a, "c1"), add(a, "c1")
    assert first.rc == 0 and first.ips == ["10.42.0.2/29"], first
    assert again.rc == 0 and again.ips == ["10.42.0.2/29"], again

    out = add(a, "c1", "net1")
    assert out.rc == 0 and out.ips == ["10.42.0.3/29"], out
    for cid, want in (("c2", "10.42.0.4/29"), ("c3", "10.42.0.5/29"), ("c4", "10.42.0.6/29")):
        out = add(a, cid)
        assert out.rc == 0 and out.ips == [want], (cid, out)

    out = add(a, "c1")  # pool full, but the attachment already holds .2: idempotent, not 100
    assert out.rc == 0 and out.ips == ["10.42.0.2/29"], out

    out = add(a, "c5")
    assert out.rc != 0 and out.code == 100, out

    counts = snapshot_counts(a.endpoints, a.prefix)
    assert (counts["ips"], counts["handles"]) == (5, 5)


@pytest.mark.parametrize("then", ["retried-add", "del"])
def test_b07_plugin_killed_mid_add_leaks_nothing(daemons, then, tmp_path):
    """B07: the daemon pauses the ADD between its pick and its commit (failpoint ``add.after_pick``); the runtime
    SIGKILLs the plugin meanwhile (its timeout). The daemon still finishes the ADD: the handle and its address are
    written together, keyed by the attachment. Then either the runtime's retried ADD returns that same address and
    its DEL releases it, or the runtime's DEL (sent at once, while the ADD is still paused) waits for the ADD and
    releases it. Either way nothing is left in etcd and the invariants hold."""
    conf = cni_config("net1", subnet="10.43.0.0/24")
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=pause:2:1"})
    with open(tmp_path / "conf.json", "w+b") as stdin:
        stdin.write(json.dumps(conf).encode())
        stdin.seek(0)
        plugin = subprocess.Popen([installed_shim()], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=cni_env("ADD", socket=d.cni_socket, container_id="k1"))
    time.sleep(0.7)  # the request is in the daemon, paused after its pick
    assert plugin.poll() is None, "the plugin answered before the pause: %r" % (plugin.communicate(),)
    plugin.send_signal(signal.SIGKILL)
    plugin.communicate(timeout=10)  # reaps it and closes its pipes
    assert plugin.returncode == -signal.SIGKILL
    if then == "retried-add":
        deadline = time.monotonic() + 10
        while "k1" not in handle_ids(d) and time.monotonic() < deadline:  # the daemon commits without its client
            time.sleep(0.1)
        assert "k1" in handle_ids(d)
        first = run_cni("ADD", conf, socket=d.cni_socket, container_id="k1")
        again = run_cni("ADD", conf, socket=d.cni_socket, container_id="k1")
        assert first.rc == 0 and first.ips == ["10.43.0.2/24"] == again.ips, (first, again)
        counts = snapshot_counts(d.endpoints, d.prefix)
        assert (counts["ips"], counts["handles"]) == (1, 1), counts
    out = run_cni("DEL", conf, socket=d.cni_socket, container_id="k1")
    assert (out.rc, out.stdout) == (0, ""), out
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (0, 0), counts
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="k2").ips == ["10.43.0.2/24"]  # free again
