"""The daemon as an operator sees it: readiness before the first etcd sync, SIGTERM with a request in flight, the shim
without a daemon, the gRPC API next to the CNI path, /metrics, and configuration precedence (docs/architecture.md, §4;
field case B22).

Real etcd, real ``ipamd`` processes, real shim processes; the ``daemons`` fixture checks the invariants after each
test that starts daemons through it, the others call :func:`harness.assert_invariants` themselves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from harness import Daemon, EtcdCluster, assert_invariants, cni_config, new_prefix, run_cni, snapshot_counts
from prometheus_client.parser import text_string_to_metric_families

from ipamd import config as config_mod
from ipamd.embedded import free_port
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc


def _wait_for_health(d: Daemon, timeout: float = 20.0) -> str:
    """The health status once the gRPC socket answers (whatever it is)."""
    deadline = time.monotonic() + timeout
    while True:
        assert d.proc is not None and d.proc.poll() is None, d.log()
        try:
            if os.path.exists(d.grpc_socket):
                return d.health()
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "gRPC socket of %s never answered:\n%s" % (d.node, d.log())
        time.sleep(0.05)


def _wait_for_log(d: Daemon, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.log():
        assert time.monotonic() < deadline, "%r never logged:\n%s" % (text, d.log())
        time.sleep(0.02)


# -- readiness ----------------------------------------------------------------------------------------------------


def test_not_ready_while_etcd_is_unreachable(etcd, workdir):
    """B22 / docs/architecture.md: a daemon whose etcd endpoint (http://127.0.0.1:1) is unreachable serves its sockets
    but is not ready: health NOT_SERVING, ADD and DEL through the shim answer code 11 (DEL too: the release could not be
    recorded), one JSON document each. SIGTERM still stops it cleanly (exit 0). Nothing reaches etcd."""
    prefix = new_prefix()
    d = Daemon("http://127.0.0.1:1", prefix, "A", workdir).start(wait_ready=False)
    try:
        assert _wait_for_health(d) == "NOT_SERVING"
        conf = cni_config("net1", subnet="10.90.0.0/24")
        add = run_cni("ADD", conf, socket=d.cni_socket)
        assert add.rc != 0 and add.code == 11, add
        assert "not ready" in add.json["msg"], add
        rm = run_cni("DEL", conf, socket=d.cni_socket)
        assert rm.rc != 0 and rm.code == 11, rm
        assert d.health() == "NOT_SERVING"
    finally:
        rc = d.stop()
    assert rc == 0, d.log()
    counts = assert_invariants(etcd.endpoints, prefix)
    assert counts == {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}


def test_becomes_ready_once_etcd_comes_up(workdir):
    """docs/architecture.md: not ready (NOT_SERVING, ADD -> 11) until the first sync with etcd is done; once etcd
    starts the daemon turns SERVING on its own and the same ADD succeeds with the pool's first address."""
    cluster = EtcdCluster(1)  # ports chosen, not started yet
    prefix = new_prefix()
    d = Daemon(cluster.endpoints, prefix, "A", workdir).start(wait_ready=False)
    try:
        assert _wait_for_health(d) == "NOT_SERVING"
        conf = cni_config("net1", subnet="10.91.0.0/24")
        out = run_cni("ADD", conf, socket=d.cni_socket)
        assert out.rc != 0 and out.code == 11, out
        cluster.start()
        d.wait_ready(30)
        assert d.health() == "SERVING"
        out = run_cni("ADD", conf, socket=d.cni_socket)
        assert out.rc == 0 and out.ips == ["10.91.0.2/24"], out
        assert d.stop() == 0, d.log()
        counts = assert_invariants(cluster.endpoints, prefix)
        assert (counts["ips"], counts["handles"]) == (1, 1)
    finally:
        d.stop()
        cluster.stop()


# -- SIGTERM ------------------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_add_in_flight(daemons):
    """docs/architecture.md / __main__: SIGTERM while an ADD is in flight (held 1 s by ``add.after_pick=pause:1``): the
    ADD completes successfully, the daemon exits 0 and removes both socket files; a later call on the socket answers
    code 11 naming it."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=pause:1"})
    conf = cni_config("net1", subnet="10.92.0.0/24")
    result = {}
    caller = threading.Thread(target=lambda: result.update(out=run_cni("ADD", conf, socket=d.cni_socket)))
    caller.start()
    _wait_for_log(d, "failpoint add.after_pick")

    d.proc.send_signal(signal.SIGTERM)
    caller.join(30)

    out = result["out"]
    assert out.rc == 0 and out.ips == ["10.92.0.2/24"], out
    assert d.proc.wait(20) == 0, d.log()
    assert not os.path.exists(d.cni_socket)
    assert not os.path.exists(d.grpc_socket)
    late = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2")
    assert late.rc != 0 and late.code == 11 and d.cni_socket in late.json["msg"], late
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (1, 1)


# -- the shim without a daemon ------------------------------------------------------------------------------------


def test_shim_without_daemon_answers_11_naming_the_socket(workdir):
    """B22 (b): no daemon behind the socket path -> code 11 whose msg names the socket, one JSON document on stdout,
    within a second. Both a path that does not exist and a stale socket file nobody listens on."""
    missing = os.path.join(workdir, "no-such-dir", "cni.sock")
    stale = os.path.join(workdir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # the file stays, nobody listens
    assert os.path.exists(stale)
    conf = cni_config("net1", subnet="10.93.0.0/24")
    for path in (missing, stale):
        for verb in ("ADD", "DEL", "CHECK"):
            started = time.monotonic()
            out = run_cni(verb, conf, socket=path)
            elapsed = time.monotonic() - started
            assert out.rc != 0 and out.code == 11, (path, verb, out)
            assert path in out.json["msg"], out
            assert out.json["cniVersion"] == "1.1.0"
            assert elapsed < 1.0, "%s on %s took %.2f s" % (verb, path, elapsed)


# -- gRPC API -----------------------------------------------------------------------------------------------------


def _att(cid: str, network: str = "net1", ifname: str = "eth0") -> ipam_pb2.Attachment:
    return ipam_pb2.Attachment(network=network, container_id=cid, if_name=ifname)


def _rpc_error(call, *args, **kwargs) -> tuple[grpc.StatusCode, str | None, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    err = info.value
    meta = dict(err.trailing_metadata() or ())
    return err.code(), meta.get("ipamd-cni-code"), err.details()


def test_grpc_api_shares_allocations_with_the_cni_path(daemons):
    """docs/architecture.md "gRPC API": Allocate/Release/GetAllocation/ListAllocations over the unix socket call the
    same service layer as the CNI path. An allocation made through gRPC is seen by CNI CHECK (and returned unchanged by
    CNI ADD) and released by CNI DEL; one made by CNI ADD is seen by GetAllocation/ListAllocations and released by
    Release. Release is idempotent."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.94.0.0/24", blockSize=28)
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        stub = ipam_pb2_grpc.IpamStub(ch)
        # gRPC -> CNI
        resp = stub.Allocate(ipam_pb2.AllocateRequest(
            attachment=_att("g1"), network_config_json=json.dumps(conf), netns="/var/run/netns/g1",
            pod={"namespace": "default", "name": "web-0", "uid": "u-1"}), timeout=10)
        alloc = resp.allocation
        assert [(a.address, a.gateway) for a in alloc.addresses] == [("10.94.0.2/24", "10.94.0.1")]
        assert (alloc.attachment.network, alloc.attachment.container_id, alloc.attachment.if_name) == (
            "net1", "g1", "eth0")
        assert alloc.node == "A"
        cni_result = json.loads(resp.cni_result_json)
        assert cni_result == {"cniVersion": "1.1.0", "ips": [{"address": "10.94.0.2/24", "gateway": "10.94.0.1"}]}
        again = stub.Allocate(ipam_pb2.AllocateRequest(attachment=_att("g1"), network_config_json=json.dumps(conf)),
                              timeout=10)
        assert [a.address for a in again.allocation.addresses] == ["10.94.0.2/24"]

        got = stub.GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("g1")), timeout=10)
        assert got.found
        assert [a.address for a in got.allocation.addresses] == ["10.94.0.2/24"]
        assert dict(got.allocation.pod) == {"namespace": "default", "name": "web-0", "uid": "u-1"}
        assert got.allocation.netns == "/var/run/netns/g1"

        check = run_cni("CHECK", {**conf, "prevResult": cni_result}, socket=d.cni_socket, container_id="g1")
        assert (check.rc, check.stdout) == (0, ""), check
        readd = run_cni("ADD", conf, socket=d.cni_socket, container_id="g1")
        assert readd.rc == 0 and readd.ips == ["10.94.0.2/24"], readd
        rm = run_cni("DEL", conf, socket=d.cni_socket, container_id="g1")
        assert (rm.rc, rm.stdout) == (0, ""), rm
        assert not stub.GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("g1")), timeout=10).found

        # CNI -> gRPC
        add = run_cni("ADD", conf, socket=d.cni_socket, container_id="c1",
                      args="K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;K8S_POD_UID=uid1")
        assert add.rc == 0 and add.ips == ["10.94.0.2/24"], add
        second = stub.Allocate(ipam_pb2.AllocateRequest(attachment=_att("g2"), network_config_json=json.dumps(conf)),
                               timeout=10)
        assert [a.address for a in second.allocation.addresses] == ["10.94.0.3/24"]
        got = stub.GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("c1")), timeout=10)
        assert got.found and [a.address for a in got.allocation.addresses] == ["10.94.0.2/24"]
        assert dict(got.allocation.pod) == {"namespace": "ns1", "name": "pod1", "uid": "uid1"}
        listed = stub.ListAllocations(ipam_pb2.ListAllocationsRequest(network="net1"), timeout=10)
        assert sorted((a.attachment.container_id, a.addresses[0].address) for a in listed.allocations) == [
            ("c1", "10.94.0.2/24"), ("g2", "10.94.0.3/24")]
        other = cni_config("net2", subnet="10.95.0.0/24")
        assert run_cni("ADD", other, socket=d.cni_socket, container_id="c1").ips == ["10.95.0.2/24"]
        everything = stub.ListAllocations(ipam_pb2.ListAllocationsRequest(network=""), timeout=10)
        assert sorted((a.attachment.network, a.attachment.container_id) for a in everything.allocations) == [
            ("net1", "c1"), ("net1", "g2"), ("net2", "c1")]
        only_net2 = stub.ListAllocations(ipam_pb2.ListAllocationsRequest(network="net2"), timeout=10)
        assert [a.attachment.container_id for a in only_net2.allocations] == ["c1"]

        released = stub.Release(ipam_pb2.ReleaseRequest(attachment=_att("c1")), timeout=10)
        assert released.released == 1
        assert stub.Release(ipam_pb2.ReleaseRequest(attachment=_att("c1")), timeout=10).released == 0
        check = run_cni("CHECK", {**conf, "prevResult": add.json}, socket=d.cni_socket, container_id="c1")
        assert check.rc != 0 and check.code == 102, check
        assert not stub.GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("c1")), timeout=10).found
        # net2's c1 is another attachment and keeps its address
        assert stub.GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("c1", "net2")), timeout=10).found
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (2, 2)


def test_grpc_errors_carry_the_cni_code(daemons):
    """docs/cni-contract.md "One table maps each exception to its CNI code and gRPC status": gRPC errors carry the CNI
    code in the trailing metadata ``ipamd-cni-code`` - 7 INVALID_ARGUMENT (bad config, name mismatch), 4
    INVALID_ARGUMENT (bad container id), 100 RESOURCE_EXHAUSTED (pool full), 101 ALREADY_EXISTS (requested address
    taken). Failed calls write nothing."""
    d = daemons("A")
    tiny = cni_config("tiny", subnet="10.96.0.0/30")  # usable: .2 only (.1 gateway, .3 broadcast)
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        stub = ipam_pb2_grpc.IpamStub(ch)

        def allocate(att, conf, requested=()):
            return stub.Allocate(ipam_pb2.AllocateRequest(attachment=att, network_config_json=json.dumps(conf),
                                                          requested_addresses=list(requested)), timeout=10)

        code, cni, details = _rpc_error(allocate, _att("x1", "tiny"), cni_config("other", subnet="10.96.0.0/30"))
        assert (code, cni) == (grpc.StatusCode.INVALID_ARGUMENT, "7"), details
        code, cni, details = _rpc_error(allocate, _att("x1", "tiny"), cni_config("tiny", subnet="10.96.0.0/31"))
        assert (code, cni) == (grpc.StatusCode.INVALID_ARGUMENT, "7"), details
        code, cni, details = _rpc_error(allocate, _att("../x", "tiny"), tiny)
        assert (code, cni) == (grpc.StatusCode.INVALID_ARGUMENT, "4"), details

        first = allocate(_att("x1", "tiny"), tiny)
        assert [a.address for a in first.allocation.addresses] == ["10.96.0.2/30"]
        code, cni, details = _rpc_error(allocate, _att("x2", "tiny"), tiny)
        assert (code, cni) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "100"), details
        assert "10.96.0.0/30" in details

        net = cni_config("net1", subnet="10.97.0.0/24")
        assert [a.address for a in allocate(_att("r1"), net, ["10.97.0.9"]).allocation.addresses] == ["10.97.0.9/24"]
        code, cni, details = _rpc_error(allocate, _att("r2"), net, ["10.97.0.9"])
        assert (code, cni) == (grpc.StatusCode.ALREADY_EXISTS, "101"), details
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (2, 2)


def test_grpc_unexpected_error_is_internal_999_and_counted(daemons):
    """Issue 6 "every boundary translates every error": an unexpected exception in a handler (a bug, here the
    ``add.after_pick=error`` failpoint raising a plain RuntimeError) answers INTERNAL with CNI code 999 in the
    trailing metadata, never UNAVAILABLE ("try again"); it is counted like every request, logged with its
    traceback, and nothing is written."""
    port = free_port()
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=error"},
                extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        stub = ipam_pb2_grpc.IpamStub(ch)
        code, cni, details = _rpc_error(stub.Allocate, ipam_pb2.AllocateRequest(
            attachment=_att("bug1"), network_config_json=json.dumps(cni_config("net1", subnet="10.95.0.0/24"))),
            timeout=10)
    assert (code, cni) == (grpc.StatusCode.INTERNAL, "999"), details
    assert "RuntimeError" in details
    assert _scrape(port)[("ipamd_requests_total", (("code", "999"), ("outcome", "error"),
                                                  ("verb", "grpc.Allocate")))] == 1
    assert "gRPC Allocate: unexpected error" in d.log() and "Traceback" in d.log()
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (0, 0)


def test_one_log_line_per_cni_request_with_its_context(daemons):
    """Issue 6 item 5 / docs/configuration.md "Log lines": each CNI request logs one INFO line carrying container,
    ifname, network, addresses, duration and code, for a success and for a failure alike."""
    d = daemons("A")
    conf = cni_config("lognet", subnet="10.93.0.0/24")
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="logc1", if_name="net7").rc == 0
    bad = run_cni("ADD", conf, socket=d.cni_socket, container_id="logc2", args="IP=10.93.0.2")
    assert bad.code == 101, bad
    assert run_cni("DEL", conf, socket=d.cni_socket, container_id="logc1", if_name="net7").rc == 0
    deadline = time.monotonic() + 5
    while "container=logc1 ifname=net7 network=lognet code=0" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in d.log().splitlines() if "ipamd.cniserver: CNI" in line]
    ok = [line for line in lines if "container=logc1" in line and "CNI ADD ok" in line]
    assert len(ok) == 1, lines
    assert re.search(r"container=logc1 ifname=net7 network=lognet addresses=10\.93\.0\.2/24 duration_ms=[0-9.]+ "
                     r"code=0$", ok[0]), ok[0]
    failed = [line for line in lines if "container=logc2" in line]
    assert len(failed) == 1 and "CNI ADD failed" in failed[0] and failed[0].endswith("code=101"), failed
    dele = [line for line in lines if "container=logc1" in line and "CNI DEL ok" in line]
    assert len(dele) == 1 and re.search(r"network=lognet duration_ms=[0-9.]+ code=0$", dele[0]), dele


# -- /metrics -----------------------------------------------------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_endpoint_counts_adds(daemons):
    """docs/architecture.md "exports metrics": with ``--metrics-address`` the daemon serves Prometheus text on
    /metrics; an
    ADD that succeeds and one that fails (code 7) are counted by verb and outcome, the ADD latency histogram counts
    both, and the readiness gauge reads 1."""
    port = free_port()
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config("net1", subnet="10.98.0.0/24")
    assert run_cni("ADD", conf, socket=d.cni_socket).ips == ["10.98.0.2/24"]
    bad = run_cni("ADD", cni_config("net1", subnet="10.98.0.0/24", blockSize="28"), socket=d.cni_socket,
                  container_id="c2")
    assert bad.rc != 0 and bad.code == 7, bad

    m = _scrape(port)

    assert m[("ipamd_requests_total", (("code", "0"), ("outcome", "ok"), ("verb", "ADD")))] >= 1
    assert m[("ipamd_requests_total", (("code", "7"), ("outcome", "error"), ("verb", "ADD")))] >= 1
    assert m[("ipamd_add_duration_seconds_count", ())] >= 2
    assert m[("ipamd_ready", ())] == 1
    # every round trip is in the batch histogram, a transaction sent alone as a batch of one
    assert m[("ipamd_etcd_txn_batch_parts_count", ())] == m[("ipamd_etcd_txn_round_trips_total", ())] >= 1



def test_metrics_port_0_logs_the_port_it_got(daemons):
    """``--metrics-address 127.0.0.1:0`` picks a free port; the start-up line names it, and it serves /metrics."""
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:0"])
    found = re.search(r"metrics on 127\.0\.0\.1:0 \(port (\d+)\)", Path(d.log_path).read_text())
    assert found, d.log()
    port = int(found.group(1))
    assert port > 0 and _scrape(port)[("ipamd_ready", ())] == 1

# -- configuration ------------------------------------------------------------------------------------------------


def test_config_defaults():
    """docs/configuration.md: with no file, environment or flags the defaults apply; node name defaults to the
    hostname."""
    cfg = config_mod.load([], environ={})
    assert cfg.node_name == socket.gethostname()
    assert (cfg.etcd_endpoints, cfg.etcd_prefix) == ("http://127.0.0.1:2379", "/ipamd/v1/")
    assert (cfg.cni_socket, cfg.grpc_socket, cfg.metrics_address) == ("/run/ipamd/cni.sock",
                                                                      "/run/ipamd/ipamd.sock", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node_name = "x"  # type: ignore[misc]


def test_config_precedence_file_env_flags(tmp_path):
    """docs/configuration.md: a TOML file (``--config``) is overridden by ``IPAMD_*`` environment variables, which are
    overridden by flags, key by key; values are coerced (numbers, endpoint lists) and the prefix gets its slash."""
    path = tmp_path / "ipamd.toml"
    path.write_text('node_name = "file-node"\n'
                    'etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]\n'
                    'etcd_prefix = "/from-file"\n'
                    'request_timeout = 3.5\n'
                    'node_lease_ttl = 12\n'
                    'log_level = "WARNING"\n'
                    'metrics_address = "127.0.0.1:9101"\n')
    file_only = config_mod.load(["--config", str(path)], environ={})
    assert (file_only.node_name, file_only.etcd_endpoints, file_only.etcd_prefix) == (
        "file-node", "http://10.0.0.1:2379,http://10.0.0.2:2379", "/from-file/")
    assert (file_only.request_timeout, file_only.node_lease_ttl, file_only.log_level) == (3.5, 12, "WARNING")

    env = {"IPAMD_NODE_NAME": "env-node", "IPAMD_REQUEST_TIMEOUT": "4.5", "IPAMD_METRICS_ADDRESS": "127.0.0.1:9102"}
    with_env = config_mod.load(["--config", str(path)], environ=env)
    assert (with_env.node_name, with_env.request_timeout, with_env.metrics_address) == (
        "env-node", 4.5, "127.0.0.1:9102")
    assert (with_env.etcd_prefix, with_env.node_lease_ttl) == ("/from-file/", 12)

    flags = ["--config", str(path), "--node-name", "flag-node", "--etcd-prefix", "/from-flag/"]
    with_flags = config_mod.load(flags, environ=env)
    assert (with_flags.node_name, with_flags.etcd_prefix) == ("flag-node", "/from-flag/")
    assert (with_flags.request_timeout, with_flags.metrics_address, with_flags.log_level) == (
        4.5, "127.0.0.1:9102", "WARNING")


@pytest.mark.parametrize("argv, env, toml, names", [
    (["--etcd-endpoints", "foo"], {}, None, ["--etcd-endpoints", "foo"]),
    (["--etcd-endpoints", "ftp://127.0.0.1:1"], {}, None, ["--etcd-endpoints", "http or https"]),
    (["--log-level", "LOUD"], {}, None, ["--log-level", "LOUD"]),
    (["--request-timeout", "-1"], {}, None, ["--request-timeout"]),
    (["--etcd-timeout", "0"], {}, None, ["--etcd-timeout"]),
    (["--node-lease-ttl", "0"], {}, None, ["--node-lease-ttl"]),
    (["--metrics-address", "not-an-address"], {}, None, ["--metrics-address", "not-an-address"]),
    ([], {"IPAMD_REQUEST_TIMEOUT": "soon"}, None, ["IPAMD_REQUEST_TIMEOUT"]),
    ([], {"IPAMD_LOG_LEVEL": "LOUD"}, None, ["--log-level", "IPAMD_LOG_LEVEL"]),
    ([], {}, 'node_nmae = "typo"\n', ["node_nmae"]),
    ([], {}, "request_timeout = -1\n", ["--request-timeout", "bad.toml"]),
    ([], {}, "node_name = \n", ["cannot read config"]),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, argv, env, toml, names):
    """Field case B54: the real daemon process, given one bad setting by flag, TOML or environment, prints one line
    naming it and exits with status 2, before touching etcd or any socket (no traceback)."""
    args = list(argv)
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        args += ["--config", str(path)]
    sock_dir = tmp_path / "run"
    args += ["--cni-socket", str(sock_dir / "cni.sock"), "--grpc-socket", str(sock_dir / "g.sock"),
             "--node-name", "b54"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "ipamd", *args], capture_output=True, text=True, timeout=30,
                          env=full_env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for name in names:
        assert name in lines[0], lines[0]
    assert not sock_dir.exists()


@pytest.mark.parametrize("how", ["flag", "env", "toml"])
def test_b54_credentials_in_an_etcd_endpoint_are_refused_without_echoing_them(tmp_path, how):
    """Field case B54, another field: ``http://user:password@host:port`` was accepted, the credentials were never
    used, and the startup line logged the password. Now one line naming the setting and the flags to use, exit 2,
    and the password appears nowhere in the output."""
    url = "http://ipamd:pw-s3cret@127.0.0.1:2379"
    sock_dir = tmp_path / "run"
    args = ["--cni-socket", str(sock_dir / "cni.sock"), "--grpc-socket", str(sock_dir / "g.sock"),
            "--node-name", "b54"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")}
    if how == "flag":
        args += ["--etcd-endpoints", url]
    elif how == "env":
        env["IPAMD_ETCD_ENDPOINTS"] = url
    else:
        (tmp_path / "ipamd.toml").write_text('etcd_endpoints = "%s"\n' % url)
        args += ["--config", str(tmp_path / "ipamd.toml")]
    proc = subprocess.run([sys.executable, "-m", "ipamd", *args], capture_output=True, text=True, timeout=30,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--etcd-endpoints" in lines[0] and "--etcd-user" in lines[0], proc.stderr
    assert "pw-s3cret" not in proc.stderr + proc.stdout
    assert not sock_dir.exists()


def test_daemon_reads_config_file_env_and_flags(daemons, workdir):
    """docs/configuration.md end to end: the daemon takes its metrics address from the environment over the TOML file,
    and its node name from the flag over both (the allocation records node A)."""
    file_port, env_port = free_port(), free_port()
    path = os.path.join(workdir, "ipamd.toml")
    with open(path, "w") as fh:
        fh.write('node_name = "file-node"\nmetrics_address = "127.0.0.1:%d"\nrequest_timeout = 5\n' % file_port)
    d = daemons("A", env={"IPAMD_NODE_NAME": "env-node", "IPAMD_METRICS_ADDRESS": "127.0.0.1:%d" % env_port},
                extra_args=["--config", path])
    out = run_cni("ADD", cni_config("net1", subnet="10.99.0.0/24"), socket=d.cni_socket)
    assert out.rc == 0 and out.ips == ["10.99.0.2/24"], out
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        got = ipam_pb2_grpc.IpamStub(ch).GetAllocation(ipam_pb2.GetAllocationRequest(attachment=_att("c1")),
                                                       timeout=10)
    assert got.found and got.allocation.node == "A"
    assert _scrape(env_port)[("ipamd_requests_total", (("code", "0"), ("outcome", "ok"), ("verb", "ADD")))] >= 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % file_port, timeout=2)
